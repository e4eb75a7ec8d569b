"""Stage `train`: fit one run, a variant (fusion | image | text) with one seed on one text input.

    python -m stages.train fusion 0 findings+impression
    python -m stages.train image 0

Reads only data/prepared/*.csv and the caches of features/ the variant reads. Logs train/val
metrics every epoch with DVCLive (metrics/train/<run>/), keeps the epoch chosen on validation
data (train.select), and writes models/<run>/ (e.g. models/fusion/findings+impression/seed-0):
model.safetensors, model.json, history.json and params.json, the run's resolved parameters.
The loop and its steps are cxrfusion/training.py's `train`; this stage reads the parameters
and the run its arguments name, and calls it.
"""
from __future__ import annotations

import sys

from cxrfusion import formats, params
from cxrfusion.common import main
from cxrfusion.training import train


def train_stage(argv: list[str]) -> dict:
    """Train the run `argv` names (`<variant> <seed> [<text input>]`) with params.yaml."""
    p = params.load()
    run = formats.run_of(argv, p)
    return train(run, p)


if __name__ == "__main__":
    main(lambda: train_stage(sys.argv[1:]))
