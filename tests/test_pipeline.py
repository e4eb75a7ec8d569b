"""End to end: the whole pipeline on a tiny demo, in a temporary git + DVC repository, and
README's two commands in either order on another machine.

One run serves every test here (the module's `demo` fixture, tests/repos.py's
demo_repository): the checkout with TINY's parameters and one epoch, every stage run by its
own command and recorded by `dvc commit`, committed. It trains every run dvc.yaml's matrix
stages ask for: each variant once per seed of TINY's train.seeds, fusion and text once per text
input. Tests that change files work on a copy. `dvc repro` runs evaluate here (after a changed
threshold), and the whole pipeline in tests/test_mimic.py."""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from repos import (
    DVC,
    OTHER_ROUNDING,
    VENV_BIN,
    demo_repository,
    dvc,
    pipeline_commands,
    remake,
)
from repos import run as _run
from repos import run_stdout as _run_stdout

from cxrfusion import formats
from cxrfusion import params as params_mod
from cxrfusion.formats import Run

pytestmark = pytest.mark.pipeline
VARIANTS = params_mod.VARIANTS
row = params_mod.row
FIGURES = ["forest.png", "reliability.png", "roc.png", "training_curves.png"]
SEED_METRICS = ("auroc", "auprc", "sensitivity_at_specificity", "sensitivity", "specificity",
                "f1", "brier", "ece")  # each with an interval
# the suite's checks of the workspace: its tests that compare the committed outputs with the
# checkout (marked `committed`), and that every path the docs name exists
WORKSPACE_CHECKS = (["-m", "committed", "tests/test_readme.py", "tests/test_lock.py",
                     "tests/test_charts.py"], ["tests/test_paths.py"])


def runs(p: dict) -> list[Run]:
    """The runs a params.yaml's parameters (a dict: this file writes params.yaml) ask for."""
    return formats.runs(params_mod.built(p))


def stage_names(p: dict) -> list[str]:
    """Every stage dvc.yaml expands to with these parameters, in pipeline order."""
    every = runs(p)
    return list(dict.fromkeys(  # an arm trained once tunes in its train stage: named once
        ["download", "prepare", "demo_encoder"]
        + [f"embed_text@{i}" for i in p["text"]["inputs"]]
        + [f"shuffle_reports@{i}" for i in p["text"]["inputs"]] + ["cache_images"]
        + ["demo_image_encoder"] + [f"embed_images@{a}" for a in p["frozen_image"]["encoders"]]
        + [replace(r, candidate=0).stage for r in every]  # tune_<arm>
        + [r.stage for r in every]
        + ["evaluate", "compare", "explain", "study_report"]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo repository, run once for the module; read it, or copy it to change it."""
    return demo_repository(tmp_path_factory.mktemp("demo") / "repo")


def _params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def _copy(repo: Path, to: Path) -> Path:
    """The whole repository, git history, DVC cache and outputs included."""
    shutil.copytree(repo, to, symlinks=True)
    return to


def _status(repo: Path) -> dict:
    """`dvc status --json` in this process (DVC's own start-up once, not once a call): the
    stages whose dependencies or outputs differ from dvc.lock."""
    from dvc.repo import Repo

    with Repo(str(repo)) as project:
        found = project.status()
    # named "dvc.yaml:stage", the file's path relative to this process's folder
    return {name.split(":")[-1]: value for name, value in found.items()}


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
    assert len(comparison["question"]["family"]) == 10  # the primary, its placebo, 8 secondaries
    assert set(comparison["models"]) == set(comparison["differences"]) == set(inputs)
    tests = {run: json.loads((repo / run.test_metrics).read_text()) for run in runs(params)}
    per_seed = [f"seed-{s}" for s in seeds]
    for text_input in inputs:
        models = comparison["models"][text_input]
        assert set(models) == set(params_mod.arms(params))
        for variant, m in models.items():
            assert set(m) == set(SEED_METRICS) | {"ece_floor"}
            mine = [tests[Run.of(variant, s, text_input)] for s in seeds]
            # an arm trained once (the TF-IDF baseline): its one run, no seed, no sd
            keys = ["mean"] if row(variant).trained_once else per_seed
            for metric in SEED_METRICS:
                s = m[metric]
                assert set(s) == {"mean", "sd", "low", "high", *keys}
                values = [s[k] for k in keys]
                assert s["mean"] == pytest.approx(np.mean(values))
                if row(variant).trained_once:
                    assert s["sd"] is None
                else:
                    assert s["sd"] == pytest.approx(np.std(values, ddof=1))
                assert 0 <= s["low"] <= s["high"] <= 1
            # each seed's numbers are its run's, as evaluate scored it
            for key, t in zip(keys, mine):
                assert m["auroc"][key] == pytest.approx(t["study"]["auroc"], abs=1e-9)
                assert m["auprc"][key] == pytest.approx(t["study"]["auprc"], abs=1e-9)
                assert m["f1"][key] == pytest.approx(t["study"]["f1"], abs=1e-9)
                assert m["sensitivity_at_specificity"][key] == pytest.approx(
                    t["sensitivity_at_specificity"]["sensitivity"], abs=1e-9)
                for metric, saved in (("sensitivity", "recall"), ("specificity", "specificity"),
                                      ("brier", "brier"), ("ece", "ece")):
                    assert m[metric][key] == pytest.approx(t["study"][saved], abs=1e-12)
        differences = comparison["differences"][text_input]
        assert set(differences) == {params_mod.Comparison(a, b).key
                                    for a, b in params_mod.pairs(params)}
        for name, diff in differences.items():
            a, b = name.split("_minus_")
            assert set(diff) == set(SEED_METRICS) | {"delong"}
            for metric in SEED_METRICS:
                d = diff[metric]
                assert d["mean"] == pytest.approx(models[a][metric]["mean"]
                                                  - models[b][metric]["mean"])
                for key in per_seed:  # an arm trained once: its one run against each seed
                    assert d[key] == pytest.approx(models[a][metric].get(key, models[a][metric][
                        "mean"]) - models[b][metric].get(key, models[b][metric]["mean"]))
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


def test_the_demo_run_writes_every_output(demo):
    repo = demo
    params = _params(repo)
    assert params["demo"]["studies"] == 60 and params["image"]["size"] == 32
    assert params["train"]["epochs"] == 1 and params["compare"]["bootstrap"] == 240
    assert params["train"]["seeds"] == [0, 1]
    assert params["text"]["inputs"] == ["findings+impression", "indication"]
    every = runs(params)
    assert len(every) == 22  # image, image_frozen x 2 seeds; fusion, text, placebo,
    # fusion_frozen x 2 inputs x 2 seeds; the TF-IDF baseline x 2 inputs

    comparison = _check_comparison(repo, params)
    table = (repo / "metrics/comparison.md").read_text()
    assert table.count("\n| ") >= 1 + 12 + 1 + 9 + 1 + 12  # Table 1, 2 and 3: headers, rows
    for name in params["text"]["inputs"] + ["fusion", "image only", "text only",
                                            "placebo (shuffled reports)",
                                            "TF-IDF + logistic regression", "AUROC"]:
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
        if row(run.variant).trained_once:  # the TF-IDF baseline: its JSON, no epochs
            assert sorted(p.name for p in (repo / run.models).iterdir()) == ["params.json",
                                                                             "tfidf.json"]
            assert json.loads((repo / run.models / "params.json").read_text())["run"] == (
                run.record)
            continue
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
    for path in ["data/prepared/counts.json", "features/images_counts.json", "features/images.h5",
                 "models/demo_encoder", "dvc.lock"] + [
                 f"features/text/{i}.h5" for i in params["text"]["inputs"]]:
        assert (repo / path).exists(), path
    assert not (repo / "features/text.h5").exists()  # one cache per text input
    assert not list((repo / "checkpoints").glob("*.pt"))  # every run finished: none left
    locked = set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert locked == set(stage_names(params))


def test_nothing_changed_nothing_reruns(demo):
    stages = stage_names(_params(demo))
    again = dvc(demo, "repro")
    assert "Running stage" not in again, again
    for stage in stages:
        assert f"Stage '{stage}' didn't change, skipping" in again, (stage, again)
    assert "Data and pipelines are up to date." in again
    assert json.loads(_run_stdout(demo, DVC, "status", "--json")) == {}
    assert "up to date" in dvc(demo, "status")


def test_dvc_metrics_show_the_headline_and_the_rest_by_path(demo):
    """DVC's table: the headline file only, 60 numbers or fewer (each arm's AUROC, each
    declared row); the rest by path."""
    params = _params(demo)
    comparison = json.loads((demo / "metrics/comparison.json").read_text())
    shown = json.loads(_run_stdout(demo, DVC, "metrics", "show", "--json"))
    files = shown[""]["data"]
    assert list(files) == ["metrics/summary.json"]
    summary = files["metrics/summary.json"]["data"]
    numbers = _leaves(summary, (int, float))
    assert len(numbers) <= 60 and summary["image"]["auroc"] == pytest.approx(
        comparison["models"]["indication"]["image"]["auroc"]["mean"])
    for text_input in params["text"]["inputs"]:
        d = comparison["differences"][text_input]["fusion_minus_image"]["auroc"]
        assert summary[text_input]["fusion-image"] == pytest.approx(
            {k: d[k] for k in ("mean", "low", "high", "verdict")})
    by_path = json.loads(_run_stdout(demo, DVC, "metrics", "show", "--json",
                                     "metrics/comparison.json", "metrics/test"))[""]["data"]
    assert by_path["metrics/comparison.json"]["data"]["test_studies"] == comparison["test_studies"]
    assert {str(run.test_metrics) for run in runs(params)} <= set(by_path)


def test_a_changed_parameter_reruns_only_the_stages_that_read_it(demo):
    params = _params(demo)
    stages = stage_names(params)

    def stale_after(**changes) -> set:
        changed = copy.deepcopy(params)
        for dotted, value in changes.items():
            section, key = dotted.split("__")
            changed[section][key] = value
        (demo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        stale = set(_status(demo))
        assert "study_report" in stale  # it lists every parameter that differs: reads them all
        return stale - {"study_report"}

    def named(*prefixes: str) -> set:
        """The stages that start with a prefix; a train stage's parameters are its arm's tune
        stage's too (train_fusion@: tune_fusion@ as well). "train_": the networks' (the TF-IDF
        baseline reads none of their options)."""
        tuned = tuple(p.replace("train_", "tune_") for p in prefixes if p.startswith("train_"))
        return {s for s in stages if (s.startswith(prefixes + tuned) or s + "@" in tuned)
                and (not s.startswith("train_tfidf@") or "train_tfidf@" in prefixes)}

    original = (demo / "params.yaml").read_bytes()
    try:
        assert stale_after(compare__bootstrap=300) == {"compare"}
        assert stale_after(compare__margin=0.03,
                           compare__primary="fusion-text/indication") == {"compare"}
        # the thresholds are chosen in evaluate: the runs' evaluation and the comparison of them
        # (explain follows through the evaluations it reads:
        # test_a_changed_threshold_reruns_the_evaluation_alone)
        assert stale_after(evaluate__threshold=0.4) == {"evaluate", "compare"}
        assert stale_after(evaluate__threshold="max_f1") == {"evaluate", "compare"}
        assert stale_after(evaluate__specificity=0.8) == {"evaluate", "compare"}
        # how images and reports are fed does not change what is learned: nothing to do
        assert stale_after(train__workers=3, train__in_memory_gb=8, text__batch_size=7,
                           text__nproc=2) == set()
        # the image baseline depends on no report setting, the text model on no image setting
        assert stale_after(text__max_length=128) == named(
            "embed_text@", "train_fusion@", "train_text@", "train_fusion_frozen@") | {"explain"}
        # the placebo's permutation: its caches (their runs follow once they are rewritten)
        assert stale_after(placebo__seed=1) == named("shuffle_reports@")
        # the tuning's criterion: the tune stages alone, and the TF-IDF baseline's, which tunes
        # itself (with no grid their choice stays the same bytes, so no run follows)
        assert stale_after(tune__criterion="loss") == named("tune_", "train_tfidf@")
        assert stale_after(tfidf__c=0.5) == named("train_tfidf@")
        assert stale_after(image__size=48) == {"cache_images"} | named("train_fusion@",
                                                                        "train_image@")
        assert stale_after(image__fit="crop") == {"cache_images"} | named(
            "train_fusion@", "train_image@", "embed_images@")  # the frozen encoders fit too
        assert stale_after(model__hidden=64) == named("train_")
        assert stale_after(model__standardise_text=False) == named(
            "train_fusion@", "train_text@", "train_fusion_frozen@")
        # the options of issue 18: augmentation and the CNN's rate reach the models with a CNN
        cnn_runs = named("train_fusion@", "train_image@")
        assert stale_after(train__augment="affine") == cnn_runs
        assert stale_after(augment__rotation=5) == cnn_runs
        assert stale_after(train__lr_backbone=0.001) == cnn_runs
        assert stale_after(model__fusion="gated") == named("train_")
        assert stale_after(model__shared_dim=64) == named("train_")
        # image.size auto follows the backbone: the cache reads it
        assert stale_after(model__backbone="test_efficientnet") == {"cache_images"} | cnn_runs
        # another seed: its own train stages (never run), the existing ones up to date;
        # evaluate scores every run again (a second each)
        more = {**params, "train": {**params["train"], "seeds": [0, 1, 2]}}
        new = set(stage_names(more)) - set(stages)
        together = {r.stage for r in runs(more) if row(r.variant).seeds_together}
        assert new == {r.stage for r in runs(more) if r.seed == 2} - together
        # image; fusion (and its placebo) and text per input; TF-IDF none, and the frozen arms
        # none: one stage trains all their seeds, and trains them again
        assert len(new) == 5 and together == {"train_image_frozen@demo_vit",
                                               *(s for s in stages
                                                 if s.startswith("train_fusion_frozen@"))}
        assert stale_after(train__seeds=[0, 1, 2]) == new | together | {
            "evaluate", "compare", "explain"}
        # another text input: prepare keeps its fields, and its embedding and runs are new
        wider = {**params, "text": {**params["text"], "inputs": [
            "findings+impression", "indication", "impression"]}}
        new = set(stage_names(wider)) - set(stages)
        assert new == {"embed_text@impression", "shuffle_reports@impression"} | {
            stage for r in runs(wider) if r.text_input == "impression"
            for stage in (r.stage, replace(r, candidate=0).stage)}
        assert stale_after(text__inputs=wider["text"]["inputs"]) == new | {
            "prepare", "evaluate", "compare", "explain"}
    finally:
        (demo / "params.yaml").write_bytes(original)
    assert _status(demo) == {}


def test_every_stage_made_again_gives_the_same_bytes(demo, tmp_path):
    """The same parameters again, every output deleted and made again by its stage's command:
    every output has the hash dvc.lock recorded (models, caches and figures included: `dvc
    status` finds nothing to do), and the metrics are byte-identical."""
    repo = _copy(demo, tmp_path / "repo")
    params = _params(repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    metrics = sorted(str(p.relative_to(repo)) for p in (repo / "metrics").rglob("*.json")) + [
        "data/prepared/counts.json", "features/images_counts.json", "metrics/comparison.md",
        "metrics/study_report.md"]
    assert len(metrics) >= 2 + 2 * len(runs(params))
    first = {path: (repo / path).read_bytes() for path in metrics}
    stages = stage_names(params)
    for stage in stages:
        for out in lock[stage].get("outs", []):
            path = repo / out["path"]
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    commands = pipeline_commands(repo)
    assert set(commands) == set(stages)
    remake(repo, commands.values())
    assert _status(repo) == {}
    for path in metrics:
        assert (repo / path).read_bytes() == first[path], path


def test_a_tuning_grid_runs_through_dvc_and_each_first_seed_is_its_choice(demo, tmp_path):
    """A grid declared (two learning rates for every arm): the tune stages train each arm's
    candidates and the train stages take each arm's choice; every stage writes what dvc.yaml
    declares (`dvc commit` records it and `dvc status` then finds nothing to do); each first
    seed's run is its chosen candidate's and every run records the chosen rate; the study
    report tables the candidates and their cost."""
    repo = _copy(demo, tmp_path / "repo")
    params = _params(repo)
    params["tune"]["candidates"] = [{"train.lr": 0.01}, {"train.lr": 0.001}]
    params["tune"]["tfidf"] = [{"tfidf.c": 0.1}, {"tfidf.c": 10.0}]  # the baseline's, as many
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    every = runs(params)
    networks = [r for r in every if not row(r.variant).trained_once]
    tuned = {replace(r, candidate=0).stage for r in networks}
    assert {s for s in _status(repo) if s.startswith("tune_")} == tuned
    commands = pipeline_commands(repo)
    remake(repo, [c for name, c in commands.items() if name.startswith(("tune_", "train_"))
                  or name in ("evaluate", "compare", "explain", "study_report")])
    dvc(repo, "commit", "--force")
    assert _status(repo) == {}
    first = params["train"]["seeds"][0]
    choices = {r.arm: json.loads((repo / r.choice).read_text()) for r in every
               if r.seed in (first, None)}
    # image, image_frozen; fusion, its placebo, text, fusion_frozen, TF-IDF on each of 2 inputs
    assert len(choices) == 12
    for run in every:
        choice = choices[run.arm]
        assert [c["setting"] for c in choice["candidates"]] == params["tune"][
            "tfidf" if row(run.variant).trained_once else "candidates"]
        recorded = json.loads((repo / run.models / "params.json").read_text())
        if row(run.variant).trained_once:  # it reads tfidf.*, not train.*
            assert recorded["tfidf"]["c"] == choice["setting"]["tfidf.c"], run
            continue
        assert recorded["train"]["lr"] == choice["setting"]["train.lr"], run
        if run.seed == first:
            chosen = replace(run, candidate=choice["chosen"])
            assert (repo / run.models / "model.safetensors").read_bytes() == (
                repo / chosen.models / "model.safetensors").read_bytes(), run
    assert "Cost: 2 x 10 network arms = 20 candidate runs, 10 more than without a grid" in (
        repo / "metrics/study_report.md").read_text()


def test_a_changed_threshold_reruns_the_evaluation_alone(demo, tmp_path):
    """Once the evaluations are redone, explain (which reads the explained run's) is stale too,
    beside compare; no model is trained again. (`dvc status` lists only the stages whose own
    inputs changed; the rest would follow.)"""
    repo = _copy(demo, tmp_path / "repo")
    params = _params(repo)
    params["evaluate"]["threshold"] = 0.4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(_status(repo)) == {"evaluate", "compare", "study_report"}
    redone = dvc(repo, "repro", "evaluate")
    assert {s for s in stage_names(params) if f"Running stage '{s}'" in redone} == {"evaluate"}
    test = json.loads((repo / Run("fusion", 0, "findings+impression").test_metrics).read_text())
    assert test["threshold"] == 0.4 and test["threshold_rule"] == "fixed"
    assert set(_status(repo)) == {"compare", "explain", "study_report"}  # the report lists the
    # changed threshold


# the suite's checks of the workspace after a plain `dvc repro` (README's block as committed),
# then after `make repro`'s copy of the new table into README: in one process
CHECKS = f"""
import runpy, sys
import pytest
OPTIONS = ["-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
for checks in {WORKSPACE_CHECKS!r}:
    if pytest.main([*OPTIONS, *checks]):
        sys.exit(f"{{checks}} failed after a plain dvc repro")
sys.argv = ["cxrfusion.results", "README.md"]
runpy.run_module("cxrfusion.results", run_name="__main__", alter_sys=True)
if pytest.main([*OPTIONS, "-m", "committed", "tests/test_readme.py"]):
    sys.exit("test_readme failed after make repro's README")
"""


def test_the_workspace_checks_pass_after_a_repro_with_other_rounding(demo, tmp_path):
    """README's two commands in either order on another machine: the suite's checks of the
    workspace pass after a rerun whose numbers are not the committed ones, both as a plain
    `dvc repro` leaves it (README's block as committed) and as `make repro` does (the new table
    copied into README).

    The rerun is the evaluation and every stage after it, under other float rounding (ATen's
    scalar kernels, one thread), recorded in dvc.lock as `dvc repro` records it: those stages
    write every number the tables, README and the metrics hold, and another machine's rounding
    changes them there already (the premise, checked); training again under it would change
    the same files at several times the cost."""
    repo = _copy(demo, tmp_path / "repo")
    before = (repo / "metrics/predictions/image/seed-0.csv").read_bytes()
    commands = pipeline_commands(repo)
    downstream = list(commands)[-4:]  # in pipeline order: evaluate and the stages after it
    assert set(downstream) == {"evaluate", "compare", "explain", "study_report"}
    remake(repo, [commands[s] for s in downstream], extra_env=OTHER_ROUNDING)
    dvc(repo, "commit", "--force")
    assert _status(repo) == {}
    # the premise: other rounding, other outputs (else this test shows nothing)
    assert (repo / "metrics/predictions/image/seed-0.csv").read_bytes() != before
    _run(repo, str(VENV_BIN / "python"), "-c", CHECKS, extra_env=OTHER_ROUNDING)
