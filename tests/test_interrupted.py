"""A stage stopped part-way leaves the previous outputs intact and valid.

Each test runs a stage once, then again with an error raised in the middle of writing its
outputs (the moment a kill would do the most harm), and checks that every byte of the first
run's outputs is still there and still readable. download, prepare, cache_images and train
have theirs beside their other tests (test_demo_and_download, test_prepare, test_caches,
test_resume).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pandas as pd
import pytest
from conftest import first_run

from cxrfusion import figures
from cxrfusion.formats import read_text_cache, text_cache, text_cache_attrs
from cxrfusion.params import fields_of
from stages import compare, demo_encoder, embed_text, evaluate


class Killed(Exception):
    """Stands for the signal that stops a stage."""


def snapshot(*paths: str) -> dict:
    files = {}
    for path in map(Path, paths):
        for f in sorted([path] if path.is_file() else path.rglob("*")):
            if f.is_file():
                files[str(f)] = f.read_bytes()
    assert files, paths
    return files


def leftovers() -> list[str]:
    """Temporary files or folders a stage left behind."""
    return [str(p) for p in Path(".").rglob("*") if p.name.endswith(".tmp") or ".old" in p.name]


def test_killed_demo_encoder_keeps_the_previous_encoder(cached, monkeypatch):
    before = snapshot("models/demo_encoder")
    from transformers import BertModel

    real = BertModel.save_pretrained

    def half_saved(self, folder, *args, **kwargs):
        real(self, folder, *args, **kwargs)
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise Killed

    monkeypatch.setattr(BertModel, "save_pretrained", half_saved)
    cached.demo_encoder.hidden_size = 32  # a different encoder: every file would change
    with pytest.raises(Killed):
        demo_encoder.demo_encoder(cached)
    assert snapshot("models/demo_encoder") == before
    assert not leftovers()


def test_killed_embed_text_keeps_the_previous_cache(cached, monkeypatch):
    text_input = cached.text.inputs[0]
    path = text_cache(text_input)
    before = snapshot(str(path))
    real = h5py.Group.create_dataset

    def dies_after_uids(self, name, *args, **kwargs):
        dataset = real(self, name, *args, **kwargs)
        if name == "vectors":
            raise Killed
        return dataset

    monkeypatch.setattr(h5py.Group, "create_dataset", dies_after_uids)
    with pytest.raises(Killed):
        embed_text.embed_text(text_input, cached)
    monkeypatch.setattr(h5py.Group, "create_dataset", real)
    assert snapshot(str(path)) == before
    expect = text_cache_attrs(cached.text, fields_of(text_input))
    uids, vectors, _ = read_text_cache(path, expect=expect)
    assert len(uids) == len(vectors) > 0
    assert not leftovers()


def test_killed_evaluate_keeps_the_previous_scores(evaluated, monkeypatch):
    run = first_run("fusion", evaluated)
    before = [snapshot(str(path)) for path in (run.predictions, run.test_metrics)]
    threshold = json.loads((run.test_metrics).read_text())["threshold"]
    real = pd.DataFrame.to_csv

    def half_written(self, path, *args, **kwargs):
        Path(path).write_text("uid,filename,la")  # a partial CSV at the temporary path
        raise Killed

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_written)
    evaluated.evaluate.threshold = 0.3  # new scores would differ
    assert threshold != 0.3
    with pytest.raises(Killed):
        evaluate.evaluate(run, evaluated)
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    assert [snapshot(str(path)) for path in (run.predictions, run.test_metrics)] == before
    assert len(pd.read_csv(run.predictions)) > 0
    assert json.loads((run.test_metrics).read_text())["threshold"] == threshold
    assert not leftovers()


def test_killed_compare_keeps_the_previous_figures_and_intervals(evaluated, monkeypatch):
    compare.compare(evaluated)
    outputs = ("metrics/figures", "metrics/comparison.json", "metrics/comparison.md")
    before = snapshot(*outputs)

    def dies_mid_figures(*args):
        Path(args[-1]).write_bytes(b"\x89PNG partial")
        raise Killed

    monkeypatch.setattr(figures, "reliability", dies_mid_figures)  # after forest.png and roc.png
    evaluated.compare.bootstrap = 300  # new intervals would differ
    with pytest.raises(Killed):
        compare.compare(evaluated)
    assert snapshot(*outputs) == before
    assert json.loads(Path("metrics/comparison.json").read_text())["differences"]
    assert not leftovers()
