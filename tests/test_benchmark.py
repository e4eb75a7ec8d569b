"""bench/benchmark.py (and the scripts it runs, bench/{common,original_step,loop,caches}.py):
the --tiny CPU run measures every section and prints one JSON object;
the batch sweep and the synthetic reports behave as documented."""
from __future__ import annotations

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "benchmark.py"

SECTIONS = ["original_step", "project_loop", "compute_ceiling", "embed_text", "cache_images"]
RATES = [("original_step", "images_per_s"), ("project_loop", "images_per_s"),
         ("project_loop", "images_per_s_default_batch"), ("project_loop", "text_only_images_per_s"),
         ("compute_ceiling", "images_per_s"), ("embed_text", "reports_per_s"),
         ("embed_text", "seconds"), ("embed_text", "seconds_for_3851"),
         ("cache_images", "images_per_s_1_worker"), ("cache_images", "images_per_s_all_workers"),
         ("cache_images", "scaling_efficiency")]
TARGETS = ["project_loop_vs_compute_ceiling", "project_loop_vs_original_step", "embed_text_s",
           "cache_images_scaling_efficiency", "projected_full_study_s"]


def positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One `--tiny --device cpu` run from an empty folder, with its own TMPDIR."""
    cwd = tmp_path_factory.mktemp("cwd")
    tmpdir = tmp_path_factory.mktemp("tmpdir")
    env = {**os.environ, "TMPDIR": str(tmpdir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), cwd, tmpdir  # stdout holds the JSON object and nothing else


def test_tiny_run_reports_every_section(tiny):
    result, _, _ = tiny
    assert result["mode"] == "tiny" and result["device_type"] == "cpu"
    assert isinstance(result["device"], str) and result["device"]
    assert result["cpu_count"] >= 1
    assert {"torch", "timm", "transformers", "torchvision"} <= set(result["versions"])
    for section in SECTIONS:
        assert isinstance(result[section], dict), section
    for section, key in RATES:
        assert positive_finite(result[section][key]), (section, key, result[section][key])
    loop = result["project_loop"]
    assert str(loop["best_batch"]) in loop["images_per_s_by_batch"]
    assert all(positive_finite(r) for r in loop["images_per_s_by_batch"].values())
    assert str(loop["best_batch"]) in result["compute_ceiling"]["images_per_s_by_batch"]
    assert result["embed_text"]["reports"] == result["inputs"]["reports"]
    options = result["options"]  # train.deterministic measured; train.compile only when asked
    assert options["batch_size"] == loop["default_batch"]
    assert positive_finite(options["deterministic_images_per_s"]), options
    assert options["deterministic_vs_default"] == pytest.approx(
        options["deterministic_images_per_s"] / loop["images_per_s_default_batch"], rel=1e-3)
    assert "compiled_images_per_s" not in options and "compile_error" not in options


def test_tiny_run_reports_ratios_projection_and_targets(tiny):
    result, _, _ = tiny
    assert all(positive_finite(v) for v in result["ratios"].values())
    assert positive_finite(result["projected_full_study_s"])
    assert result["projected_full_study_s"] == result["projection"]["total_s"]
    assert set(result["targets"]) == set(TARGETS)
    for name, target in result["targets"].items():
        assert positive_finite(target["value"]), name
        assert isinstance(target["pass"], bool) and isinstance(target["target"], str)
    assert result["all_targets_pass"] == all(t["pass"] for t in result["targets"].values())


def test_tiny_run_leaves_no_files(tiny):
    _, cwd, tmpdir = tiny
    assert list(cwd.iterdir()) == []
    assert not list(tmpdir.glob("bench-*"))  # its temporary folder is gone (torch may leave a
    #                                          torchinductor_<user> cache there: not the script's)


@pytest.mark.parametrize("script, sections", [
    ("original_step", ["original_step"]),
    ("loop", ["project_loop", "compute_ceiling", "options"]),
    ("caches", ["cache_images", "embed_text"]),
])
def test_each_script_runs_alone(tmp_path, script, sections):
    """bench/<script>.py --tiny prints the header and its own sections, nothing else measured."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), "--tiny",
                           "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert result["mode"] == "tiny" and result["device_type"] == "cpu"
    assert set(result) == {"mode", "device", "device_type", "cpu_count", "versions", "sizes",
                           "inputs", "benchmark_s", *sections}
    for section, key in RATES:
        if section in sections:
            assert positive_finite(result[section][key]), (section, key)
    assert not list(tmp_path.glob("bench-*"))


# --- pieces of the scripts, imported ---------------------------------------------------------

@pytest.fixture(scope="module")
def bench():
    """bench/common.py and bench/loop.py, imported as the package `bench` (a namespace folder)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    with mock.patch.dict(os.environ):  # the scripts' environment defaults stay in the scripts
        common = importlib.import_module("bench.common")
        loop = importlib.import_module("bench.loop")
    yield SimpleNamespace(common=common, loop=loop)
    for name in ("bench.loop", "bench.common", "bench"):
        sys.modules.pop(name, None)


def test_batch_sweep_stops_when_a_larger_batch_gains_5_percent_or_less(bench):
    rates = {64: 100.0, 128: 180.0, 256: 186.0, 512: 400.0}
    tried = []

    def measure(batch):
        tried.append(batch)
        return rates[batch]

    got, best, oom = bench.loop.sweep_batches(measure, 64, (128, 256, 512))
    assert tried == [64, 128, 256] and best == 128 and oom == []
    assert got == {64: 100.0, 128: 180.0, 256: 186.0}


def test_batch_sweep_stops_when_the_gpu_runs_out_of_memory(bench):
    def measure(batch):
        if batch >= 256:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return float(batch)

    got, best, oom = bench.loop.sweep_batches(measure, 64, (128, 256, 512))
    assert got == {64: 64.0, 128: 128.0} and best == 128 and oom == [256]


def test_synthetic_reports_have_iu_xray_lengths(bench):
    texts = bench.common.synthetic_reports(bench.common.STUDY_REPORTS)
    words = np.array([len(t.split()) for t in texts])
    assert len(texts) == 3851 and words.min() >= 3
    assert 31 <= np.median(words) <= 37 and 66 <= np.percentile(words, 95) <= 86
    assert bench.common.synthetic_reports(5) == bench.common.synthetic_reports(5)  # seeded


def test_time_limit_interrupts_and_then_disarms(bench):
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="after 1 s"):
        with bench.loop.time_limit(1):
            time.sleep(10)
    assert time.perf_counter() - start < 5
    assert signal.alarm(0) == 0  # no alarm left pending
    with bench.loop.time_limit(5):  # a block that ends in time is left alone
        pass
    assert signal.alarm(0) == 0


def test_sigterm_prints_the_sections_measured_so_far(tmp_path):
    """A `timeout` that stops the benchmark still gets every complete section, as JSON."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # the second section's log line: the first is in the result
        if "original_step:" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    result = json.loads(out)
    assert "SIGTERM" in result["stopped"]
    assert positive_finite(result["cache_images"]["images_per_s_all_workers"])
    assert "targets" not in result and "options" not in result
    assert not list(tmp_path.glob("bench-*"))  # the temporary folder is removed on the way out


# --- bench/memory.py ------------------------------------------------------------------------------

def test_memory_benchmark_measures_loading_and_training():
    """A tiny run of bench/memory.py with the checkout's own stages: the data it builds goes
    through load_splits and one epoch of train, and every number it prints is there."""
    images, size = 600, 32
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--images",
                           str(images), "--size", str(size), "--batch", "16"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["image_cache_mb"] == pytest.approx(images * size * size / 1e6, abs=0.1)
    assert result["train_peak_rss_mb"] >= result["loading_peak_rss_mb"] > 0
    assert positive_finite(result["train_seconds"]) and result["epochs"] == 1


# --- bench/augment.py -----------------------------------------------------------------------------

def test_augment_benchmark_times_augmentation_and_a_training_step(tmp_path):
    """bench/augment.py --tiny --device cpu: both settings, every time positive, the shares in
    (0, 1) and equal to augment / (augment + step)."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "augment.py"), "--tiny",
                           "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["mode"] == "tiny" and result["device_type"] == "cpu"
    for name in ("demo", "study"):
        setting = result["augment"][name]
        assert {"batch_size", "image_size", "backbone", "repeats"} <= set(setting)
        for key in ("affine_ms", "affine+jitter_ms", "train_step_ms"):
            assert positive_finite(setting[key]), (name, key, setting[key])
        for kind in ("affine", "affine+jitter"):
            share = setting[f"{kind}_share_of_step"]
            assert 0 < share < 1
            assert share == pytest.approx(setting[f"{kind}_ms"] / (setting[f"{kind}_ms"]
                                                                    + setting["train_step_ms"]),
                                          rel=1e-3)
    assert not list(tmp_path.glob("bench-*"))
