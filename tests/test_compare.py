"""Stage `compare` (stages/compare.py) on synthetic runs: every run of formats.runs written as
evaluate and train write them (test_bootstrap_groups.write_runs), then comparison.json checked
against numbers computed here from the same files (sklearn, by hand), comparison.md against
comparison.json, and the refusals' messages. The figures are drawn in one test only."""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    recall_score,
    roc_auc_score,
)
from test_bootstrap_groups import FIGURE_FUNCTIONS, prepared_table, write_runs

from cxrfusion import figures
from cxrfusion import params as params_mod
from cxrfusion import results as results_mod
from cxrfusion.common import PipelineError
from cxrfusion.formats import Run
from cxrfusion.metrics import MEASURES, calibration, sensitivity_at_specificity
from cxrfusion.results import sentence
from cxrfusion.statistics import SEED_METRICS, delong
from cxrfusion.verdicts import weighted_holm
from stages.compare import compare

N = 80
METRICS = SEED_METRICS
PAIRS = {"fusion_minus_image": ("fusion", "image"), "fusion_minus_text": ("fusion", "text"),
         "text_minus_image": ("text", "image"), "fusion_minus_shuffled": ("fusion", "shuffled"),
         "text_minus_tfidf": ("text", "tfidf"), "fusion_minus_tfidf": ("fusion", "tfidf"),
         "fusion_frozen@demo_vit_minus_image_frozen@demo_vit": ("fusion_frozen@demo_vit",
                                                                "image_frozen@demo_vit"),
         "fusion_minus_fusion_frozen@demo_vit": ("fusion", "fusion_frozen@demo_vit")}
ONCE = "tfidf"  # the arm trained once: one run, no seed
OUTPUTS = ("metrics/comparison.json", "metrics/summary.json", "metrics/comparison.md",
           "metrics/figures")
INFERENCE = {"p", "p_adjusted", "p_equivalence", "p_equivalence_adjusted",
             "equivalence_interval", "adjusted_interval", "role", "weight", "verdict", "design",
             "se", "df"}


@pytest.fixture
def no_figures(monkeypatch):
    """compare without drawing (test_compare_draws_the_four_figures draws them)."""
    for name in FIGURE_FUNCTIONS:
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: None)


@pytest.fixture
def small(params) -> dict:
    """TINY's params: seeds [0, 1], both text inputs, 240 bootstrap resamples (the fewest
    that let Holm over the default family of 6 reach 0.05)."""
    assert params.compare.bootstrap == 240
    return params


def _labels(n: int = N, seed: int = 0) -> np.ndarray:
    y = (np.random.default_rng(seed).random(n) < 0.4).astype(int)
    y[:2] = (0, 1)
    return y


def _project(p: params_mod.Params, n: int = N, images_per_study=1, patients=None) -> tuple:
    """Every run of `p` and data/prepared for `n` test studies; (uids, labels, predictions)."""
    uids, labels = np.arange(1000, 1000 + n), _labels(n)
    written = write_runs(p, uids, labels, images_per_study)
    prepared_table(uids, labels, patients, next(iter(written.values())))
    return uids, labels, written


def _run(variant: str, seed: int, text_input: str) -> Run:
    return Run.of(variant, seed, text_input)


def _seed_value(m: dict, key: str) -> float:
    """A model's value at seed `key`: an arm trained once has one run, standing for each."""
    return m.get(key, m["mean"])


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

def _direct(labels, probs, t: dict, specificity: float) -> dict:
    """One run's metrics by hand (sklearn, or the functions tested against it)."""
    called = probs >= t["threshold"]
    return {"auroc": roc_auc_score(labels, probs),
            "auprc": average_precision_score(labels, probs),
            "sensitivity_at_specificity": sensitivity_at_specificity(labels, probs, specificity),
            "sensitivity": recall_score(labels, called),
            "specificity": recall_score(1 - labels, ~called),
            "f1": f1_score(labels, called),
            "brier": brier_score_loss(labels, probs),
            "ece": calibration(labels, probs)["ece"]}


def test_comparison_json_matches_a_direct_computation(workdir, small, no_figures):
    seeds, inputs = small.train.seeds, small.text.inputs
    uids, labels, _ = _project(small)
    result = compare(small)
    written = json.loads(Path("metrics/comparison.json").read_text())
    assert written == result  # the file is what compare returns (no nan with two seeds)
    assert written["test_studies"] == N == written["validation_studies"]
    assert written["seeds"] == len(seeds) and written["ece_bins"] == 5
    assert written["resampled"] == "studies" and written["resampled_units"] == N
    assert written["bootstrap"] == {"resamples": 240, "seed": small.compare.seed,
                                    "validation_resampled": True, "level": 0.95}
    assert set(written["models"]) == set(inputs) == set(written["differences"])
    per_seed = {f"seed-{s}" for s in seeds}

    for text_input in inputs:
        models = written["models"][text_input]
        assert set(models) == {"fusion", "image", "text", "tfidf", "shuffled",
                               "image_frozen@demo_vit", "fusion_frozen@demo_vit"}
        for variant, m in models.items():
            mine = {f"seed-{s}": s for s in seeds} if variant != ONCE else {}
            assert set(m) == set(METRICS) | {"ece_floor"}
            assert set(m["ece_floor"]) == {"mean"} | set(mine)
            for metric in METRICS:
                assert set(m[metric]) == {"mean", "sd", "low", "high"} | set(mine), metric
            direct = {metric: [] for metric in METRICS}
            for s in (seeds if mine else seeds[:1]):
                run = _run(variant, s, text_input)
                probs = _study_probs(run)
                assert probs.index.tolist() == uids.tolist()
                for metric, v in _direct(labels, probs.to_numpy(), _test_json(run),
                                         small.evaluate.specificity).items():
                    direct[metric].append(v)
            for metric, values in direct.items():
                where = (text_input, variant, metric)
                for key, v in zip(mine, values):
                    assert m[metric][key] == pytest.approx(v, abs=1e-12), where
                assert m[metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12), where
                if mine:
                    assert m[metric]["sd"] == pytest.approx(np.std(values, ddof=1),
                                                            abs=1e-12), where
                else:  # one run: no spread
                    assert m[metric]["sd"] is None, where
                assert 0 <= m[metric]["low"] <= m[metric]["high"] <= 1, where

        differences = written["differences"][text_input]
        assert set(differences) == set(PAIRS)
        for name, (a, b) in PAIRS.items():
            d = differences[name]
            assert set(d) == set(METRICS) | {"delong"}
            for metric in METRICS:
                extra = (set() if metric != "auroc" else INFERENCE
                         if d["auroc"]["role"] != "exploratory"
                         else INFERENCE - {"adjusted_interval"})  # no share of alpha
                assert set(d[metric]) == {"mean", "low", "high"} | per_seed | extra, metric
                ma, mb = models[a][metric], models[b][metric]
                assert d[metric]["mean"] == pytest.approx(ma["mean"] - mb["mean"], abs=1e-12)
                for s in seeds:  # the TF-IDF baseline's one run against each seed's
                    assert d[metric][f"seed-{s}"] == pytest.approx(
                        _seed_value(ma, f"seed-{s}") - _seed_value(mb, f"seed-{s}"), abs=1e-12)
                assert d[metric]["low"] <= d[metric]["high"]
            pa, pb = np.broadcast_arrays(*(np.stack([_study_probs(_run(v, s, text_input))
                                                     for s in seeds]) for v in (a, b)))
            ensemble = delong(labels, pa.mean(0), pb.mean(0))
            assert set(d["delong"]) == {"ensemble"} | per_seed
            assert d["delong"]["ensemble"] == pytest.approx(
                {k: ensemble[k] for k in ("auroc_a", "auroc_b", "difference", "p")}, rel=1e-12)
            # the ensemble's own difference, not the seed-mean's
            assert d["delong"]["ensemble"]["difference"] == pytest.approx(
                roc_auc_score(labels, pa.mean(0)) - roc_auc_score(labels, pb.mean(0)))
            for s, x, y in zip(seeds, pa, pb):
                assert d["delong"][f"seed-{s}"]["p"] == pytest.approx(delong(labels, x, y)["p"],
                                                                      rel=1e-12)
    # the synthetic runs hold differences clear of zero either way, and some not
    verdicts = {(i, name): written["differences"][i][name]["auroc"]["verdict"]
                for i in inputs for name in PAIRS}
    assert verdicts[inputs[0], "fusion_minus_image"] == "higher"
    # the primary, tested at its share of alpha (0.8) at least: p 0.039, adjusted at most
    # p / 0.8 (less once a secondary shown before it has passed its weight on): 0.045
    d = written["differences"]["indication"]["fusion_minus_image"]["auroc"]
    assert d["high"] < 0 and d["p"] < d["p_adjusted"] <= d["p"] / 0.8 and d["p_adjusted"] < 0.05
    assert verdicts["indication", "fusion_minus_image"] == "lower"
    assert "inconclusive" in verdicts.values(), verdicts

    # the image model reads no report: one set of runs, the same numbers for every text input
    first, second = (written["models"][i] for i in inputs)
    assert first["image"] == second["image"]
    assert first["fusion"]["auroc"]["seed-0"] != second["fusion"]["auroc"]["seed-0"]
    assert (written["differences"][inputs[0]]["fusion_minus_image"]
            != written["differences"][inputs[1]]["fusion_minus_image"])


def test_the_summary_is_the_headline_of_the_comparison(workdir, small, no_figures):
    _project(small)
    result = compare(small)
    summary = json.loads(Path("metrics/summary.json").read_text())
    assert summary == results_mod.summary(result)
    assert set(summary) == {"image", "image_frozen@demo_vit", *small.text.inputs}
    for blind in ("image", "image_frozen@demo_vit"):  # read no report: one key, any input
        assert summary[blind] == {"auroc": result["models"]["indication"][blind]["auroc"]["mean"]}
    numbers = 2
    family = result["question"]["family"]
    for text_input in small.text.inputs:
        mine = summary[text_input]
        assert mine["auroc"] == {v: result["models"][text_input][v]["auroc"]["mean"]
                                 for v in ("fusion", "text", "tfidf", "shuffled",
                                           "fusion_frozen@demo_vit")}
        declared = [c for c in params_mod.Comparison.of_input(text_input, small)
                    if c.name in family]
        assert set(mine) == {"auroc", *(c.summary_key for c in declared)}  # the family's only
        for c in declared:
            d = result["differences"][text_input][c.key]["auroc"]
            assert mine[c.summary_key] == {k: d[k] for k in ("mean", "low", "high", "verdict")}
        numbers += 5 + 3 * len(declared)
    assert "fusion-shuffled" in summary["indication"]              # the placebo: declared
    assert "fusion-shuffled" not in summary["findings+impression"]  # exploratory there
    assert all("text-tfidf" in summary[i] for i in small.text.inputs)  # declared on each
    assert "fusion-tfidf" not in summary["indication"]                # exploratory
    assert numbers == 42  # what `dvc exp show` and `dvc metrics diff` list


def _auroc_rows(result: dict) -> dict:
    return {f"{a}-{b}/{i}": result["differences"][i][f"{a}_minus_{b}"]["auroc"]
            for i in result["differences"] for a, b in PAIRS.values()}


def _by_hand(y, a: np.ndarray, b: np.ndarray) -> dict:
    """The seed-mean AUROC difference a - b, its se and df, from every pair of studies (not
    midranks): DeLong's components per seed, averaged; the seeds' variance over S."""
    def components(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(1), psi.mean(0), psi.mean()
    parts = [[components(row) for row in rows] for rows in (a, b)]
    d10 = np.mean([pa[0] - pb[0] for pa, pb in zip(*parts)], axis=0)
    d01 = np.mean([pa[1] - pb[1] for pa, pb in zip(*parts)], axis=0)
    per_seed = np.array([pa[2] - pb[2] for pa, pb in zip(*parts)])
    v_t = d10.var(ddof=1) / len(d10) + d01.var(ddof=1) / len(d01)
    v_s = per_seed.var(ddof=1) / len(per_seed)
    return {"mean": per_seed.mean(), "se": math.sqrt(v_t + v_s),
            "df": (v_t + v_s) ** 2 / (v_t ** 2 / (len(y) - 1) + v_s ** 2 / (len(per_seed) - 1))}


def _closed_testing(p: dict, weights: dict, passes: dict) -> dict:
    """Adjusted p-values of weighted Bonferroni tests in closed testing, every intersection J
    of the family tried, at the graph's weights once the rows outside J are taken out (Bretz
    et al. 2009): max over J holding i of min over j in J of p_j / w_J(j)."""
    names, out = list(p), {}

    def local(subset) -> dict:
        w, g = dict(weights), {k: dict(passes[k]) for k in names}
        for j in [n for n in names if n not in subset]:
            left = [k for k in w if k != j]
            for k in left:
                w[k] += w[j] * g[j].get(k, 0.0)
            g = {k: {m: (g[k].get(m, 0.0) + g[k].get(j, 0.0) * g[j].get(m, 0.0))
                     / (1 - g[k].get(j, 0.0) * g[j].get(k, 0.0)) for m in left if m != k}
                 for k in left}
            del w[j]
        return w

    for i in names:
        worst = 0.0
        for r in range(1, len(names) + 1):
            for subset in itertools.combinations(names, r):
                if i in subset:
                    w = local(subset)
                    worst = max(worst, min(min(1.0, p[j] / w[j]) if w[j] > 0 else 1.0
                                           for j in subset))
        out[i] = worst
    return out


def test_every_auroc_row_reads_one_rule(workdir, small, no_figures):
    """Each row's t, p and intervals match a computation by hand; p < alpha exactly when the
    interval excludes 0; the adjusted p is the closed test of weighted Bonferroni tests over
    the declared family (the primary at compare.primary_share); the verdict follows the
    precedence; the primary's sentence is the answer."""
    uids, labels, written = _project(small)
    result = compare(small)
    c, rows = small.compare, _auroc_rows(result)
    alpha, margin = c.alpha, c.margin
    placebo = "fusion-shuffled/" + params_mod.Comparison.parse(c.primary).text_input
    secondaries = params_mod.secondaries(c)  # compare.secondary, then compare.encoders
    family = [c.primary, placebo, *secondaries]
    weights = {name: c.primary_share if name == c.primary else 0.0 if name == placebo else
               (1 - c.primary_share) / len(secondaries) for name in family}
    levels = {**weights, placebo: c.primary_share}  # the placebo's: the primary's, passed on
    q = result["question"]
    assert q["family"] == family and q["alpha"] == alpha and q["placebo"] == placebo
    assert q["weights"] == pytest.approx(weights)
    assert q["passes"][c.primary] == {placebo: 1.0}
    assert q["answer"].startswith(sentence(params_mod.Comparison.parse(c.primary),
                                           rows[c.primary], alpha, margin, "studies"))
    adjusted = _closed_testing({name: rows[name]["p"] for name in family}, weights,
                               q["passes"])
    equivalent = _closed_testing({name: rows[name]["p_equivalence"] for name in family},
                                 weights, q["passes"])
    probs = {run: df.groupby("uid")["probability"].mean().to_numpy()
             for run, df in written.items()}
    for name, d in rows.items():
        pair = params_mod.Comparison.parse(name)
        seeds = small.train.seeds
        a, b = np.broadcast_arrays(*(np.stack([probs[Run.of(v, s, pair.text_input)]
                                               for s in seeds]) for v in (pair.a, pair.b)))
        hand = _by_hand(labels, a, b)
        assert d["se"] == pytest.approx(hand["se"], rel=1e-9)
        assert d["df"] == pytest.approx(hand["df"], rel=1e-9)
        t = scipy_stats.t(hand["df"])
        assert d["p"] == pytest.approx(2 * t.sf(abs(hand["mean"]) / hand["se"]), rel=1e-9)
        half = t.ppf(1 - alpha / 2) * hand["se"]
        assert (d["low"], d["high"]) == pytest.approx((hand["mean"] - half, hand["mean"] + half))
        assert (d["p"] < alpha) == (d["low"] > 0 or d["high"] < 0), name
        if name not in family:  # fusion - shuffled on the other input: exploratory
            assert d["role"] == "exploratory" and d["p_adjusted"] is None
            continue
        assert d["role"] == ("primary" if name == c.primary else "placebo" if name == placebo
                             else "secondary")
        assert d["p_adjusted"] == pytest.approx(adjusted[name]) and d["p_adjusted"] >= d["p"]
        assert d["p_equivalence_adjusted"] == pytest.approx(equivalent[name])
        adj = d["adjusted_interval"]
        assert adj["level"] == pytest.approx(1 - levels[name] * alpha)
        if adj["low"] > 0 or adj["high"] < 0:  # excludes 0 only where the row is shown
            assert d["p_adjusted"] < alpha
        eq = d["equivalence_interval"]
        assert (d["p_equivalence"] < alpha) == (-margin < eq["low"] and eq["high"] < margin)
        assert d["low"] <= eq["low"] <= eq["high"] <= d["high"]  # the 90 % inside the 95 %
        expected = ("higher" if d["p_adjusted"] < alpha and d["mean"] > 0 else
                    "lower" if d["p_adjusted"] < alpha else
                    "equivalent" if d["p_equivalence_adjusted"] < alpha else "inconclusive")
        assert d["verdict"] == expected, name
        g = d["design"]
        assert g["alpha"] == pytest.approx(alpha * levels[name]) and g["power"] == 0.8
        assert g["se"] == pytest.approx(math.hypot(g["se_studies"], g["sd_seeds"] / math.sqrt(2)))
        assert g["detectable"] > 2 * g["se"]
    assert {d["verdict"] for d in rows.values()} >= {"higher", "inconclusive"}


def test_comparisons_outside_the_family_are_exploratory(workdir, small, no_figures):
    small.compare.secondary = ["fusion-text/indication"]
    small.compare.encoders = []
    small.compare.placebo = False   # its row, too, outside the family
    _project(small)
    rows = _auroc_rows(compare(small))
    share = small.compare.primary_share
    weights = {small.compare.primary: share, "fusion-text/indication": 1 - share}
    family = set(weights)
    adjusted = weighted_holm({name: rows[name]["p"] for name in family}, weights)
    for name, d in rows.items():
        if name in family:
            assert d["p_adjusted"] == pytest.approx(adjusted[name])
        else:
            assert d["role"] == "exploratory" and d["p_adjusted"] is None
            assert d["design"]["alpha"] == small.compare.alpha
    text = Path("metrics/comparison.md").read_text()
    assert "exploratory" in text and "exploratory, unadjusted p" in text


def test_compare_scores_studies_not_images(workdir, small, no_figures):
    """Several images a study: a study's score is the mean probability of its images."""
    counts = np.random.default_rng(3).integers(1, 5, N)
    uids, labels, written = _project(small, images_per_study=counts)
    result = compare(small)
    assert result["test_studies"] == N and result["resampled_units"] == N
    run = Run("fusion", 1, small.text.inputs[1])
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
ONCE_CELL = DIFF_CELL  # a model trained once: its one run [interval], no sd


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


def _cell(pattern, cell: str, d: dict, keys) -> None:
    parsed = pattern.match(cell)
    assert parsed, cell
    for got, key in zip(parsed.groups(), keys):
        _close(got, d[key])


NAMES = {"fusion − image": "fusion_minus_image", "fusion − text": "fusion_minus_text",
         "text − image": "text_minus_image", "fusion − shuffled": "fusion_minus_shuffled",
         "text − tfidf": "text_minus_tfidf", "fusion − tfidf": "fusion_minus_tfidf",
         "fusion_frozen@demo_vit − image_frozen@demo_vit":
             "fusion_frozen@demo_vit_minus_image_frozen@demo_vit",
         "fusion − fusion_frozen@demo_vit": "fusion_minus_fusion_frozen@demo_vit"}


def test_comparison_md_rows_equal_comparison_json(workdir, small, no_figures):
    _project(small)
    result = compare(small)
    inputs, spec = small.text.inputs, small.evaluate.specificity
    text = Path("metrics/comparison.md").read_text()
    assert text.startswith("**Primary question** (`compare.primary` = fusion-image/indication)")
    assert result["question"]["answer"] in text.splitlines()[0]
    assert f"Test studies: {N}; seeds per model: 2 (0, 1)" in text
    assert "1 − 0.9" not in text and "at 90% specificity on validation" not in text
    inferential, models, descriptive = _tables(text)

    assert inferential[0][:9] == ["text input", "comparison", "role (weight)",
                                  "Δ AUROC [95% interval]", "p", "adjusted p",
                                  "adjusted interval", "90% interval", "verdict"]
    # Table 1: the primary, its placebo, the secondary comparisons as declared, then the rest
    declared = [small.compare.primary, "fusion-shuffled/indication", *small.compare.secondary,
                *small.compare.encoders,
                "fusion-shuffled/findings+impression", "fusion-tfidf/findings+impression",
                "fusion_frozen@demo_vit-image_frozen@demo_vit/findings+impression",
                "fusion-fusion_frozen@demo_vit/findings+impression", "fusion-tfidf/indication",
                "fusion-fusion_frozen@demo_vit/indication"]
    assert [f"{r[1].replace(' − ', '-')}/{r[0]}" for r in inferential[1:]] == declared
    for row in inferential[1:]:
        d = result["differences"][row[0]][NAMES[row[1]]]["auroc"]
        _cell(DIFF_CELL, row[3], d, ("mean", "low", "high"))
        assert row[8] == f"**{d['verdict']}**"
        if d["role"] == "exploratory":
            assert row[2] == "exploratory" and row[5] == row[6] == "—"
            continue
        assert row[2] == f"{d['role']} ({d['weight']:.2f})"
        for cell, key in ((row[4], "p"), (row[5], "p_adjusted")):
            if cell == "< 0.001":
                assert d[key] < 0.001, key
            else:
                assert float(cell) == pytest.approx(d[key], rel=5e-3, abs=5e-4), (cell, key)
        for cell, key in ((row[6], "adjusted_interval"), (row[7], "equivalence_interval")):
            _cell(re.compile(rf"^\[{NUMBER}, {NUMBER}\]$"), cell, d[key], ("low", "high"))
        _close(row[9], d["design"]["detectable"])

    # Table 2: every column named by what it measures, the image model once
    header = models[0]
    names = {m.name: m.column.format(specificity=spec, ece_bins=5) for m in MEASURES}
    assert header == ["text input", "model", *names.values(), "ECE noise floor"]
    assert "Sensitivity at 90% specificity (test ROC)" in header
    rows = models[1:]
    assert [(r[0], r[1]) for r in rows] == [("— (reads no report)", "image only"),
                                            ("— (reads no report)",
                                             "image only (frozen encoder) · demo_vit")] + [
        (i, v) for i in inputs for v in ("text only", "TF-IDF + logistic regression", "fusion",
                                         "placebo (shuffled reports)",
                                         "fusion (frozen image encoder) · demo_vit")]
    variant = {"image only": "image", "text only": "text", "fusion": "fusion",
               "placebo (shuffled reports)": "shuffled", "TF-IDF + logistic regression": "tfidf",
               "image only (frozen encoder) · demo_vit": "image_frozen@demo_vit",
               "fusion (frozen image encoder) · demo_vit": "fusion_frozen@demo_vit"}
    for row in rows:
        text_input = inputs[0] if row[0] == "— (reads no report)" else row[0]
        m = result["models"][text_input][variant[row[1]]]
        for cell, metric in zip(row[2:-1], names):
            if variant[row[1]] == ONCE:  # trained once: no sd
                _cell(ONCE_CELL, cell, m[metric], ("mean", "low", "high"))
                continue
            _cell(MODEL_CELL, cell, m[metric], ("mean", "sd", "low", "high"))
        _close(row[-1], m["ece_floor"]["mean"])

    # Table 3: every other measure's paired differences, signed, descriptive
    assert descriptive[0] == ["text input", "comparison",
                              *(v for k, v in names.items() if k != "auroc")]
    assert [(r[0], r[1]) for r in descriptive[1:]] == [(i, n) for i in inputs for n in NAMES]
    for row in descriptive[1:]:
        d = result["differences"][row[0]][NAMES[row[1]]]
        for cell, metric in zip(row[2:], [k for k in names if k != "auroc"]):
            assert all(g[0] in "+-" for g in DIFF_CELL.match(cell).groups()), cell
            _cell(DIFF_CELL, cell, d[metric], ("mean", "low", "high"))


def test_result_sentences_follow_the_verdicts(workdir, small, no_figures):
    """No sentence says "no difference", "level" or "adds nothing"; an inconclusive row says
    it is not shown either way, with what the design could have detected."""
    _project(small)
    result = compare(small)
    text = Path("metrics/comparison.md").read_text()
    said = [line for line in text.splitlines() if line.startswith("- *")]
    rows = _auroc_rows(result)
    assert len(said) == len(rows)
    for line in said:
        lowered = line.lower()
        assert not any(w in lowered for w in ("no difference", "level with", "adds nothing",
                                              "not above"))
    for name, d in rows.items():
        c = params_mod.Comparison.parse(name)
        line = next(x for x in said if x.startswith(f"- *{c.text_input}, {c.label}*"))
        words = {"higher": "ranks the test studies better", "lower": "ranks the test studies "
                 "worse", "equivalent": "are equivalent within ±0.05",
                 "inconclusive": "Not shown either way"}
        assert words[d["verdict"]] in line, (name, line)
        if d["verdict"] == "inconclusive":
            assert f"detect a difference of {d['design']['detectable']:.3f}" in line


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
    with pytest.raises(PipelineError, match=r"^image/seed-1 scores other test studies than "
                                            r"fusion/findings\+impression/seed-0.*`dvc repro`"):
        compare(small)
    _nothing_written()


def test_compare_refuses_validation_predictions_that_do_not_give_the_threshold(
        workdir, small, no_figures):
    _project(small)
    run = Run("text", 0, "indication")
    t = _test_json(run)
    run.test_metrics.write_text(json.dumps({**t, "threshold": t["threshold"] + 0.01}))
    with pytest.raises(PipelineError, match=r"^metrics/validation/text/indication/seed-0.csv does "
                                            r"not give the threshold of metrics/test/text/"
                                            r"indication/seed-0.json.*rerun `dvc repro`"):
        compare(small)
    _nothing_written()


@pytest.mark.parametrize("missing", ["a seed", "test.json", "validation", "history.json"])
def test_compare_refuses_a_missing_run(workdir, small, no_figures, missing):
    """A seed of train.seeds never trained, a run not evaluated, a model folder without its
    history: named, with what to run, not averaged away (and no traceback)."""
    _project(small)
    if missing == "a seed":
        small.train.seeds = [0, 1, 2]
        path = "metrics/predictions/fusion/findings+impression/seed-2.csv"
    elif missing == "test.json":
        path = "metrics/test/text/indication/seed-1.json"
    elif missing == "validation":
        path = "metrics/validation/fusion/indication/seed-0.csv"
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
    message = (rf"the test studies hold {abnormal} abnormal and {N - abnormal} normal: the "
               r"comparison needs two of each or more; use a larger split.test")
    with pytest.raises(PipelineError, match=message):
        compare(small)
    _nothing_written()


# --- seeds ----------------------------------------------------------------------------------------

def test_adding_a_seed_adds_its_keys(workdir, small, no_figures):
    uids, labels, _ = _project(small)
    two = compare(small)
    small.train.seeds = [0, 1, 2]
    write_runs(small, uids, labels)  # seed 2's runs; seeds 0 and 1 rewritten as they were
    three = compare(small)
    assert (two["seeds"], three["seeds"]) == (2, 3)
    assert "seeds per model: 3 (0, 1, 2)" in Path("metrics/comparison.md").read_text()
    for text_input in small.text.inputs:
        for variant in ("fusion", "image", "text"):
            for metric in METRICS:
                before = two["models"][text_input][variant][metric]
                after = three["models"][text_input][variant][metric]
                assert "seed-2" not in before and "seed-2" in after
                assert {k: after[k] for k in ("seed-0", "seed-1")} == \
                    {k: before[k] for k in ("seed-0", "seed-1")}
                values = [after[f"seed-{s}"] for s in (0, 1, 2)]
                assert after["mean"] == pytest.approx(np.mean(values), abs=1e-12)
                assert after["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        for d in three["differences"][text_input].values():
            assert set(d["delong"]) == {"ensemble", "seed-0", "seed-1", "seed-2"}
            assert {"seed-0", "seed-1", "seed-2"} <= set(d["auroc"])
    assert json.loads(Path("metrics/comparison.json").read_text()) == three


def test_one_seed(workdir, small, no_figures):
    small.train.seeds = [0]
    _project(small)
    result = compare(small)
    written = json.loads(Path("metrics/comparison.json").read_text())  # Python reads NaN
    assert written["seeds"] == 1
    for models in written["models"].values():
        for m in models.values():
            for metric in METRICS:
                assert not {k for k in m[metric] if k.startswith("seed-")} - {"seed-0"}
                assert m[metric]["mean"] == m[metric].get("seed-0", m[metric]["mean"])
    for differences in written["differences"].values():
        for d in differences.values():
            assert set(d["delong"]) == {"ensemble", "seed-0"}
            assert d["delong"]["ensemble"]["p"] == d["delong"]["seed-0"]["p"]
            assert d["auroc"]["design"]["sd_seeds"] == 0.0
            assert d["auroc"]["mean"] == pytest.approx(d["auroc"]["seed-0"], abs=1e-12)
    assert result["models"].keys() == written["models"].keys()
    # the table shows no spread over one seed, and never "nan"
    text = Path("metrics/comparison.md").read_text()
    assert "seeds per model: 1 (0)" in text and "nan" not in text.lower()


def test_one_seed_writes_strict_json(workdir, small, no_figures):
    small.train.seeds = [0]
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
        "comparison.json", "comparison.md", "figures", "predictions", "summary.json", "test",
        "validation"]  # no temporaries
    assert len(FIGURE_FUNCTIONS) == len(pngs)


def test_the_figures_show_the_tables_numbers(workdir, small, monkeypatch):
    """The reliability figure's legend is the table's ECE and Brier, and its bins are the ones
    that ECE is made of; the ROC figure's marked point is the table's sensitivity, on its mean
    curve."""
    drawn = {}
    for name in FIGURE_FUNCTIONS:
        monkeypatch.setattr(figures, name, lambda *a, _name=name, **k: drawn.update(
            {_name: (a, k)}))
    uids, labels, _ = _project(small)
    result = compare(small)
    (y, probs, calibration_, _), _ = drawn["reliability"]
    for text_input, variants in calibration_.items():
        for v, c in variants.items():
            m = result["models"][text_input][v]
            assert (c["ece"], c["brier"]) == (m["ece"]["mean"], m["brier"]["mean"])
            assert c["binning"] == "5 equal-mass bins"
            lines = sorted({b["seed"] for b in c["bins"]})  # one a run: one for TF-IDF
            assert lines == ([0] if v == ONCE else [0, 1]), v
            per_seed = [sum(b["n"] * abs(b["fraction_abnormal"] - b["mean_probability"])
                            for b in c["bins"] if b["seed"] == s) / N for s in lines]
            assert np.mean(per_seed) == pytest.approx(c["ece"], abs=1e-12)
    args, kwargs = drawn["roc_by_input"]
    spec = small.evaluate.specificity
    assert kwargs["specificity"] == spec
    for text_input, variants in args[1].items():
        for v, rows in variants.items():
            fpr, tpr = figures.mean_roc(labels, rows, at=(1 - spec,))
            at = kwargs["at_specificity"][text_input][v]
            assert at == result["models"][text_input][v]["sensitivity_at_specificity"]["mean"]
            assert tpr[np.flatnonzero(fpr == 1 - spec)[0]] == pytest.approx(at, abs=1e-12)
