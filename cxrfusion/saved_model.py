"""What a trained model's folder (models/<run>/) records, read back: the settings it was trained
with (params.json), how its images were made square (model.json) and the threshold `evaluate`
chose for it on validation studies (metrics/test/<run>.json). evaluate, explain and the
prediction CLI read a model through here, under one rule: a model saved before the pipeline
recorded a setting that reading it needs is refused, with the command that retrains it.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from cxrfusion.common import PipelineError
from cxrfusion.formats import MODELS, TEST_METRICS
from cxrfusion.params import FITS, Params, built

# how this machine scores, not what the model learned: taken from params.yaml, not the model
SCORING = ("device", "amp", "batch_size", "in_memory_gb", "workers")
# what reading a model's inputs needs and early models did not record (params.json)
RECORDED = (("image", "fit"), ("text", "lowercase"))
RETRAIN = "the model was trained before the pipeline recorded it; retrain it with `dvc repro`."


def saved_settings(folder) -> dict:
    """What a saved model records of its training (models/<run>/params.json: the parameters,
    and its run), checked."""
    path = Path(folder) / "params.json"
    if not path.exists():
        raise PipelineError(f"{path} not found: {folder} was not written by `stages.train`; "
                            "retrain it with `dvc repro`.")
    trained = json.loads(path.read_text())
    missing = [f"{s}.{k}" for s, k in RECORDED if k not in trained.get(s, {})]
    if missing:
        raise PipelineError(f"{path} has no {', '.join(missing)}: {RETRAIN}")
    return trained


def trained_settings(folder, p: Params) -> Params:
    """The settings a saved model was trained with (its caches' text and image settings), with
    this run's `train.{device, amp, batch_size, in_memory_gb, workers}`. `evaluate` and
    `explain` read the caches as the model was trained on them, so they depend on the model,
    not on params.yaml's image.* and text.*."""
    trained = built(saved_settings(folder))
    trained.train = replace(trained.train, **{k: getattr(p.train, k) for k in SCORING})
    return trained


def image_fit(config: dict, folder) -> str:
    """How the model's training images were made square (model.json's `image_fit`)."""
    source = Path(folder) / "model.json"
    fit = config.get("image_fit")
    if fit is None:
        raise PipelineError(f"{source} has no image_fit: {RETRAIN}")
    if fit not in FITS:
        raise PipelineError(f"{source}: image_fit={fit!r} is not one of {', '.join(FITS)}; "
                            "retrain the model with `dvc repro`.")
    return fit


def evaluation_of(model_folder) -> Path | None:
    """metrics/test/<path>.json of a model folder models/<path> (what `evaluate` wrote for it,
    including its threshold), else None (a model copied elsewhere)."""
    try:
        relative = Path(model_folder).resolve().relative_to(MODELS.resolve())
    except ValueError:
        return None
    return TEST_METRICS / f"{relative.as_posix()}.json"


def evaluation_threshold(folder, trained: Params,
                         override: float | None = None) -> tuple[float, str]:
    """--threshold; else the one `evaluate` chose on validation for this model
    (metrics/test/<run>.json); else the model's evaluate.threshold when that is a probability,
    not a rule."""
    if override is not None:
        if not 0 < override < 1:
            raise PipelineError(f"--threshold {override} is not allowed: use a probability "
                                "strictly between 0 and 1.")
        return float(override), "--threshold"
    test_json = evaluation_of(folder)
    if test_json is not None and test_json.exists():
        return float(json.loads(test_json.read_text())["threshold"]), str(test_json)
    rule = trained.evaluate.threshold
    if isinstance(rule, str):
        raise PipelineError(f"{folder} has no evaluation ({test_json or 'it is not under models/'}"
                            f"): its threshold is chosen by evaluate.threshold={rule} on "
                            "validation studies; run `dvc repro` (evaluate) or give --threshold.")
    return float(rule), "params evaluate.threshold"
