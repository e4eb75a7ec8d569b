"""Read params.yaml and refuse bad values before any work starts.

Every stage calls `load()`; a bad value stops it with the parameter's name and what is allowed.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from cxrfusion.common import PipelineError

SOURCES = ("demo", "kaggle", "openi", "local", "mimic_cxr")
POOLINGS = ("cls", "mean")
VARIANTS = ("fusion", "image", "text")
EXPLAINED = ("fusion", "image")  # the variants with an image branch for Grad-CAM to explain
SELECTIONS = ("best_val_loss", "last")
FITS = ("pad", "crop", "stretch")  # image.fit: how cxrfusion/imaging.py makes an X-ray square
TEXT_FIELDS = ("indication", "comparison", "findings", "impression")
MIN_IMAGE_SIZE = 32  # EfficientNet downsamples by 32: smaller inputs leave no feature map
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
SEEDS = ("demo.seed", "split.seed", "demo_encoder.seed", "train.seed", "evaluate.seed",
         "explain.seed")
SWITCHES = ("data.keep_unindexed", "image.skip_bad", "model.freeze_backbone", "train.amp",
            "train.compile", "train.deterministic")


def _fail(name: str, value, allowed: str):
    raise PipelineError(f"parameter {name}={value!r} is not allowed: {allowed} "
                        f"(set it in params.yaml or with `dvc exp run -S {name}=...`).")


def _choice(p, name, options):
    if get(p, name) not in options:
        _fail(name, get(p, name), "use one of " + ", ".join(options))


def _fraction(p, name):
    v = get(p, name)
    if not _number(v) or not 0 < v < 1:
        _fail(name, v, "use a fraction strictly between 0 and 1")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range(p, name, low, high, allowed):
    """low <= value < high."""
    v = get(p, name)
    if not _number(v) or not low <= v < high:
        _fail(name, v, allowed)


def _positive(p, name, kind=int):
    v = get(p, name)
    if not _number(v) or v <= 0 or (kind is int and v != int(v)):
        _fail(name, v, f"use a positive {'integer' if kind is int else 'number'}")


def _boolean(p, name):
    # a quoted "false" is a non-empty string, which Python would take as true
    if not isinstance(get(p, name), bool):
        _fail(name, get(p, name), "use true or false (unquoted)")


def _seed(p, name):
    v = get(p, name)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**32:
        _fail(name, v, "use an integer from 0 to 2**32 - 1")


def _device(p, name):
    v = get(p, name)
    if not isinstance(v, str) or not DEVICE.fullmatch(v):
        _fail(name, v, "use auto, cpu, cuda or cuda:N")


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
    if get(p, "data.source") == "mimic_cxr" and not get(p, "data.local_dir"):
        _fail("data.local_dir", get(p, "data.local_dir"),
              "with data.source=mimic_cxr, name the MIMIC-CXR-JPG folder (the one holding "
              "mimic-cxr-2.0.0-metadata.csv.gz and files/)")
    for name in ("demo.studies", "demo.image_size"):
        _positive(p, name)
    _range(p, "demo.label_noise", 0, 0.5, "use a fraction in [0, 0.5)")
    _fraction(p, "split.test")
    _fraction(p, "split.val")
    for name in ("split.min_studies", "split.min_per_label"):
        _range(p, name, 0, float("inf"), "use a whole number >= 0 (0: no minimum)")
        if get(p, name) != int(get(p, name)):
            _fail(name, get(p, name), "use a whole number >= 0 (0: no minimum)")
    official = get(p, "split").get("official", False)  # default: the seeded split
    if not isinstance(official, bool):
        _fail("split.official", official, "use true or false")
    if official and get(p, "data.source") != "mimic_cxr":
        _fail("split.official", official, "only data.source=mimic_cxr has an official split; "
              "use false")
    fields = get(p, "text.fields")
    if not isinstance(fields, list) or not fields or any(f not in TEXT_FIELDS for f in fields):
        _fail("text.fields", fields, "use a non-empty list of " + ", ".join(TEXT_FIELDS))
    _choice(p, "text.pooling", POOLINGS)
    if not isinstance(get(p, "text.lowercase"), bool) and get(p, "text.lowercase") != "auto":
        _fail("text.lowercase", get(p, "text.lowercase"), "use auto, true or false")
    for name in ("text.max_length", "text.batch_size", "text.nproc", "train.epochs",
                 "train.batch_size", "train.nproc", "model.hidden", "evaluate.bootstrap"):
        _positive(p, name)
    for name in ("demo_encoder.vocab_size", "demo_encoder.hidden_size", "demo_encoder.layers",
                 "demo_encoder.heads"):
        _positive(p, name)
    if get(p, "demo_encoder.hidden_size") % get(p, "demo_encoder.heads"):
        _fail("demo_encoder.heads", get(p, "demo_encoder.heads"),
              f"use a divisor of demo_encoder.hidden_size={get(p, 'demo_encoder.hidden_size')}")
    _range(p, "train.in_memory_gb", 0, float("inf"), "use a size in GB >= 0 (0 always streams)")
    _range(p, "train.workers", 0, 1025, "use a number of loader processes >= 0")
    if get(p, "train.workers") != int(get(p, "train.workers")):
        _fail("train.workers", get(p, "train.workers"), "use a whole number of processes")
    _positive(p, "train.lr", float)
    _positive(p, "image.size")
    _range(p, "image.size", MIN_IMAGE_SIZE, float("inf"),
           f"the backbone needs at least {MIN_IMAGE_SIZE} px (240 for the real study)")
    _choice(p, "image.fit", FITS)
    _range(p, "model.dropout", 0, 1, "use a fraction in [0, 1)")
    _choice(p, "train.select", SELECTIONS)
    _fraction(p, "evaluate.threshold")
    _choice(p, "explain.variant", EXPLAINED)
    _positive(p, "explain.per_outcome")
    for name in SEEDS:
        _seed(p, name)
    for name in SWITCHES:
        _boolean(p, name)
    for name in ("train.device", "text.device"):
        _device(p, name)
    pretrained = get(p, "image.pretrained")
    if not isinstance(pretrained, bool) and not (isinstance(pretrained, str) and pretrained):
        _fail("image.pretrained", pretrained, "use true, false or the path of a weights file")
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
