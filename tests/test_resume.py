"""An interrupted `train` resumes from its last completed epoch and ends where an
uninterrupted run ends (CPU: bit for bit)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import first_run, interrupt_training_at

import cxrfusion.training as train_module
from cxrfusion import checkpoint


def _weights(run) -> bytes:
    return (run.models / "model.safetensors").read_bytes()


def test_checkpoints_are_one_per_run():
    from cxrfusion.formats import Run

    assert checkpoint.path(Run("fusion", 0, "findings+impression")) == \
        Path("checkpoints/fusion-findings+impression-seed-0.pt")
    assert checkpoint.path(Run("image", 2)) == Path("checkpoints/image-seed-2.pt")
    paths = {checkpoint.path(r) for r in (Run("text", 0, "indication"),
                                          Run("text", 1, "indication"),
                                          Run("text", 0, "findings+impression"),
                                          Run("fusion", 0, "indication"),
                                          Run("fusion", 0, "indication", candidate=0),
                                          Run("fusion", 0, "indication", candidate=1))}
    assert len(paths) == 6  # no two runs share a checkpoint, a tuning candidate included


def test_interrupted_training_resumes_to_the_same_weights(cached, monkeypatch):
    cached.train = replace(cached.train, epochs=3, select="last")
    run = first_run("fusion", cached)
    straight = train_module.train(run, cached)
    expected = _weights(run)
    assert not checkpoint.path(run).exists(), "a finished run leaves no checkpoint"

    real_epoch = interrupt_training_at(monkeypatch, 3)  # as if the machine went away in epoch 3
    with pytest.raises(KeyboardInterrupt):
        train_module.train(run, cached)
    assert checkpoint.path(run).exists()
    assert _weights(run) == expected, "the interrupted run must not touch the old model"

    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    calls = []
    monkeypatch.setattr(train_module, "train_epoch",
                        lambda *a, **k: calls.append(k["epoch"]) or real_epoch(*a, **k))
    resumed = train_module.train(run, cached)
    assert calls == [3], "only the epoch that did not finish is trained again"
    assert resumed == straight
    assert _weights(run) == expected
    assert not checkpoint.path(run).exists()


def test_checkpoint_of_other_parameters_is_not_resumed(cached, monkeypatch):
    cached.train.epochs = 2
    real_epoch = interrupt_training_at(monkeypatch, 2)
    run = first_run("text", cached)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(run, cached)
    assert checkpoint.path(run).exists()

    calls = []
    monkeypatch.setattr(train_module, "train_epoch",
                        lambda *a, **k: calls.append(k["epoch"]) or real_epoch(*a, **k))
    # another run (seed 1) does not resume seed 0's checkpoint, nor remove it
    other = first_run("text", cached, seed=1)
    train_module.train(other, cached)
    assert calls == [1, 2]
    assert checkpoint.path(run).exists() and not checkpoint.path(other).exists()

    calls.clear()
    cached.train.lr = 0.001  # another experiment: must start from epoch 1
    train_module.train(run, cached)
    assert calls == [1, 2]
