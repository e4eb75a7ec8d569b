"""End to end: `dvc repro` of the whole pipeline on a tiny demo, in a temporary git repository.

The tiny demo trains every run dvc.yaml's matrix stages ask for: each variant once per seed of
TINY's train.seeds, fusion and text once per text input."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY, merge
from PIL import Image

from cxrfusion import params as params_mod
from cxrfusion.formats import Run

VENV_BIN = Path(sys.executable).parent
VARIANTS = ("fusion", "image", "text")
PAIRS = ("fusion_minus_image", "fusion_minus_text", "text_minus_image")
FIGURES = ["forest.png", "reliability.png", "roc.png", "training_curves.png"]
SEED_METRICS = ("auroc", "auprc", "sensitivity_at_specificity", "sensitivity", "specificity",
                "f1", "brier", "ece")  # each with an interval
TIMEOUT = 600


def runs(p: dict) -> list[Run]:
    """The runs a params.yaml's parameters (a dict: this file writes params.yaml) ask for."""
    return params_mod.runs(params_mod.built(p))


def stage_names(p: dict) -> list[str]:
    """Every stage dvc.yaml expands to with these parameters, in pipeline order."""
    every = runs(p)
    return (["download", "prepare", "demo_encoder"]
            + [f"embed_text@{i}" for i in p["text"]["inputs"]] + ["cache_images"]
            + [f"train_{r.variant}@{r.key}" for r in every] + ["evaluate", "compare", "explain",
                                                                   "report"])


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
    return make_repo(tmp_path)


def make_repo(tmp_path: Path) -> Path:
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


def _leaves(tree, kinds) -> list:
    """The values of a nested dict that are of `kinds` (bool excluded)."""
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _leaves(v, kinds)]
    return [tree] if isinstance(tree, kinds) and not isinstance(tree, bool) else []


def _check_comparison(repo: Path, params: dict) -> dict:
    """comparison.json: per text input, each variant's metrics over seeds and the paired
    differences, consistent with each run's test.json."""
    comparison = json.loads((repo / "metrics/comparison.json").read_text())
    seeds, inputs = params["train"]["seeds"], params["text"]["inputs"]
    assert set(comparison) == {"test_studies", "validation_studies", "resampled",
                               "resampled_units", "seeds", "threshold", "specificity",
                               "bootstrap", "ece_bins", "question", "models", "differences"}
    assert comparison["test_studies"] > 0 and comparison["seeds"] == len(seeds) == 2
    assert comparison["resampled"] == "studies"
    assert comparison["resampled_units"] == comparison["test_studies"]
    assert comparison["threshold"] == "youden" and comparison["specificity"] == 0.9
    assert comparison["bootstrap"] == {"resamples": 240, "seed": 0, "validation_resampled": True,
                                       "level": 0.95}
    assert comparison["question"]["primary"] == "fusion-image/indication"
    assert len(comparison["question"]["family"]) == 6
    assert set(comparison["models"]) == set(comparison["differences"]) == set(inputs)
    tests = {run: json.loads((repo / run.test_metrics).read_text()) for run in runs(params)}
    per_seed = [f"seed-{s}" for s in seeds]
    for text_input in inputs:
        models = comparison["models"][text_input]
        assert set(models) == set(VARIANTS)
        for variant, m in models.items():
            assert set(m) == set(SEED_METRICS) | {"ece_floor"}
            mine = [tests[Run(variant, s, None if variant == "image" else text_input)]
                    for s in seeds]
            for metric in SEED_METRICS:
                s = m[metric]
                assert set(s) == {"mean", "sd", "low", "high", *per_seed}
                values = [s[k] for k in per_seed]
                assert s["mean"] == pytest.approx(np.mean(values))
                assert s["sd"] == pytest.approx(np.std(values, ddof=1))
                assert 0 <= s["low"] <= s["high"] <= 1
            # each seed's numbers are its run's, as evaluate scored it
            for key, t in zip(per_seed, mine):
                assert m["auroc"][key] == pytest.approx(t["study"]["auroc"], abs=1e-9)
                assert m["auprc"][key] == pytest.approx(t["study"]["auprc"], abs=1e-9)
                assert m["f1"][key] == pytest.approx(t["study"]["f1"], abs=1e-9)
                assert m["sensitivity_at_specificity"][key] == pytest.approx(
                    t["sensitivity_at_specificity"]["sensitivity"], abs=1e-9)
                for metric, saved in (("sensitivity", "recall"), ("specificity", "specificity"),
                                      ("brier", "brier"), ("ece", "ece")):
                    assert m[metric][key] == pytest.approx(t["study"][saved], abs=1e-12)
        differences = comparison["differences"][text_input]
        assert set(differences) == set(PAIRS)
        for name, diff in differences.items():
            a, b = name.split("_minus_")
            assert set(diff) == set(SEED_METRICS) | {"delong"}
            for metric in SEED_METRICS:
                d = diff[metric]
                assert d["mean"] == pytest.approx(models[a][metric]["mean"]
                                                  - models[b][metric]["mean"])
                for key in per_seed:
                    assert d[key] == pytest.approx(models[a][metric][key] - models[b][metric][key])
                assert -1 <= d["low"] <= d["high"] <= 1
            auroc = diff["auroc"]
            assert (auroc["p"] < 0.05) == (auroc["low"] > 0 or auroc["high"] < 0)
            assert auroc["verdict"] in ("higher", "lower", "equivalent", "inconclusive")
            assert set(diff["delong"]) == {"ensemble", *per_seed}
            assert all(0 <= d["p"] <= 1 for d in diff["delong"].values())
    # the image model reads no report: the same runs under every text input
    first, other = (comparison["models"][i]["image"] for i in inputs)
    for metric in SEED_METRICS:
        assert [first[metric][k] for k in per_seed] == [other[metric][k] for k in per_seed]
    return comparison


@pytest.mark.slow
def test_dvc_repro_end_to_end(repo):
    dvc = str(VENV_BIN / "dvc")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["demo"]["studies"] == 60 and params["image"]["size"] == 32
    assert params["train"]["epochs"] == 1 and params["compare"]["bootstrap"] == 240
    assert params["train"]["seeds"] == [0, 1]
    assert params["text"]["inputs"] == ["findings+impression", "indication"]
    every = runs(params)
    assert len(every) == 10  # image x 2 seeds, fusion and text x 2 inputs x 2 seeds
    stages = stage_names(params)

    _run(repo, dvc, "repro")

    comparison = _check_comparison(repo, params)
    table = (repo / "metrics/comparison.md").read_text()
    assert table.count("\n| ") >= 1 + 6 + 1 + 5 + 1 + 6  # Table 1, 2 and 3: headers and rows
    for name in params["text"]["inputs"] + ["fusion", "image only", "text only", "AUROC"]:
        assert name in table

    figures = repo / "metrics/figures"
    assert sorted(p.name for p in figures.iterdir()) == FIGURES
    for name in FIGURES:
        with Image.open(figures / name) as image:
            assert image.format == "PNG"
            image.load()  # decodes the whole file
            assert image.width > 100 and image.height > 100

    # every run: its model, its training log and its evaluation, under its own folders
    for run in every:
        test = json.loads((repo / run.test_metrics).read_text())
        assert test["run"] == {"variant": run.variant, "seed": run.seed,
                               "text_input": run.text_input}
        assert test["study"]["n"] == comparison["test_studies"]
        assert test["threshold_rule"] == "youden" and 0 <= test["threshold"] < 1
        assert test["sensitivity_at_specificity"]["specificity"] == 0.9
        assert (repo / run.predictions).exists() and (repo / run.validation).exists()
        for curve in ("roc", "pr", "confusion"):
            assert (repo / run.curve(curve)).exists(), (run, curve)
        assert (repo / run.models / "model.safetensors").exists()
        config = json.loads((repo / run.models / "model.json").read_text())
        assert config["seed"] == run.seed and config["text_input"] == run.text_input
        assert json.loads((repo / run.models / "history.json").read_text())[0]["epoch"] == 1
        assert (repo / run.train_log / "metrics.json").exists()
    explained = json.loads((repo / "metrics/explain.json").read_text())
    explained_run = Run("fusion", 0, "findings+impression")  # explain.model_seed, text_input: null
    assert (explained["variant"] == "fusion"
            and explained["test"]["studies"] == comparison["test_studies"])
    assert explained["model"] == str(explained_run.models) and explained["seed"] == 0
    assert explained["threshold"] == json.loads(
        (repo / explained_run.test_metrics).read_text())["threshold"]
    assert {"grid.png", "heatmaps.csv"} <= {p.name for p in (repo / "metrics/explain").iterdir()}
    for path in ["data/prepared/report.json", "features/images_report.json", "features/images.h5",
                 "models/demo_encoder", "dvc.lock"] + [
                 f"features/text/{i}.h5" for i in params["text"]["inputs"]]:
        assert (repo / path).exists(), path
    assert not (repo / "features/text.h5").exists()  # one cache per text input
    assert not list((repo / "checkpoints").glob("*.pt"))  # every run finished: none left
    locked = set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert locked == set(stages)

    # nothing changed: every stage is skipped, nothing reruns
    again = _run(repo, dvc, "repro")
    assert "Running stage" not in again, again
    for stage in stages:
        assert f"Stage '{stage}' didn't change, skipping" in again, (stage, again)
    assert "Data and pipelines are up to date." in again
    assert json.loads(_run_stdout(repo, dvc, "status", "--json")) == {}
    assert "up to date" in _run(repo, dvc, "status")

    # DVC's table: the headline file only, 30 numbers or fewer; the rest by path
    shown = json.loads(_run_stdout(repo, dvc, "metrics", "show", "--json"))
    files = shown[""]["data"]
    assert list(files) == ["metrics/summary.json"]
    summary = files["metrics/summary.json"]["data"]
    numbers = _leaves(summary, (int, float))
    assert len(numbers) <= 30 and summary["image"]["auroc"] == pytest.approx(
        comparison["models"]["indication"]["image"]["auroc"]["mean"])
    for text_input in params["text"]["inputs"]:
        d = comparison["differences"][text_input]["fusion_minus_image"]["auroc"]
        assert summary[text_input]["fusion-image"] == pytest.approx(
            {k: d[k] for k in ("mean", "low", "high", "verdict")})
    by_path = json.loads(_run_stdout(repo, dvc, "metrics", "show", "--json",
                                     "metrics/comparison.json", "metrics/test"))[""]["data"]
    assert by_path["metrics/comparison.json"]["data"]["test_studies"] == comparison["test_studies"]
    assert {str(run.test_metrics) for run in every} <= set(by_path)

    # a changed parameter reruns only the stages that read it
    def stale_after(**changes) -> set:
        changed = copy.deepcopy(params)
        for dotted, value in changes.items():
            section, key = dotted.split("__")
            changed[section][key] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        stale = set(json.loads(_run_stdout(repo, dvc, "status", "--json")))
        assert "report" in stale  # it lists every parameter that differs: it reads them all
        return stale - {"report"}

    def named(*prefixes: str) -> set:
        return {s for s in stages if s.startswith(prefixes)}

    assert stale_after(compare__bootstrap=300) == {"compare"}
    assert stale_after(compare__margin=0.03, compare__primary="fusion-text/indication") == {
        "compare"}
    # the thresholds are chosen in evaluate: the runs' evaluation and the comparison of them
    # (explain follows through the evaluations it reads, below)
    assert stale_after(evaluate__threshold=0.4) == {"evaluate", "compare"}
    assert stale_after(evaluate__threshold="max_f1") == {"evaluate", "compare"}
    assert stale_after(evaluate__specificity=0.8) == {"evaluate", "compare"}
    # how images and reports are fed does not change what is learned: nothing to do
    assert stale_after(train__workers=3, train__in_memory_gb=8, text__batch_size=7,
                       text__nproc=2) == set()
    # the image baseline depends on no report setting, the text model on no image setting
    assert stale_after(text__max_length=128) == named("embed_text@", "train_fusion@",
                                                      "train_text@") | {"explain"}
    assert stale_after(image__size=48) == {"cache_images"} | named("train_fusion@", "train_image@")
    assert stale_after(image__fit="crop") == {"cache_images"} | named("train_fusion@",
                                                                       "train_image@")
    assert stale_after(model__hidden=64) == named("train_")
    assert stale_after(model__standardise_text=False) == named("train_fusion@", "train_text@")
    # the options of issue 18: augmentation and the CNN's rate reach the models with a CNN only
    cnn_runs = named("train_fusion@", "train_image@")
    assert stale_after(train__augment="affine") == cnn_runs
    assert stale_after(augment__rotation=5) == cnn_runs
    assert stale_after(train__lr_backbone=0.001) == cnn_runs
    assert stale_after(model__fusion="gated") == named("train_")
    assert stale_after(model__shared_dim=64) == named("train_")
    # image.size auto follows the backbone: the cache reads it
    assert stale_after(model__backbone="test_efficientnet") == {"cache_images"} | cnn_runs
    # another seed: its own train stages (never run), the existing ones up to date; evaluate
    # scores every run again (a second each)
    more = {**params, "train": {**params["train"], "seeds": [0, 1, 2]}}
    new = set(stage_names(more)) - set(stages)
    assert new == {f"train_{r.variant}@{r.key}" for r in runs(more) if r.seed == 2}
    assert len(new) == 5
    assert stale_after(train__seeds=[0, 1, 2]) == new | {"evaluate", "compare", "explain"}
    # another text input: prepare keeps its fields, and its embedding and runs are new
    wider = {**params, "text": {**params["text"], "inputs": ["findings+impression", "indication",
                                                            "impression"]}}
    new = set(stage_names(wider)) - set(stages)
    assert new == {"embed_text@impression"} | {f"train_{r.variant}@{r.key}" for r in runs(wider)
                                               if r.text_input == "impression"}
    assert stale_after(text__inputs=wider["text"]["inputs"]) == new | {"prepare", "evaluate",
                                                                       "compare", "explain"}

    # the same parameters again, every stage forced to rerun: byte-identical metrics
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert json.loads(_run_stdout(repo, dvc, "status", "--json")) == {}
    metrics = sorted(str(p.relative_to(repo)) for p in (repo / "metrics").rglob("*.json")) + [
        "data/prepared/report.json", "features/images_report.json", "metrics/comparison.md",
        "metrics/report.md"]
    assert len(metrics) >= 2 + 2 * len(every)
    first = {path: (repo / path).read_bytes() for path in metrics}
    forced = _run(repo, dvc, "repro", "--force")
    assert all(f"Running stage '{stage}'" in forced for stage in stages), forced
    for path in metrics:
        assert (repo / path).read_bytes() == first[path], path

    # a changed threshold: once the evaluations are redone, explain (which reads the explained
    # run's) is stale too, beside compare; no model is trained again. (`dvc status` lists only
    # the stages whose own inputs changed; the rest would follow.)
    assert stale_after(evaluate__threshold=0.4) == {"evaluate", "compare"}
    redone = _run(repo, dvc, "repro", "evaluate")
    assert {s for s in stages if f"Running stage '{s}'" in redone} == {"evaluate"}, redone
    test = json.loads((repo / explained_run.test_metrics).read_text())
    assert test["threshold"] == 0.4 and test["threshold_rule"] == "fixed"
    assert set(json.loads(_run_stdout(repo, dvc, "status", "--json"))) == {
        "compare", "explain", "report"}  # the report lists the changed threshold
