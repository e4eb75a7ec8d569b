"""Shared fixtures: a tiny demo project built in a temporary folder, offline.

Stages use paths relative to the project root (data/, features/, models/, metrics/), so the
fixtures chdir into a temporary folder and run the stage functions there.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from kinds import (  # noqa: F401  (pytest finds its hooks here)
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_itemcollected,
    pytest_xdist_make_scheduler,
)

if TYPE_CHECKING:
    from cxrfusion.params import Params

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
    "demo_image_encoder": {"image_size": 32, "patch_size": 8, "hidden_size": 16, "layers": 1,
                           "heads": 2},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if nested else value
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


def _prepare(p) -> None:
    from stages.download import download
    from stages.prepare import prepare

    download(p)
    prepare(p)


def _cache(p) -> None:
    from stages import (
        cache_images,
        demo_encoder,
        demo_image_encoder,
        embed_images,
        embed_text,
        shuffle_reports,
    )

    demo_encoder.demo_encoder(p)
    for text_input in p.text.inputs:
        embed_text.embed_text(text_input, p)
        shuffle_reports.shuffle_reports(text_input, p)
    cache_images.cache_images(p)
    demo_image_encoder.demo_image_encoder(p)
    for alias in p.frozen_image.encoders:
        embed_images.embed_images(alias, p)


@pytest.fixture(scope="session")
def made_once(tmp_path_factory) -> dict[str, Path]:
    """The folders `prepared` and `cached` make with TINY's parameters, made once a test process
    ({"prepared": folder, "cached": folder}): those fixtures copy them when a test keeps the
    parameters as they are (the stages write the same bytes every time: tested)."""
    from cxrfusion.params import built

    p = built(tiny())
    folders = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, steps in (("prepared", (_prepare,)), ("cached", (_prepare, _cache))):
            folders[name] = tmp_path_factory.mktemp(name)
            mp.chdir(folders[name])
            for step in steps:
                step(p)
    return folders


def _copy_or_make(name: str, made_once: dict, params, steps) -> None:
    """Into the current folder: the folder made once if `params` are TINY's, else the stages."""
    from cxrfusion.params import as_dict, built

    if as_dict(params) == as_dict(built(tiny())):
        shutil.copytree(made_once[name], Path.cwd(), symlinks=True, dirs_exist_ok=True)
    else:
        for step in steps:
            step(params)


@pytest.fixture
def prepared(workdir, params, made_once) -> Params:
    """data/raw (synthetic demo) and data/prepared in the temporary folder."""
    _copy_or_make("prepared", made_once, params, (_prepare,))
    return params


@pytest.fixture
def cached(workdir, params, made_once) -> Params:
    """Everything `train` reads: data/raw and data/prepared, the tiny encoders,
    features/text/<input>.h5 for every text input, features/images.h5 and
    features/images/<alias>.h5 for every frozen image encoder."""
    _copy_or_make("cached", made_once, params, (_prepare, _cache))
    return params


@pytest.fixture(scope="session")
def evaluated_once(tmp_path_factory, made_once) -> Path:
    """The `cached` folder with every run of TINY's parameters trained for one epoch and
    evaluated: made once a test process (training every run takes seconds), copied by
    `evaluated`."""
    from cxrfusion import tfidf
    from cxrfusion.formats import runs
    from cxrfusion.params import built, row
    from cxrfusion.training import train
    from cxrfusion.tuning import tune
    from stages.evaluate import evaluate

    p = built(tiny({"train": {"epochs": 1}}))
    folder = tmp_path_factory.mktemp("evaluated")
    shutil.copytree(made_once["cached"], folder, symlinks=True, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for run in runs(p):
            if row(run.variant).trained_once:
                tfidf.train(run, p)  # stage train_tfidf
            else:
                if run.seed == p.train.seeds[0]:
                    tune(run, p)  # no grid: the arm's empty choice, as stage tune writes it
                train(run, p)
            evaluate(run, p)
    return folder


@pytest.fixture
def evaluated(workdir, params, evaluated_once) -> Params:
    """Every run `compare` reads, trained for one epoch and evaluated (train.epochs 1)."""
    params.train.epochs = 1
    shutil.copytree(evaluated_once, Path.cwd(), symlinks=True, dirs_exist_ok=True)
    return params


def first_run(variant: str, p: Params, seed: int | None = None, text_input: str | None = None):
    """The Run of `variant` a test trains: the first of train.seeds (or `seed`) and, for the
    variants that read a report, the first of text.inputs (or `text_input`)."""
    from cxrfusion.formats import Run

    seed = p.train.seeds[0] if seed is None else seed
    return Run.of(variant, seed, text_input or p.text.inputs[0])


def splits_of(p: Params, variant: str, names: tuple | None = None):
    """load_splits as the first run of `variant` reads them (conftest.first_run): the images
    if it reads them, the report vectors of its text input if it reads a report."""
    from cxrfusion.dataset import load_splits
    from cxrfusion.model import reads

    names = {"names": names} if names else {}
    return load_splits(p, reads(variant)[0], first_run(variant, p).text_input, **names)


def interrupt_training_at(monkeypatch, epoch: int):
    """Make cxrfusion.training's loop stop with KeyboardInterrupt when epoch `epoch` starts, as if
    the machine went away then; returns the real train_epoch, to restore or wrap."""
    import cxrfusion.training as train_module

    real_epoch = train_module.train_epoch

    def interrupted(*args, **kwargs):
        if kwargs["epoch"] == epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    return real_epoch


# timm's `test_efficientnet` (100 k parameters, random and frozen: only the head trains, in a
# second) at 64 px: at 32 px the last convolutional block is 1 x 1 and a Grad-CAM heatmap could
# only be constant. Prediction and Grad-CAM run the same code for any backbone.
FROZEN = {"image": {"size": 64},
          "model": {"backbone": "test_efficientnet", "freeze_backbone": True},
          "train": {"epochs": 1, "device": "cpu"},
          "explain": {"variant": "fusion", "per_outcome": 2, "seed": 0}}


def built_project(folder: Path, override: dict, runs=()) -> Params:
    """A whole tiny project in `folder` (the recipe of the `cached` fixture, params.yaml with
    TINY and then `override`), with `runs` trained and evaluated; returns its parameters. For
    module-scoped fixtures: built once for the tests of a file."""
    from cxrfusion.params import built
    from cxrfusion.training import train
    from stages.download import download
    from stages.evaluate import evaluate
    from stages.prepare import prepare

    p = built(tiny(override))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        download(p)
        prepare(p)
        _cache(p)
        for run in runs:
            train(run, p)
            evaluate(run, p)
    return p


def frozen_project(folder: Path, runs) -> Params:
    """built_project with FROZEN's backbone: for the tests that only read the trained runs."""
    return built_project(folder, FROZEN, runs)
