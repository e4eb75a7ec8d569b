"""Several processes (torchrun, gloo on the CPU) and streamed images give the same model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT
from stages import distributed
from stages.common import PipelineError
from stages.distributed import World, shard
from stages.train import epoch_order, train


def _launch(n: int, *args: str) -> subprocess.CompletedProcess:
    """`python -m stages.launch n ...` in the current (temporary) project folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "stages.launch", str(n), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


# --- sharding ------------------------------------------------------------------------------------

def test_shards_of_a_batch_cover_it_once_in_order():
    batch = torch.arange(100, 111)  # 11 rows over 3 processes: 3, 4, 4
    shares = [shard(batch, World(r, 3)) for r in range(3)]
    assert [len(s) for s in shares] == [3, 4, 4]
    assert torch.equal(torch.cat(shares), batch)
    assert torch.equal(shard(batch, World()), batch)


def test_every_rank_draws_the_same_batches():
    orders = [epoch_order(52, 8, torch.Generator().manual_seed(3), World(r, 2)) for r in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*orders))
    rows = torch.cat(orders[0])
    assert len(rows) == 52 and len(set(rows.tolist())) == 52
    # the last batch (2 rows) would leave one row per process: batch norm cannot train on it
    assert len(epoch_order(50, 12, torch.Generator().manual_seed(3), World(0, 2))) == 4
    assert len(epoch_order(50, 12, torch.Generator().manual_seed(3), World(0, 1))) == 5


def test_global_batch_too_small_for_the_processes(cached, monkeypatch):
    monkeypatch.setattr(distributed, "start", lambda device: World(0, 4, torch.device("cpu")))
    cached["train"]["batch_size"] = 6
    with pytest.raises(PipelineError, match=r"train.batch_size=6 .* each of the 4 processes.*>=8"):
        train("fusion", cached)


def test_launch_refuses_a_bad_process_count(workdir):
    done = _launch(0, "stages.train", "fusion")
    assert done.returncode == 2
    assert "must be a positive integer" in done.stderr


# --- two processes = one process with the same global batch --------------------------------------

def test_two_processes_train_the_same_weights_as_one(cached):
    # Dropout masks are drawn per process and, on the CPU, batch-norm statistics too (PyTorch's
    # SyncBatchNorm, used on GPUs, needs CUDA): compare with neither, the backbone frozen.
    p = cached
    p["model"].update(dropout=0.0, freeze_backbone=True)
    p["train"].update(epochs=2, batch_size=8)
    Path("params.yaml").write_text(yaml.safe_dump(p))

    done = _launch(2, "stages.train", "fusion")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (gloo)" in done.stderr
    two = _weights("models/fusion")
    history_two = (Path("models/fusion/history.json")).read_text()
    assert not Path("checkpoints/fusion.pt").exists()

    torch.set_num_threads(1)  # as each torchrun process: the same float summation order
    try:
        train("fusion", p)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    one = _weights("models/fusion")
    assert one.keys() == two.keys()
    moved = [k for k in one if k.startswith("head.")]
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    assert history_two != ""  # the same epochs were logged (losses agree to float tolerance)
    import json

    for a, b in zip(json.loads(history_two), json.loads(Path("models/fusion/history.json").read_text())):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-4)
        assert a["val"]["loss"] == pytest.approx(b["val"]["loss"], rel=1e-4)
    assert moved  # the head trained: the comparison is not of two untouched initialisations


def test_embed_text_in_two_processes_writes_the_same_cache(cached):
    Path("params.yaml").write_text(yaml.safe_dump(cached))
    with h5py.File("features/text.h5") as f:
        uids, vectors = f["uids"][:], f["vectors"][:]
    done = _launch(2, "stages.embed_text")
    assert done.returncode == 0, done.stderr[-3000:]
    with h5py.File("features/text.h5") as f:
        assert np.array_equal(f["uids"][:], uids)
        np.testing.assert_allclose(f["vectors"][:], vectors, rtol=1e-5, atol=1e-6)
    assert not list(Path("features").glob(".text.h5.part*"))


# --- streaming from images.h5 ------------------------------------------------------------------

def test_streamed_images_train_the_same_model(cached):
    from stages.dataset import load_splits

    p = cached
    p["train"]["epochs"] = 1
    train("fusion", p)
    in_memory = _weights("models/fusion")

    p["train"].update(in_memory_gb=0, workers=2)
    splits, _ = load_splits(p, True, True)
    assert splits["train"].streamed and splits["train"].images is None
    train("fusion", p)
    streamed = _weights("models/fusion")
    for key in in_memory:
        assert torch.equal(streamed[key], in_memory[key]), key
