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
    "train": {"epochs": 2, "batch_size": 8},
    "evaluate": {"bootstrap": 50},
    "demo_encoder": {"vocab_size": 200, "hidden_size": 16, "layers": 1, "heads": 2},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def params() -> dict:
    """The project's params.yaml with the TINY overrides (a fresh copy per test)."""
    with open(ROOT / "params.yaml") as f:
        return merge(yaml.safe_load(f), TINY)


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
    """Everything `train` reads: the tiny encoder, features/text.h5 and features/images.h5."""
    from stages import cache_images, demo_encoder, embed_text

    demo_encoder.run(prepared)
    embed_text.run(prepared)
    cache_images.run(prepared)
    return prepared


def pytest_collection_modifyitems(items):
    """The slow end-to-end runs first: with `pytest -n 2` (make test) each takes a worker while
    the other tests share what is left, and both workers finish at about the same time."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
