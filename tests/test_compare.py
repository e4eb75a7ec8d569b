"""Stage `compare` (stages/compare.py) on synthetic runs: every run of params.runs written as
evaluate and train write them (test_bootstrap_groups.write_runs), then comparison.json checked
against numbers computed here from the same files (sklearn, by hand), comparison.md against
comparison.json, and the refusals' messages. The figures are drawn in one test only."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, recall_score, roc_auc_score

from cxrfusion.common import PipelineError
from cxrfusion.formats import Run
from cxrfusion.statistics import delong
from stages.compare import compare
from cxrfusion import figures
from test_bootstrap_groups import FIGURE_FUNCTIONS, prepared_table, write_runs

N = 80
METRICS = ("auroc", "auprc", "f1", "sensitivity_at_specificity")
PAIRS = {"fusion_minus_image": ("fusion", "image"), "fusion_minus_text": ("fusion", "text"),
         "text_minus_image": ("text", "image")}
OUTPUTS = ("metrics/comparison.json", "metrics/comparison.md", "metrics/figures")


@pytest.fixture
def no_figures(monkeypatch):
    """compare without drawing (test_compare_draws_the_four_figures draws them)."""
    for name in FIGURE_FUNCTIONS:
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: None)


@pytest.fixture
def small(params) -> dict:
    """TINY's params (seeds [0, 1], both text inputs) with 100 bootstrap resamples."""
    params["evaluate"]["bootstrap"] = 100
    return params


def _labels(n: int = N, seed: int = 0) -> np.ndarray:
    y = (np.random.default_rng(seed).random(n) < 0.4).astype(int)
    y[:2] = (0, 1)
    return y


def _project(p: dict, n: int = N, images_per_study=1, patients=None) -> tuple:
    """Every run of `p` and data/prepared for `n` test studies; (uids, labels, predictions)."""
    uids, labels = np.arange(1000, 1000 + n), _labels(n)
    written = write_runs(p, uids, labels, images_per_study)
    prepared_table(uids, labels, patients, next(iter(written.values())))
    return uids, labels, written


def _run(variant: str, seed: int, text_input: str) -> Run:
    return Run(variant, seed, None if variant == "image" else text_input)


def _study_probs(run: Run) -> pd.Series:
    """A run's study probabilities by hand: the mean over each study's images, by uid."""
    images = pd.read_csv(run.predictions)
    return images.groupby("uid")["probability"].mean().sort_index()


def _test_json(run: Run) -> dict:
    return json.loads((run.test_metrics).read_text())


def _nothing_written() -> None:
    for path in OUTPUTS:
        assert not Path(path).exists(), path


# --- comparison.json ------------------------------------------------------------------------------

def test_comparison_json_matches_a_direct_computation(workdir, small, no_figures):
    seeds, inputs = small["train"]["seeds"], small["text"]["inputs"]
    uids, labels, _ = _project(small)
    result = compare(small)
    written = json.loads(Path("metrics/comparison.json").read_text())
    assert written == result  # the file is what compare returns (no nan with two seeds)
    assert written["test_studies"] == N and written["seeds"] == len(seeds)
    assert written["resampled"] == "studies" and written["resampled_units"] == N
    assert written["bootstrap"] == {"resamples": 100, "seed": small["evaluate"]["seed"]}
    assert set(written["models"]) == set(inputs) == set(written["differences"])
    per_seed = {f"seed-{s}" for s in seeds}

    for text_input in inputs:
        models = written["models"][text_input]
        assert set(models) == {"fusion", "image", "text"}
        for variant, m in models.items():
            assert set(m) == set(METRICS) | {"brier", "ece"}
            for metric in METRICS:
                assert set(m[metric]) == {"mean", "sd", "low", "high"} | per_seed, metric
            for metric in ("brier", "ece"):
                assert set(m[metric]) == {"mean", "sd"} | per_seed, metric
            direct = {metric: [] for metric in (*METRICS, "brier", "ece")}
            for s in seeds:
                run = _run(variant, s, text_input)
                probs, t = _study_probs(run), _test_json(run)
                assert probs.index.tolist() == uids.tolist()
                direct["auroc"].append(roc_auc_score(labels, probs))
                direct["auprc"].append(average_precision_score(labels, probs))
                direct["f1"].append(f1_score(labels, probs >= t["threshold"]))
                direct["sensitivity_at_specificity"].append(
                    recall_score(labels, probs >= t["at_specificity"]["threshold"]))
                direct["brier"].append(t["study"]["brier"])
                direct["ece"].append(t["study"]["ece"])
            for metric, values in direct.items():
                where = (text_input, variant, metric)
                for s, v in zip(seeds, values):
                    assert m[metric][f"seed-{s}"] == pytest.approx(v, abs=1e-12), where
                assert m[metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12), where
                assert m[metric]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12), where
            for metric in METRICS:
                s = m[metric]
                assert 0 <= s["low"] <= s["mean"] <= s["high"] <= 1, (text_input, variant, metric)

        differences = written["differences"][text_input]
        assert set(differences) == set(PAIRS)
        for name, (a, b) in PAIRS.items():
            d = differences[name]
            assert set(d) == set(METRICS) | {"delong_p"}
            for metric in METRICS:
                assert set(d[metric]) == {"mean", "low", "high", "excludes_zero"} | per_seed
                ma, mb = models[a][metric], models[b][metric]
                assert d[metric]["mean"] == pytest.approx(ma["mean"] - mb["mean"], abs=1e-12)
                for s in seeds:
                    assert d[metric][f"seed-{s}"] == pytest.approx(
                        ma[f"seed-{s}"] - mb[f"seed-{s}"], abs=1e-12)
                assert d[metric]["low"] <= d[metric]["mean"] <= d[metric]["high"]
                assert d[metric]["excludes_zero"] is bool(d[metric]["low"] > 0
                                                          or d[metric]["high"] < 0)
            pa = np.stack([_study_probs(_run(a, s, text_input)) for s in seeds])
            pb = np.stack([_study_probs(_run(b, s, text_input)) for s in seeds])
            assert set(d["delong_p"]) == {"seed_averaged"} | per_seed
            assert d["delong_p"]["seed_averaged"] == pytest.approx(
                delong(labels, pa.mean(0), pb.mean(0))["p"], rel=1e-12)
            for s, x, y in zip(seeds, pa, pb):
                assert d["delong_p"][f"seed-{s}"] == pytest.approx(delong(labels, x, y)["p"],
                                                                   rel=1e-12)
    # the synthetic runs hold differences clear of zero either way, and some not
    auroc = {(i, name): written["differences"][i][name]["auroc"] for i in inputs for name in PAIRS}
    assert auroc[inputs[0], "fusion_minus_image"]["low"] > 0
    assert auroc["indication", "text_minus_image"]["high"] < 0
    assert {d["excludes_zero"] for d in auroc.values()} == {True, False}

    # the image model reads no report: one set of runs, the same numbers for every text input
    first, second = (written["models"][i] for i in inputs)
    assert first["image"] == second["image"]
    assert first["fusion"]["auroc"]["seed-0"] != second["fusion"]["auroc"]["seed-0"]
    assert (written["differences"][inputs[0]]["fusion_minus_image"]
            != written["differences"][inputs[1]]["fusion_minus_image"])


def test_compare_scores_studies_not_images(workdir, small, no_figures):
    """Several images a study: a study's score is the mean probability of its images."""
    counts = np.random.default_rng(3).integers(1, 5, N)
    uids, labels, written = _project(small, images_per_study=counts)
    result = compare(small)
    assert result["test_studies"] == N and result["resampled_units"] == N
    run = Run("fusion", 1, small["text"]["inputs"][1])
    images = written[run]
    assert len(images) == counts.sum() > N
    by_study = images.groupby("uid")["probability"]
    mean, first = by_study.mean().loc[uids], by_study.first().loc[uids]
    got = result["models"][run.text_input]["fusion"]["auroc"]["seed-1"]
    assert got == pytest.approx(roc_auc_score(labels, mean), abs=1e-12)
    # the test can tell: scoring images, or a study's first image, gives another AUROC
    assert abs(got - roc_auc_score(images["label"], images["probability"])) > 1e-3
    assert abs(got - roc_auc_score(labels, first)) > 1e-3
    f1 = result["models"][run.text_input]["fusion"]["f1"]["seed-1"]
    assert f1 == pytest.approx(f1_score(labels, mean >= _test_json(run)["threshold"]))


# --- comparison.md --------------------------------------------------------------------------------

NUMBER = r"([+-]?\d+\.\d{3})"
MODEL_CELL = re.compile(rf"^{NUMBER} ± {NUMBER} \[{NUMBER}, {NUMBER}\]$")
DIFF_CELL = re.compile(rf"^{NUMBER} \[{NUMBER}, {NUMBER}\]$")
MEAN_SD = re.compile(rf"^{NUMBER} ± {NUMBER}$")


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of `text`: their rows below the header rule, each a list of cells."""
    tables, rows, header = [], None, False
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if rows is None:
                rows, header = [cells], True
            elif header:
                assert set("".join(cells)) <= {"-", " "}, line  # the rule below the header
                header = False
            else:
                rows.append(cells)
        elif rows is not None:
            tables.append(rows)
            rows = None
    if rows is not None:
        tables.append(rows)
    return tables


def _close(cell: str, value: float) -> None:
    assert float(cell) == pytest.approx(value, abs=5e-4 + 1e-9), (cell, value)


def test_comparison_md_rows_equal_comparison_json(workdir, small, no_figures):
    _project(small)
    result = compare(small)
    inputs = small["text"]["inputs"]
    text = Path("metrics/comparison.md").read_text()
    assert f"Test studies: {N}; seeds per model: 2 (0, 1)" in text
    models, differences = _tables(text)
    header = models[0]
    assert header[:2] == ["text input", "model"] and header[-2:] == ["Brier", "ECE"]
    assert header[2:6] == ["AUROC", "AUPRC", "F1", "Sensitivity at 90% specificity"]
    rows = models[1:]
    # the image model once, then text only and fusion for each input
    assert [(r[0], r[1]) for r in rows] == [("— (reads no report)", "image only")] + [
        (i, v) for i in inputs for v in ("text only", "fusion")]
    variant = {"image only": "image", "text only": "text", "fusion": "fusion"}
    for row in rows:
        text_input = inputs[0] if row[1] == "image only" else row[0]
        m = result["models"][text_input][variant[row[1]]]
        for cell, metric in zip(row[2:6], METRICS):
            parsed = MODEL_CELL.match(cell)
            assert parsed, cell
            for got, key in zip(parsed.groups(), ("mean", "sd", "low", "high")):
                _close(got, m[metric][key])
        for cell, metric in zip(row[6:], ("brier", "ece")):
            parsed = MEAN_SD.match(cell)
            assert parsed, cell
            _close(parsed[1], m[metric]["mean"])
            _close(parsed[2], m[metric]["sd"])

    assert differences[0][:2] == ["text input", "difference"] and differences[0][-1] == "DeLong p"
    rows = differences[1:]
    names = {"fusion − image": "fusion_minus_image", "fusion − text": "fusion_minus_text",
             "text − image": "text_minus_image"}
    assert [(r[0], r[1]) for r in rows] == [(i, n) for i in inputs for n in names]
    for row in rows:
        d = result["differences"][row[0]][names[row[1]]]
        for cell, metric in zip(row[2:6], METRICS):
            parsed = DIFF_CELL.match(cell)
            assert parsed, cell
            assert all(g[0] in "+-" for g in parsed.groups()), cell  # signed
            for got, key in zip(parsed.groups(), ("mean", "low", "high")):
                _close(got, d[metric][key])
        assert float(row[6]) == float(f"{d['delong_p']['seed_averaged']:.3g}")


# --- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("change", ["a study fewer", "another study"])
def test_compare_refuses_runs_scored_on_other_studies(workdir, small, no_figures, change):
    uids, labels, written = _project(small)
    other = Run("image", 1)
    images = written[other]
    if change == "a study fewer":
        images = images[images["uid"] != uids[5]]
    else:  # as many studies, one of them another
        images = images.assign(uid=images["uid"].replace(uids[5], 99999))
    images.to_csv(other.predictions, index=False)
    with pytest.raises(PipelineError, match=r"^metrics/predictions/image/seed-1.csv scores other "
                                            r"test studies than metrics/predictions/fusion/"
                                            r"findings\+impression/seed-0.csv.*`dvc repro`"):
        compare(small)
    _nothing_written()


@pytest.mark.parametrize("missing", ["a seed", "test.json", "history.json"])
def test_compare_refuses_a_missing_run(workdir, small, no_figures, missing):
    """A seed of train.seeds never trained, a run not evaluated, a model folder without its
    history: named, with what to run, not averaged away (and no traceback)."""
    _project(small)
    if missing == "a seed":
        small["train"]["seeds"] = [0, 1, 2]
        path = "metrics/predictions/fusion/findings+impression/seed-2.csv"
    elif missing == "test.json":
        path = "metrics/test/text/indication/seed-1.json"
    else:
        path = "models/image/seed-0/history.json"
    if missing != "a seed":
        Path(path).unlink()
    with pytest.raises(PipelineError, match=rf"^{re.escape(path)} not found: run `dvc repro`"):
        compare(small)
    _nothing_written()


@pytest.mark.parametrize("abnormal", [0, 1, 80])
def test_compare_refuses_test_studies_without_two_of_each_label(workdir, small, no_figures,
                                                                abnormal):
    uids, labels = np.arange(N), np.zeros(N, int)
    labels[:abnormal] = 1
    write_runs(small, uids, labels)
    prepared_table(uids, labels)
    if abnormal in (0, N):
        message = (rf"every test study in metrics/predictions/fusion/findings\+impression/"
                   rf"seed-0.csv has label {labels[0]}: .*both classes.*split.test")
    else:  # AUROC is defined, DeLong's test (and a useful interval) is not
        message = (r"metrics/predictions/fusion/findings\+impression/seed-0.csv holds 1 "
                   r"abnormal and 79 normal test studies: .*two of each.*split.test")
    with pytest.raises(PipelineError, match=message):
        compare(small)
    _nothing_written()


# --- seeds ----------------------------------------------------------------------------------------

def test_adding_a_seed_adds_its_keys(workdir, small, no_figures):
    uids, labels, _ = _project(small)
    two = compare(small)
    small["train"]["seeds"] = [0, 1, 2]
    write_runs(small, uids, labels)  # seed 2's runs; seeds 0 and 1 rewritten as they were
    three = compare(small)
    assert (two["seeds"], three["seeds"]) == (2, 3)
    assert "seeds per model: 3 (0, 1, 2)" in Path("metrics/comparison.md").read_text()
    for text_input in small["text"]["inputs"]:
        for variant in ("fusion", "image", "text"):
            for metric in (*METRICS, "brier", "ece"):
                before = two["models"][text_input][variant][metric]
                after = three["models"][text_input][variant][metric]
                assert "seed-2" not in before and "seed-2" in after
                assert {k: after[k] for k in ("seed-0", "seed-1")} == \
                    {k: before[k] for k in ("seed-0", "seed-1")}
                values = [after[f"seed-{s}"] for s in (0, 1, 2)]
                assert after["mean"] == pytest.approx(np.mean(values), abs=1e-12)
                assert after["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        for d in three["differences"][text_input].values():
            assert set(d["delong_p"]) == {"seed_averaged", "seed-0", "seed-1", "seed-2"}
            assert {"seed-0", "seed-1", "seed-2"} <= set(d["auroc"])
    assert json.loads(Path("metrics/comparison.json").read_text()) == three


def test_one_seed(workdir, small, no_figures):
    small["train"]["seeds"] = [0]
    _project(small)
    result = compare(small)
    written = json.loads(Path("metrics/comparison.json").read_text())  # Python reads NaN
    assert written["seeds"] == 1
    for models in written["models"].values():
        for m in models.values():
            for metric in (*METRICS, "brier", "ece"):
                assert not {k for k in m[metric] if k.startswith("seed-")} - {"seed-0"}
                assert m[metric]["mean"] == m[metric]["seed-0"]
    for differences in written["differences"].values():
        for d in differences.values():
            assert set(d["delong_p"]) == {"seed_averaged", "seed-0"}
            assert d["delong_p"]["seed_averaged"] == d["delong_p"]["seed-0"]
            assert d["auroc"]["mean"] == pytest.approx(d["auroc"]["seed-0"], abs=1e-12)
    assert result["models"].keys() == written["models"].keys()
    # the table shows no spread over one seed, and never "nan"
    text = Path("metrics/comparison.md").read_text()
    assert "seeds per model: 1 (0)" in text and "nan" not in text.lower()


def test_one_seed_writes_strict_json(workdir, small, no_figures):
    small["train"]["seeds"] = [0]
    _project(small)
    compare(small)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    written = json.loads(Path("metrics/comparison.json").read_text(), parse_constant=refuse)
    assert written["models"]["indication"]["fusion"]["auroc"]["sd"] is None  # one seed: no spread


# --- figures --------------------------------------------------------------------------------------

def test_compare_draws_the_four_figures(workdir, small):
    from PIL import Image

    _project(small, n=60, images_per_study=2)
    compare(small)
    pngs = sorted(p.name for p in Path("metrics/figures").iterdir())
    assert pngs == sorted(f"{name}.png" for name in ("forest", "roc", "reliability",
                                                     "training_curves"))
    for name in pngs:
        with Image.open(Path("metrics/figures") / name) as image:
            assert image.format == "PNG" and min(image.size) > 100, name
    assert sorted(p.name for p in Path("metrics").iterdir()) == [
        "comparison.json", "comparison.md", "figures", "predictions", "test"]  # no temporaries
    assert len(FIGURE_FUNCTIONS) == len(pngs)
