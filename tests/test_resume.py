"""An interrupted `train` resumes from its last completed epoch and ends where an
uninterrupted run ends (CPU: bit for bit)."""
from __future__ import annotations

from pathlib import Path

import pytest

import stages.train as train_module
from cxrfusion import checkpoint


def _weights(variant: str) -> bytes:
    return Path(f"models/{variant}/model.safetensors").read_bytes()


def test_interrupted_training_resumes_to_the_same_weights(cached, monkeypatch):
    cached["train"].update(epochs=3, select="last")
    straight = train_module.train("fusion", cached)
    expected = _weights("fusion")
    assert not checkpoint.path("fusion").exists(), "a finished run leaves no checkpoint"

    real_epoch = train_module.train_epoch

    def interrupted(*args, **kwargs):
        if args[6] == 3:  # train_epoch(model, optimizer, data, batch_size, generator, amp, epoch)
            raise KeyboardInterrupt  # as if the machine went away during epoch 3
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train("fusion", cached)
    assert checkpoint.path("fusion").exists()
    assert _weights("fusion") == expected, "the interrupted run must not touch the old model"

    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    calls = []
    monkeypatch.setattr(train_module, "train_epoch",
                        lambda *a, **k: calls.append(a[6]) or real_epoch(*a, **k))
    resumed = train_module.train("fusion", cached)
    assert calls == [3], "only the epoch that did not finish is trained again"
    assert resumed == straight
    assert _weights("fusion") == expected
    assert not checkpoint.path("fusion").exists()


def test_checkpoint_of_other_parameters_is_not_resumed(cached, monkeypatch):
    cached["train"]["epochs"] = 2
    real_epoch = train_module.train_epoch

    def interrupted(*args, **kwargs):
        if args[6] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train("text", cached)
    assert checkpoint.path("text").exists()

    calls = []
    monkeypatch.setattr(train_module, "train_epoch",
                        lambda *a, **k: calls.append(a[6]) or real_epoch(*a, **k))
    cached["train"]["lr"] = 0.001  # another experiment: must start from epoch 1
    train_module.train("text", cached)
    assert calls == [1, 2]
