"""The rule that picks one of an arm's tune.candidates on the validation studies, and the
record of what it picked (metrics/tuning/<arm>/choice.json), for the networks (stages
`tune_<arm>`, cxrfusion/tuning.py) and the TF-IDF baseline (stage `train_tfidf`) alike.
"""
from __future__ import annotations

import math

from cxrfusion.common import PipelineError

NO_GRID = {"seed": None, "criterion": None, "candidates": [], "chosen": None, "setting": {}}


def choose(rows: list[dict], criterion: str) -> int:
    """The candidate with the highest validation AUROC, or the lowest validation loss; of
    equals, the first listed."""
    if criterion == "auroc":
        return max(range(len(rows)), key=lambda k: (rows[k]["val_auroc"], -k))
    return min(range(len(rows)), key=lambda k: (rows[k]["val_loss"], k))


def scored(row: dict, criterion: str, arm: str) -> dict:
    """`row`, one candidate's validation scores (candidate, val_auroc, val_loss), once the one
    `criterion` ranks is a number: validation images of one label give no AUROC, and the
    candidate could not be ranked (checked as each candidate is scored, before the next)."""
    value = row[f"val_{criterion}"]
    if not math.isfinite(value):
        raise PipelineError(f"tune.criterion={criterion}: candidate {row['candidate']} of {arm} "
                            f"has no validation {criterion} ({value}): the validation images "
                            "hold one label only; use tune.criterion: loss, or more validation "
                            "studies (split.val).")
    return row


def choice(arm: str, seed: int | None, criterion: str, rows: list[dict]) -> dict:
    """What choice.json records: each candidate's row (candidate, setting, epoch kept,
    val_auroc, val_loss), the one chosen and its setting; no grid (no rows): NO_GRID."""
    if not rows:
        return {"arm": arm, **NO_GRID}
    chosen = choose(rows, criterion)
    return {"arm": arm, "seed": seed, "criterion": criterion, "candidates": rows,
            "chosen": chosen, "setting": rows[chosen]["setting"]}
