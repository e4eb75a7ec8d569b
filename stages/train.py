"""Stage `train`: fit one run, a variant (fusion | image | text | shuffled) with one seed on one
text input; or several variants' runs of that seed and input, one after the other in one process.

    python -m stages.train fusion 0 findings+impression
    python -m stages.train image 0
    python -m stages.train fusion,shuffled 0 indication   # fusion, then its placebo
    python -m stages.train fusion_frozen all indication   # every seed of train.seeds in turn

Reads only data/prepared/*.csv and the caches of features/ the variant reads. Logs train/val
metrics every epoch with DVCLive (metrics/train/<run>/), keeps the epoch chosen on validation
data (train.select), and writes models/<run>/ (e.g. models/fusion/findings+impression/seed-0):
model.safetensors, model.json, history.json and params.json, the run's resolved parameters.
The loop and its steps are cxrfusion/training.py's `train`; this stage reads the parameters,
the run its arguments name and its arm's tuning choice (stage `tune`), and calls it.
"""
from __future__ import annotations

import sys

from cxrfusion import formats, params, tuning
from cxrfusion.common import main
from cxrfusion.formats import Run
from cxrfusion.params import Params
from cxrfusion.training import train


def train_stage(argv: list[str]) -> list[dict]:
    """Train the runs `argv` names (`<variant>[,<variant>...] <seed>|all [<text input>]`)
    with params.yaml. Several variants share one process: its imports (torch, timm) take longer
    than a demo run's training, and each run seeds everything itself, so a run trained after
    another is the run trained alone (tests/test_placebo.py)."""
    p = params.load()
    runs = formats.network_runs(argv, p)
    return [train_tuned(run, p) for run in runs]


def train_tuned(run: Run, p: Params) -> dict | None:
    """`run` with its arm's chosen setting (metrics/tuning/<arm>/choice.json, stage tune): the
    chosen candidate's run at the seed the candidates trained at, else trained."""
    tuned, choice = tuning.chosen(run, p)
    return None if tuning.reuse(run, tuned, choice) else train(run, tuned)


if __name__ == "__main__":
    main(lambda: train_stage(sys.argv[1:]))
