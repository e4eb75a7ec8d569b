"""Stage `train_tfidf`: the classical baseline for one text input, TF-IDF over the training
studies' reports and a logistic regression (cxrfusion/tfidf.py), each candidate of its
tune.candidates entry first, chosen on the validation images.

    python -m stages.train_tfidf indication

Deterministic, so trained once, not once per seed: its one run stands for every seed. Writes
models/tfidf/<input>/ (tfidf.json: vocabulary, IDF weights, coefficients; params.json, the
resolved parameters) and metrics/tuning/tfidf/<input>/choice.json.
"""
from __future__ import annotations

import sys

from cxrfusion import formats, params, tfidf
from cxrfusion.common import PipelineError, main


def train_stage(argv: list[str]) -> dict:
    p = params.load()
    if len(argv) != 1:
        raise PipelineError(f"arguments: <text input>, one of text.inputs={p.text.inputs}; "
                            f"got {argv}")
    return tfidf.train(formats.run_of(["tfidf", argv[0]], p), p)


if __name__ == "__main__":
    main(lambda: train_stage(sys.argv[1:]))
