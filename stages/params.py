"""Read params.yaml and refuse bad values before any work starts.

Every stage calls `load()`; a bad value stops it with the parameter's name and what is allowed.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from stages.common import PipelineError

SOURCES = ("demo", "kaggle", "openi", "local")
POOLINGS = ("cls", "mean")
VARIANTS = ("fusion", "image", "text")
SELECTIONS = ("best_val_loss", "last")
TEXT_FIELDS = ("indication", "comparison", "findings", "impression")
MIN_IMAGE_SIZE = 32  # EfficientNet downsamples by 32: smaller inputs leave no feature map


def _fail(name: str, value, allowed: str):
    raise PipelineError(f"parameter {name}={value!r} is not allowed: {allowed} "
                        f"(set it in params.yaml or with `dvc exp run -S {name}=...`).")


def _choice(p, name, options):
    if get(p, name) not in options:
        _fail(name, get(p, name), "use one of " + ", ".join(options))


def _fraction(p, name):
    v = get(p, name)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
        _fail(name, v, "use a fraction strictly between 0 and 1")


def _positive(p, name, kind=int):
    v = get(p, name)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 or (kind is int and v != int(v)):
        _fail(name, v, f"use a positive {'integer' if kind is int else 'number'}")


def get(params: dict, dotted: str):
    value = params
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise PipelineError(f"parameter {dotted} is missing from params.yaml.")
        value = value[key]
    return value


def validate(p: dict) -> dict:
    _choice(p, "data.source", SOURCES)
    if get(p, "data.source") == "local" and not get(p, "data.local_dir"):
        _fail("data.local_dir", get(p, "data.local_dir"),
              "with data.source=local, name the folder that holds the Kaggle layout")
    for name in ("demo.studies", "demo.image_size"):
        _positive(p, name)
    if not 0 <= get(p, "demo.label_noise") < 0.5:
        _fail("demo.label_noise", get(p, "demo.label_noise"), "use a fraction in [0, 0.5)")
    _fraction(p, "split.test")
    _fraction(p, "split.val")
    fields = get(p, "text.fields")
    if not isinstance(fields, list) or not fields or any(f not in TEXT_FIELDS for f in fields):
        _fail("text.fields", fields, "use a non-empty list of " + ", ".join(TEXT_FIELDS))
    _choice(p, "text.pooling", POOLINGS)
    for name in ("text.max_length", "text.batch_size", "train.epochs", "train.batch_size",
                 "model.hidden", "evaluate.bootstrap"):
        _positive(p, name)
    _positive(p, "train.lr", float)
    if get(p, "image.size") < MIN_IMAGE_SIZE:
        _fail("image.size", get(p, "image.size"),
              f"the backbone needs at least {MIN_IMAGE_SIZE} px (240 for the real study)")
    if not 0 <= get(p, "model.dropout") < 1:
        _fail("model.dropout", get(p, "model.dropout"), "use a fraction in [0, 1)")
    _choice(p, "train.select", SELECTIONS)
    if not 0 < get(p, "evaluate.threshold") < 1:
        _fail("evaluate.threshold", get(p, "evaluate.threshold"), "use a probability in (0, 1)")
    return p


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run the stages from the project's root folder.")
    with open(path) as f:
        return validate(yaml.safe_load(f))


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        _fail("variant", variant, "use one of " + ", ".join(VARIANTS))
    return variant
