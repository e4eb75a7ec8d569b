"""Shared fixtures: a tiny demo project built in a temporary folder, offline.

Stages use paths relative to the project root (data/, features/, models/, metrics/), so the
fixtures chdir into a temporary folder and run the stage functions there.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
if os.environ.get("PYTEST_XDIST_WORKER"):
    # test processes run side by side (pytest -n): one thread each (set before torch is
    # imported, and inherited by the stages the tests start), or their OpenMP threads fight
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY = {  # small enough for seconds on 2 CPU cores, large enough for every split
    "demo": {"studies": 60, "image_size": 48},
    "split": {"min_studies": 5},  # 60 studies leave 7 for validation
    "image": {"size": 32},
    "train": {"epochs": 2, "batch_size": 8, "seeds": [0, 1]},  # two seeds: a mean and a spread
    "compare": {"bootstrap": 240},  # the fewest that let Holm over the family of 6 reach 0.05
    "demo_encoder": {"vocab_size": 200, "hidden_size": 16, "layers": 1, "heads": 2},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) else value
    return out


def tiny(override: dict | None = None) -> dict:
    """The project's params.yaml with the TINY overrides and then `override`, as a dict (what a
    test writes into a params.yaml of its own)."""
    with open(ROOT / "params.yaml") as f:
        return merge(merge(yaml.safe_load(f), TINY), override or {})


@pytest.fixture
def params():
    """The project's params.yaml with the TINY overrides, as the stages read it (params.Params;
    a fresh one per test, which a test may change)."""
    from cxrfusion.params import built

    return built(tiny())


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def prepared(workdir, params) -> dict:
    """data/raw (synthetic demo) and data/prepared in the temporary folder."""
    from stages.download import download
    from stages.prepare import prepare

    download(params)
    prepare(params)
    return params


@pytest.fixture
def cached(prepared) -> dict:
    """Everything `train` reads: the tiny encoder, features/text/<input>.h5 for every text
    input and features/images.h5."""
    from stages import cache_images, demo_encoder, embed_text

    demo_encoder.demo_encoder(prepared)
    for text_input in prepared.text.inputs:
        embed_text.embed_text(text_input, prepared)
    cache_images.cache_images(prepared)
    return prepared


def first_run(variant: str, p: dict, seed: int | None = None, text_input: str | None = None):
    """The Run of `variant` a test trains: the first of train.seeds (or `seed`) and, for the
    variants that read a report, the first of text.inputs (or `text_input`)."""
    from cxrfusion.formats import Run

    seed = p.train.seeds[0] if seed is None else seed
    if variant == "image":
        return Run(variant, seed)
    return Run(variant, seed, text_input or p.text.inputs[0])


def splits_of(p: dict, variant: str, names: tuple | None = None):
    """load_splits as the first run of `variant` reads them (conftest.first_run): the images
    if it reads them, the report vectors of its text input if it reads a report."""
    from cxrfusion.dataset import load_splits
    from cxrfusion.model import reads

    names = {"names": names} if names else {}
    return load_splits(p, reads(variant)[0], first_run(variant, p).text_input, **names)


def interrupt_training_at(monkeypatch, epoch: int):
    """Make stages.train's training stop with KeyboardInterrupt when epoch `epoch` starts, as if
    the machine went away then; returns the real train_epoch, to restore or wrap."""
    import stages.train as train_module

    real_epoch = train_module.train_epoch

    def interrupted(*args, **kwargs):
        if kwargs["epoch"] == epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    return real_epoch


def pytest_collection_modifyitems(items):
    """The slow end-to-end runs first: with `pytest -n 2` (make test) each takes a worker while
    the other tests share what is left, and both workers finish at about the same time."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# timm's `test_efficientnet` (100 k parameters, random and frozen: only the head trains, in a
# second) at 64 px: at 32 px the last convolutional block is 1 x 1 and a Grad-CAM heatmap could
# only be constant. Prediction and Grad-CAM run the same code for any backbone.
FROZEN = {"image": {"size": 64},
          "model": {"backbone": "test_efficientnet", "freeze_backbone": True},
          "train": {"epochs": 1, "device": "cpu"},
          "explain": {"variant": "fusion", "per_outcome": 2, "seed": 0}}


def built_project(folder: Path, override: dict, runs=()) -> dict:
    """A whole tiny project in `folder` (the recipe of the `cached` fixture, params.yaml with
    TINY and then `override`), with `runs` trained and evaluated; returns its parameters. For
    module-scoped fixtures: built once for the tests of a file."""
    from cxrfusion.params import built
    from stages import cache_images, demo_encoder, embed_text
    from stages.download import download
    from stages.evaluate import evaluate
    from stages.prepare import prepare
    from stages.train import train

    p = built(tiny(override))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        download(p)
        prepare(p)
        demo_encoder.demo_encoder(p)
        for text_input in p.text.inputs:
            embed_text.embed_text(text_input, p)
        cache_images.cache_images(p)
        for run in runs:
            train(run, p)
            evaluate(run, p)
    return p


def frozen_project(folder: Path, runs) -> dict:
    """built_project with FROZEN's backbone: for the tests that only read the trained runs."""
    return built_project(folder, FROZEN, runs)
