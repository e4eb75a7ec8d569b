"""Stage `tune`: an equal tuning budget, chosen on validation. Each candidate setting of
tune.candidates trained for one arm at the first seed, and the one its validation images rank
best (tune.criterion) written to metrics/tuning/<arm>/choice.json, which the arm's train stages
read (cxrfusion/tuning.py).

    python -m stages.tune image 0
    python -m stages.tune fusion,shuffled 0 indication   # fusion's candidates, then its placebo's
    python -m stages.tune text 0 indication

With no grid (tune.candidates: [], the demo) it writes each arm's empty choice and trains nothing.
"""
from __future__ import annotations

import sys

from cxrfusion import formats, params
from cxrfusion.common import main
from cxrfusion.tuning import tune


def tune_stage(argv: list[str]) -> list[dict]:
    """Tune the arms `argv` names (`<variant>[,<variant>...] <seed> [<text input>]`, the seed
    the first of train.seeds) with params.yaml."""
    p = params.load()
    return [tune(run, p) for run in formats.network_runs(argv, p)]


if __name__ == "__main__":
    main(lambda: tune_stage(sys.argv[1:]))
