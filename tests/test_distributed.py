"""Several processes (torchrun, gloo on the CPU) and streamed images give the same model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, first_run, splits_of
from safetensors.torch import load_file

from cxrfusion import checkpoint, distributed
from cxrfusion.common import PipelineError, resolve_device
from cxrfusion.distributed import World, shard
from cxrfusion.formats import text_cache
from cxrfusion.model import Classifier, sync_batchnorm
from cxrfusion.params import as_dict
from cxrfusion.training import epoch_order, train


def _launch(n: int, *args: str) -> subprocess.CompletedProcess:
    """`python -m cxrfusion.launch n ...` in the current (temporary) project folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cxrfusion.launch", str(n), *args], env=env,
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


def test_the_shares_of_all_ranks_make_one_process_epoch():
    one = epoch_order(52, 9, torch.Generator().manual_seed(3), World())
    for size in (2, 3):
        steps = [[shard(b, World(r, size)) for b in
                  epoch_order(52, 9, torch.Generator().manual_seed(3), World(r, size))]
                 for r in range(size)]
        assert len(steps[0]) == len(one) == 6  # 5 x 9 + 7: the last batch has >= 2 rows a rank
        assert all(torch.equal(torch.cat(shares), b) for shares, b in zip(zip(*steps), one))
    assert sorted(torch.cat(one).tolist()) == list(range(52))
    # the last batch (2 rows) would leave one row per process: batch norm cannot train on it
    assert len(epoch_order(50, 12, torch.Generator().manual_seed(3), World(0, 2))) == 4
    assert len(epoch_order(50, 12, torch.Generator().manual_seed(3), World(0, 1))) == 5


def test_global_batch_too_small_for_the_processes(cached, monkeypatch):
    monkeypatch.setattr(distributed, "start",
                        lambda device, param: World(0, 4, torch.device("cpu")))
    cached.train.batch_size = 6
    with pytest.raises(PipelineError, match=r"train.batch_size=6 .* each of the 4 processes.*>=8"):
        train(first_run("fusion", cached), cached)


def test_more_processes_than_gpus(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(distributed, "resolve_device", lambda name, setting: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PipelineError, match=r"torchrun started 4 processes on this machine but "
                                            r"it has 2 GPUs: lower train.nproc"):
        distributed.start("auto", "train.device")


def test_a_device_that_is_not_there_names_where_it_was_asked_for(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PipelineError, match=r"parameter text\.device='cuda', but no CUDA GPU"):
        resolve_device("cuda", "parameter text.device")
    with pytest.raises(PipelineError, match=r"option --device='gpu' is not a device: use auto"):
        resolve_device("gpu", "option --device")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(PipelineError, match=r"train\.device='cuda:2', but this machine has 2 "
                                            r"GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("cuda_build", ["13.0", None])
def test_auto_on_a_cuda_build_without_gpu_warns_and_names_the_setting(monkeypatch, caplog,
                                                                       cuda_build):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    with caplog.at_level("WARNING"):
        assert resolve_device("auto", "parameter text.device") == torch.device("cpu")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if cuda_build is None:  # a CPU build: the CPU is what it can do, nothing to say
        assert warned == []
    else:
        assert len(warned) == 1
        assert "CUDA build (CUDA 13.0) but sees no GPU" in warned[0]
        assert "text.device=auto runs on the CPU" in warned[0]
        assert "set text.device=cuda to stop" in warned[0]


def test_launch_reads_the_process_count_from_a_parameter(workdir, monkeypatch):
    """dvc.yaml names the parameter (text.nproc), so that its value is not part of the command
    DVC compares."""
    from cxrfusion import launch

    shutil.copy(ROOT / "params.yaml", workdir / "params.yaml")
    assert launch.processes("3") == 3
    assert launch.processes("text.nproc") == 1
    with pytest.raises(PipelineError, match="parameter text.nprocs is missing"):
        launch.processes("text.nprocs")


def test_embed_text_names_text_device(prepared, monkeypatch):
    from stages import embed_text

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    prepared.text.device = "cuda"
    with pytest.raises(PipelineError, match=r"^parameter text\.device='cuda'"):
        embed_text.embed_text("indication", prepared)
    assert not text_cache("indication").exists()


def test_launch_refuses_a_bad_process_count(workdir):
    done = _launch(0, "stages.train", "fusion")
    assert done.returncode == 2
    assert "must be a positive integer" in done.stderr


# --- two processes = one process with the same global batch --------------------------------------

def test_two_processes_train_the_same_weights_as_one(cached):
    # Dropout masks are drawn per process and, on the CPU, batch-norm statistics too (PyTorch's
    # SyncBatchNorm, used on GPUs, needs CUDA): compare with neither, the backbone frozen.
    p = cached
    p.model = replace(p.model, dropout=0.0, freeze_backbone=True)
    # an odd global batch (shares of 4 and 5 rows: the loss weights matter) whose last batch
    # leaves each process >= 2 rows: two processes then take the steps one process takes
    import pandas as pd

    n = int((pd.read_csv("data/prepared/images.csv")["split"] == "train").sum())
    batch = next(b for b in (9, 11, 7, 13, 15) if n % b == 0 or n % b >= 4)
    order = [epoch_order(n, batch, torch.Generator().manual_seed(0), world)
             for world in (World(), World(0, 2))]
    assert len(order[0]) == len(order[1])  # the premise: the same batches
    p.train = replace(p.train, epochs=2, batch_size=batch)
    Path("params.yaml").write_text(yaml.safe_dump(as_dict(p)))
    run = first_run("fusion", p)

    done = _launch(2, "stages.train", "fusion", str(run.seed), run.text_input)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (gloo)" in done.stderr
    two = _weights(run.models)
    history_two = json.loads((run.models / "history.json").read_text())
    assert not checkpoint.path(run).exists()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process: the same float summation order
    try:
        train(run, p)
    finally:
        torch.set_num_threads(threads)
    one = _weights(run.models)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    history_one = json.loads((run.models / "history.json").read_text())
    assert len(history_one) == len(history_two) == 2
    for a, b in zip(history_two, history_one):
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-4)
        assert a["val"]["loss"] == pytest.approx(b["val"]["loss"], rel=1e-4)
    # the head trained: not a comparison of two untouched initialisations
    torch.manual_seed(run.seed)
    untrained = Classifier("fusion", one["head.0.weight"].shape[1] - 1280,
                           "efficientnet_b1").state_dict()
    assert not torch.allclose(untrained["head.0.weight"], one["head.0.weight"], atol=1e-3)


def test_synced_batch_norms_compute_what_the_model_did():
    torch.manual_seed(0)
    model = Classifier("image", 0, "efficientnet_b1").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x, None)
        synced = sync_batchnorm(model).eval()
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
        assert torch.equal(synced(x, None), before)


def test_embed_text_in_two_processes_writes_the_same_cache(cached):
    Path("params.yaml").write_text(yaml.safe_dump(as_dict(cached)))
    text_input = "findings+impression"
    cache = text_cache(text_input)
    with h5py.File(cache) as f:
        uids, vectors = f["uids"][:], f["vectors"][:]
    done = _launch(2, "stages.embed_text", text_input)
    assert done.returncode == 0, done.stderr[-3000:]
    with h5py.File(cache) as f:
        assert np.array_equal(f["uids"][:], uids)
        np.testing.assert_allclose(f["vectors"][:], vectors, rtol=1e-5, atol=1e-6)
    assert not list(cache.parent.glob(f".{cache.name}.part*"))


# --- streaming from images.h5 ------------------------------------------------------------------

def test_streamed_images_train_the_same_model(cached):

    p = cached
    p.train.epochs = 1
    run = first_run("fusion", p)
    train(run, p)
    in_memory = _weights(run.models)

    p.train = replace(p.train, in_memory_gb=0, workers=2)
    splits, _ = splits_of(p, "fusion")
    assert splits["train"].streamed and splits["train"].images is None
    train(run, p)
    streamed = _weights(run.models)
    for key in in_memory:
        assert torch.equal(streamed[key], in_memory[key]), key
