"""End to end: `dvc repro` of the whole pipeline on a tiny demo, in a temporary git repository."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import ROOT, TINY, merge

VENV_BIN = Path(sys.executable).parent
VARIANTS = ("fusion", "image", "text")
FIGURES = ["confusion.png", "intervals.png", "model_comparison.png", "roc.png",
           "training_fusion.png", "training_image.png", "training_text.png"]
STAGES = ["download", "prepare", "demo_encoder", "embed_text", "cache_images"] + [
    f"{stage}@{v}" for stage in ("train", "evaluate") for v in VARIANTS] + ["compare", "explain"]
TIMEOUT = 600


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1",
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.org",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.org")
    return env


def _call(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{output[-6000:]}"
    return done


def _run(cwd: Path, *args: str) -> str:
    """stdout and stderr together (DVC prints its progress on either)."""
    done = _call(cwd, *args)
    return done.stdout + done.stderr


def _run_stdout(cwd: Path, *args: str) -> str:
    return _call(cwd, *args).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git + DVC repository holding the pipeline's code with TINY parameters."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for package in ("stages", "cxrfusion"):
        shutil.copytree(ROOT / package, repo / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, repo / name)
    with open(ROOT / "params.yaml") as f:
        params = merge(yaml.safe_load(f), TINY)
    params["train"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(repo, "git", "init", "-q")
    _run(repo, str(VENV_BIN / "dvc"), "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "pipeline")
    return repo


@pytest.mark.slow
def test_dvc_repro_end_to_end(repo):
    dvc = str(VENV_BIN / "dvc")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["demo"]["studies"] == 60 and params["image"]["size"] == 32
    assert params["train"]["epochs"] == 1 and params["evaluate"]["bootstrap"] == 50

    _run(repo, dvc, "repro")

    comparison = json.loads((repo / "metrics/comparison.json").read_text())
    assert set(comparison["variants"]) == set(VARIANTS)
    assert comparison["test_studies"] > 0
    for variant in VARIANTS:
        m = comparison["variants"][variant]
        assert m["n"] == comparison["test_studies"]
        assert 0 <= m["auroc"] <= 1 and 0 <= m["f1"] <= 1
        assert sum(map(sum, m["confusion"])) == m["n"]
        for metric in ("auroc", "f1"):  # each model's own interval holds its point estimate
            low, high = m["ci95"][metric]["low"], m["ci95"][metric]["high"]
            assert 0 <= low <= m[metric] <= high <= 1
    assert set(comparison["differences"]) == {"fusion_minus_image", "fusion_minus_text"}
    for diff in comparison["differences"].values():
        for metric in ("auroc", "f1"):
            d = diff[metric]
            assert d["resamples"] == 50
            low, high = d["ci95"]["low"], d["ci95"]["high"]
            assert -1 <= low <= high <= 1
    for name in ("fusion_minus_image", "fusion_minus_text"):
        other = name.split("_minus_")[1]
        assert comparison["differences"][name]["auroc"]["difference"] == pytest.approx(
            comparison["variants"]["fusion"]["auroc"] - comparison["variants"][other]["auroc"])

    figures = repo / "metrics/figures"
    assert sorted(p.name for p in figures.iterdir()) == FIGURES
    for name in FIGURES:
        with Image.open(figures / name) as image:
            assert image.format == "PNG"
            image.load()  # decodes the whole file
            assert image.width > 100 and image.height > 100

    for variant in VARIANTS:
        test = json.loads((repo / f"metrics/{variant}/test.json").read_text())
        assert test["study"]["n"] == comparison["test_studies"]
        # compare scores the same studies, from predictions.csv, as evaluate did
        for key in ("n", "confusion", "accuracy", "f1", "auroc", "auprc"):
            assert test["study"][key] == comparison["variants"][variant][key], (variant, key)
        assert (repo / f"metrics/{variant}/predictions.csv").exists()
        assert (repo / f"models/{variant}/model.safetensors").exists()
        assert json.loads((repo / f"models/{variant}/history.json").read_text())[0]["epoch"] == 1
        assert (repo / f"metrics/{variant}/train/metrics.json").exists()
    explained = json.loads((repo / "metrics/explain.json").read_text())
    assert explained["variant"] == "fusion" and explained["test"]["studies"] == comparison["test_studies"]
    assert {"grid.png", "heatmaps.csv"} <= {p.name for p in (repo / "metrics/explain").iterdir()}
    for path in ("data/prepared/report.json", "features/images_report.json", "features/text.h5",
                 "features/images.h5", "models/demo_encoder", "dvc.lock"):
        assert (repo / path).exists(), path

    # nothing changed: every stage is skipped, nothing reruns
    again = _run(repo, dvc, "repro")
    assert "Running stage" not in again, again
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again, (stage, again)
    assert "Data and pipelines are up to date." in again
    assert json.loads(_run_stdout(repo, dvc, "status", "--json")) == {}
    assert "up to date" in _run(repo, dvc, "status")

    shown = json.loads(_run_stdout(repo, dvc, "metrics", "show", "--json"))
    files = shown[""]["data"]
    assert "metrics/comparison.json" in files
    assert files["metrics/comparison.json"]["data"]["test_studies"] == comparison["test_studies"]
    assert {f"metrics/{v}/test.json" for v in VARIANTS} <= set(files)
    assert "metrics/comparison.json" in _run(repo, dvc, "metrics", "show")

    # a changed parameter reruns only the stages that read it
    def stale_after(**changes) -> set:
        changed = copy.deepcopy(params)
        for dotted, value in changes.items():
            section, key = dotted.split("__")
            changed[section][key] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        return set(json.loads(_run_stdout(repo, dvc, "status", "--json")))

    assert stale_after(evaluate__bootstrap=60) == {"compare"}
    assert stale_after(evaluate__threshold=0.4) == {
        "evaluate@fusion", "evaluate@image", "evaluate@text", "compare", "explain"}
    # how images and reports are fed does not change what is learned: nothing to do
    assert stale_after(train__workers=3, train__in_memory_gb=8, text__batch_size=7,
                       text__nproc=2) == set()
    # the image baseline depends on no report setting, the text model on no image setting
    assert stale_after(text__max_length=128) == {"embed_text", "train@fusion", "train@text",
                                                 "explain"}
    assert stale_after(image__size=48) == {"cache_images", "train@fusion", "train@image"}
    assert stale_after(image__fit="crop") == {"cache_images", "train@fusion", "train@image"}
    assert stale_after(model__hidden=64) == {"train@fusion", "train@image", "train@text"}

    # the same parameters again, every stage forced to rerun: byte-identical metrics
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    metrics = sorted(str(p.relative_to(repo)) for p in (repo / "metrics").rglob("*.json")) + [
        "data/prepared/report.json", "features/images_report.json"]
    assert len(metrics) >= 2 + 2 * len(VARIANTS)
    first = {path: (repo / path).read_bytes() for path in metrics}
    forced = _run(repo, dvc, "repro", "--force")
    assert all(f"Running stage '{stage}'" in forced for stage in STAGES), forced
    for path in metrics:
        assert (repo / path).read_bytes() == first[path], path
