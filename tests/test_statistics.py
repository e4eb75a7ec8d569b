"""cxrfusion/statistics.py: DeLong's test of two AUROCs, and intervals over test studies and
training seeds (over_seeds). The bootstrap intervals of one model and of a pair are tested in
test_metrics.py and test_bootstrap_groups.py."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from bootstrap_reference import bootstrap_interval, paired_bootstrap
from scipy.stats import norm
from sklearn import metrics as skm

from cxrfusion.metrics import calibration, choose_threshold, sensitivity_at_specificity
from cxrfusion.statistics import (
    SEED_METRICS,
    bootstrap_p,
    delong,
    equivalence_p,
    interval,
    order_rank,
    over_seeds,
)


def _labels(n: int) -> np.ndarray:
    return np.array([0, 1] * (n // 2))


def _scores(y: np.ndarray, strength: float, rng: np.random.Generator, decimals=None):
    """Probabilities that separate the labels the more, the higher `strength` (0..1)."""
    p = np.clip(strength * y + (1 - strength) * rng.random(len(y)), 0, 1)
    return p if decimals is None else np.round(p, decimals)


# --- DeLong -------------------------------------------------------------------------------------

def _brute_force_delong(y, a, b):
    """DeLong's variance from all (abnormal, normal) pairs: psi(x, y) = 1 if x > y, 1/2 if
    equal, 0 otherwise; V10 per abnormal study (mean over normals), V01 per normal study (mean
    over abnormals); var = S10 / m + S01 / n, then var(a - b) = s_aa + s_bb - 2 s_ab."""
    pos, neg = y == 1, y == 0
    v10, v01, aurocs = [], [], []
    for p in (a, b):
        x, z = p[pos][:, None], p[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        aurocs.append(psi.mean())
    s = np.cov(np.vstack(v10)) / pos.sum() + np.cov(np.vstack(v01)) / neg.sum()
    return aurocs, s[0, 0] + s[1, 1] - 2 * s[0, 1]


@pytest.mark.parametrize("seed, n, decimals", [(0, 60, 1), (1, 200, 2), (2, 31, None),
                                               (3, 12, 0)])
def test_delong_variance_equals_the_structural_components(seed, n, decimals):
    rng = np.random.default_rng(seed)
    y = rng.permutation(_labels(n + n % 2))[:n]
    a, b = _scores(y, 0.4, rng, decimals), _scores(y, 0.2, rng, decimals)
    (auroc_a, auroc_b), var = _brute_force_delong(y, a, b)
    r = delong(y, a, b)
    assert r["auroc_a"] == pytest.approx(skm.roc_auc_score(y, a)) == pytest.approx(auroc_a)
    assert r["auroc_b"] == pytest.approx(skm.roc_auc_score(y, b)) == pytest.approx(auroc_b)
    assert r["difference"] == pytest.approx(auroc_a - auroc_b)
    assert r["se"] ** 2 == pytest.approx(var, rel=1e-9)
    assert r["z"] == pytest.approx((auroc_a - auroc_b) / math.sqrt(var), rel=1e-9)
    assert r["p"] == pytest.approx(2 * norm.sf(abs(r["z"])), rel=1e-9)
    assert 0 <= r["p"] <= 1
    if decimals is not None:
        assert len(np.unique(a)) < n                     # the case does hold ties
    back = delong(y, b, a)                                # the reverse: the sign only
    assert back["difference"] == pytest.approx(-r["difference"])
    assert back["z"] == pytest.approx(-r["z"]) and back["p"] == pytest.approx(r["p"])


def test_delong_identical_and_clearly_different_models():
    rng = np.random.default_rng(4)
    y = _labels(200)
    good, weak = _scores(y, 0.6, rng), _scores(y, 0.05, rng)
    same = delong(y, good, good)
    assert same["difference"] == 0.0 and same["se"] == 0.0
    assert same["z"] == 0.0 and same["p"] == 1.0
    # a monotone transform ranks alike: the same AUROC, nothing to test
    assert delong(y, good, good ** 2)["p"] == 1.0
    clear = delong(y, good, weak)
    assert clear["difference"] > 0.3 and clear["p"] < 1e-6
    # two draws of the same kind of model: no evidence of a difference
    assert delong(y, _scores(y, 0.3, rng), _scores(y, 0.3, rng))["p"] > 0.01


def test_delong_refuses_what_it_cannot_test():
    with pytest.raises(ValueError, match="two studies of each label.*1 abnormal and 3 normal"):
        delong([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="one probability per study"):
        delong([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2])


# --- over_seeds ---------------------------------------------------------------------------------

def _model(y, strengths, thresholds=0.5, seed=0, decimals=2) -> dict:
    """One seed row per strength (rounded: scores tie), a threshold per seed."""
    rng = np.random.default_rng(seed)
    s = len(strengths)
    return {"probs": np.vstack([_scores(y, k, rng, decimals) for k in strengths]),
            "thresholds": np.broadcast_to(thresholds, (s,)).astype(float)}


def _arrays(result: dict) -> dict:
    """over_seeds' result without its rounds (numpy arrays, for the stage's own use)."""
    return {k: v for k, v in result.items() if k != "rounds"}


def _patients(n_studies: int, seed: int = 0) -> np.ndarray:
    """A patient id per study, 1 to 4 studies each, a patient's studies not adjacent."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_studies)
    groups = np.repeat([f"p{i}" for i in range(n_studies)], sizes)[:n_studies]
    return rng.permutation(groups)


def test_over_seeds_is_seeded_and_json_able():
    y = _labels(80)
    models = {"a": _model(y, [0.5, 0.3, 0.4]), "b": _model(y, [0.2, 0.25, 0.1], seed=1)}
    first = over_seeds(y, models, [("a", "b")], n=100, seed=3)
    again = over_seeds(y, models, [("a", "b")], n=100, seed=3)
    assert _arrays(first) == _arrays(again)
    assert all(np.array_equal(first["rounds"]["a - b"][m], again["rounds"]["a - b"][m])
               for m in SEED_METRICS)
    first = _arrays(first)
    assert json.loads(json.dumps(first)) == first          # plain lists, floats, strings
    other = over_seeds(y, models, [("a", "b")], n=100, seed=4)
    for metric in SEED_METRICS:
        assert first["models"]["a"][metric]["per_seed"] == other["models"]["a"][metric]["per_seed"]
        assert first["pairs"]["a - b"][metric]["mean"] == other["pairs"]["a - b"][metric]["mean"]
    assert first["models"]["a"]["auroc"]["low"] != other["models"]["a"]["auroc"]["low"]
    assert first["resamples"] == 100 and first["seed"] == 3
    assert set(first["models"]["a"]) == set(SEED_METRICS) == set(first["pairs"]["a - b"])
    assert set(first["models"]["a"]["f1"]) == {"per_seed", "mean", "sd", "low", "high"}
    assert set(first["pairs"]["a - b"]["f1"]) == {"per_seed", "mean", "low", "high"}


@pytest.mark.parametrize("patients", [False, True])
def test_one_seed_gives_the_intervals_of_bootstrap_interval_and_paired_bootstrap(patients):
    # one training run per model: the seed level draws nothing, and the study level draws the
    # resamples of bootstrap_interval / paired_bootstrap: the same numbers, exactly
    y = np.random.default_rng(5).permutation(_labels(90))
    groups = _patients(len(y)) if patients else None
    models = {"a": _model(y, [0.35], thresholds=0.45),
              "b": _model(y, [0.15], thresholds=0.45, seed=2)}
    r = over_seeds(y, models, [("a", "b")], n=150, seed=7, groups=groups)
    reference = {"auroc": ("auroc", 0.5), "auprc": ("auprc", 0.5), "f1": ("f1", 0.45),
                 "sensitivity": ("sensitivity", 0.45)}
    for metric, (name, threshold) in reference.items():
        for model in ("a", "b"):
            single = bootstrap_interval(y, models[model]["probs"][0], name, 150, 7, threshold,
                                        groups)
            got = r["models"][model][metric]
            assert got["per_seed"] == [single["value"]] and got["mean"] == single["value"]
            assert [got["low"], got["high"]] == single["ci95"], (metric, model)
            assert math.isnan(got["sd"])                  # one seed: no spread to speak of
        paired = paired_bootstrap(y, models["a"]["probs"][0], models["b"]["probs"][0], name,
                                  150, 7, threshold, groups)
        got = r["pairs"]["a - b"][metric]
        assert got["per_seed"] == [paired["difference"]] and got["mean"] == paired["difference"]
        assert [got["low"], got["high"]] == paired["ci95"], metric
    if patients:  # and the patients were resampled, not the studies
        by_study = over_seeds(y, models, [("a", "b")], n=150, seed=7)
        assert by_study["models"]["a"]["auroc"]["low"] != r["models"]["a"]["auroc"]["low"]


def test_per_seed_values_and_means_equal_a_direct_computation():
    y = np.random.default_rng(6).permutation(_labels(120))
    a = _model(y, [0.4, 0.3, 0.35], thresholds=[0.4, 0.5, 0.55])
    b = _model(y, [0.2, 0.1, 0.25], thresholds=[0.5, 0.45, 0.6], seed=3)
    r = over_seeds(y, {"a": a, "b": b}, [("a", "b")], n=200, seed=0, specificity=0.8)

    def direct(m):
        rows = list(zip(m["probs"], m["thresholds"]))
        return {"auroc": [skm.roc_auc_score(y, p) for p, _ in rows],
                "auprc": [skm.average_precision_score(y, p) for p, _ in rows],
                "sensitivity_at_specificity": [sensitivity_at_specificity(y, p, 0.8)
                                               for p, _ in rows],
                "sensitivity": [skm.recall_score(y, p >= t) for p, t in rows],
                "specificity": [skm.recall_score(1 - y, p < t) for p, t in rows],
                "f1": [skm.f1_score(y, p >= t) for p, t in rows],
                "brier": [skm.brier_score_loss(y, p) for p, _ in rows],
                "ece": [calibration(y, p)["ece"] for p, _ in rows]}

    da, db = direct(a), direct(b)
    for metric in SEED_METRICS:
        got = r["models"]["a"][metric]
        assert got["per_seed"] == pytest.approx(da[metric], abs=1e-12)
        assert got["mean"] == pytest.approx(np.mean(da[metric]))
        assert got["sd"] == pytest.approx(np.std(da[metric], ddof=1))
        pair = r["pairs"]["a - b"][metric]
        assert pair["per_seed"] == pytest.approx(np.subtract(da[metric], db[metric]), abs=1e-12)
        assert pair["mean"] == pytest.approx(np.mean(da[metric]) - np.mean(db[metric]))
        assert got["low"] <= got["high"] and pair["low"] <= pair["high"]
    # a clearly better model: every difference of ranking is positive, interval included
    assert r["pairs"]["a - b"]["auroc"]["low"] > 0 and r["pairs"]["a - b"]["auprc"]["low"] > 0


def test_resampled_validation_moves_only_what_the_threshold_decides():
    # the validation draws come from a stream of their own: the test-study and seed draws,
    # and so every threshold-free interval, are the same with or without them
    rng = np.random.default_rng(8)
    y, yv = rng.permutation(_labels(100)), rng.permutation(_labels(60))
    models = {}
    for name, strengths in (("a", [0.4, 0.3]), ("b", [0.2, 0.25])):
        m = _model(y, strengths, seed=len(name) + ord(name))
        m["val_probs"] = _model(yv, strengths, seed=ord(name))["probs"]
        m["rule"] = "youden"
        m["thresholds"] = np.array([choose_threshold(yv, v, "youden") for v in m["val_probs"]])
        models[name] = m
    fixed = over_seeds(y, models, [("a", "b")], n=200, seed=1)
    moved = over_seeds(y, models, [("a", "b")], n=200, seed=1,
                       validation={"labels": yv, "groups": None})
    for metric in ("auroc", "auprc", "sensitivity_at_specificity", "brier", "ece"):
        assert moved["pairs"]["a - b"][metric] == fixed["pairs"]["a - b"][metric], metric
        assert moved["models"]["a"][metric] == fixed["models"]["a"][metric], metric
    for metric in ("sensitivity", "specificity", "f1"):
        assert moved["models"]["a"][metric]["per_seed"] == fixed["models"]["a"][metric]["per_seed"]
        assert moved["models"]["a"][metric]["low"] != fixed["models"]["a"][metric]["low"], metric
    width = {k: r["models"]["a"]["specificity"]["high"] - r["models"]["a"]["specificity"]["low"]
             for k, r in (("fixed", fixed), ("moved", moved))}
    assert width["moved"] > width["fixed"]  # where the threshold fell is uncertain too
    # a fixed probability is chosen the same on any validation draw: nothing moves
    for m in models.values():
        m["rule"], m["thresholds"] = 0.5, np.full(2, 0.5)
    assert _arrays(over_seeds(y, models, [("a", "b")], n=50, seed=1)) == _arrays(
        over_seeds(y, models, [("a", "b")], n=50, seed=1, validation={"labels": yv}))


# --- the quantile rule -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [40, 199, 240, 1000, 2000])
def test_the_p_values_invert_the_intervals_ties_included(n):
    # "p < alpha" exactly when the 1 - alpha interval excludes 0, and "equivalence_p < alpha"
    # exactly when the 1 - 2 alpha interval lies inside (-m, m): at every level the bootstrap
    # can state, on values with many ties at 0 and at the margins
    rng = np.random.default_rng(n)
    for trial in range(60):
        values = np.round(rng.normal(rng.normal(0, 0.06), 0.05, n), int(rng.integers(1, 4)))
        margin = float(rng.choice([0.05, 0.1, 0.03]))
        p, p_eq = bootstrap_p(values), equivalence_p(values, margin)
        for alpha in (0.01, 0.05, 0.1, 0.2, 0.45, p, p_eq, p + 1e-9, p_eq + 1e-9):
            if not 0 < alpha < 0.5 or (alpha * (n + 1) / 2) <= 1:
                continue                  # a level these n values cannot state (order_rank)
            low, high = interval(values, 1 - alpha)
            assert (p < alpha) == (low > 0 or high < 0), (alpha, p, low, high)
            low, high = interval(values, 1 - 2 * alpha)
            assert (p_eq < alpha) == (-margin < low and high < margin), (alpha, p_eq)


def test_the_quantile_rule_by_hand():
    values = np.arange(1, 40)            # 39 values 1..39: k = ceil(0.05 x 40 / 2) - 1 = 0
    with pytest.raises(ValueError, match="39 bootstrap resamples are too few for a 95% interval"):
        interval(values)
    values = np.arange(-9, 31)           # 40 values -9..30; k = ceil(1.025) - 1 = 1
    assert interval(values) == (-9.0, 30.0)
    assert order_rank(0.95, 2000) == 50 and order_rank(0.9, 2000) == 100
    assert bootstrap_p(values) == pytest.approx(2 * (10 + 1) / 41)   # 10 values <= 0
    assert bootstrap_p(np.ones(99)) == 2 / 100                        # its floor
    assert bootstrap_p(np.zeros(99)) == 1.0                           # ties at 0: both tails
    assert equivalence_p(values, 5) == pytest.approx((26 + 1) / 41)   # 5..30 at or above 5


def test_seeds_that_disagree_widen_the_interval():
    # the same test studies; model "spread" trained three times very differently, model
    # "steady" three identical runs (its middle run): the seed level adds the spread's width
    y = _labels(200)
    spread = _model(y, [0.6, 0.3, 0.05])
    steady = {k: np.repeat(v[1:2], 3, axis=0) for k, v in spread.items()}
    r = over_seeds(y, {"spread": spread, "steady": steady}, [("spread", "steady")], n=300,
                   seed=1)
    for metric in ("auroc", "auprc"):
        width = {m: r["models"][m][metric]["high"] - r["models"][m][metric]["low"]
                 for m in ("spread", "steady")}
        assert width["spread"] > 2 * width["steady"], (metric, width)
    # identical runs: the seed draws change nothing, the interval is that of the one run
    single = bootstrap_interval(y, steady["probs"][0], "auroc", 300, 1)
    got = r["models"]["steady"]["auroc"]
    assert [got["low"], got["high"]] == pytest.approx(single["ci95"], abs=1e-12)
    assert got["sd"] == 0.0 and r["models"]["spread"]["auroc"]["sd"] > 0.1


def test_a_model_against_itself_differs_by_exactly_nothing():
    y = _labels(60)
    models = {"a": _model(y, [0.4, 0.1, 0.3], thresholds=[0.3, 0.5, 0.7])}
    r = over_seeds(y, models, [("a", "a")], n=100, seed=0)
    for metric in SEED_METRICS:
        d = r["pairs"]["a - a"][metric]
        assert d["per_seed"] == [0.0, 0.0, 0.0] and d["mean"] == 0.0
        assert [d["low"], d["high"]] == [0.0, 0.0]
        assert r["models"]["a"][metric]["low"] < r["models"]["a"][metric]["high"]


def test_a_reversed_pair_mirrors_its_interval():
    y = _labels(80)
    models = {"a": _model(y, [0.4, 0.3]), "b": _model(y, [0.2, 0.3], seed=5)}
    r = over_seeds(y, models, [("a", "b"), ("b", "a")], n=120, seed=2)
    for metric in SEED_METRICS:
        ab, ba = r["pairs"]["a - b"][metric], r["pairs"]["b - a"][metric]
        assert ba["per_seed"] == pytest.approx([-v for v in ab["per_seed"]])
        assert [ba["low"], ba["high"]] == pytest.approx([-ab["high"], -ab["low"]])


def test_over_seeds_refuses_mismatched_shapes():
    y = _labels(20)
    good = _model(y, [0.3, 0.2])

    def refused(models, pairs=(), match="", labels=y):
        with pytest.raises(ValueError, match=match):
            over_seeds(labels, models, list(pairs), n=10, seed=0)

    refused({"a": {**good, "probs": good["probs"][:, :-1]}},
            match=r"model 'a': probs of shape \(2, 19\), expected \(seeds, 20\)")
    refused({"a": {**good, "probs": good["probs"][0]}}, match=r"probs of shape \(20,\)")
    refused({"a": {**good, "thresholds": good["thresholds"][:1]}},
            match=r"model 'a': thresholds of shape \(1,\), expected \(2,\)")
    refused({"a": {**good, "thresholds": 0.5}}, match=r"thresholds of shape \(\)")
    refused({"a": {"probs": good["probs"]}}, match="model 'a' lacks thresholds")
    refused({"a": good, "b": _model(y, [0.3, 0.2, 0.1])}, [("a", "b")],
            match=r"pair \('a', 'b'\): 2 and 3 seeds")
    refused({"a": good}, [("a", "c")], match="no model 'c'")
    refused({"a": good}, match="0/1 label per test study", labels=y * 2)
    refused({}, match="no models")
    with pytest.raises(ValueError, match="0 resamples"):
        over_seeds(y, {"a": good}, [], n=0, seed=0)
    with pytest.raises(ValueError, match="one class only"):
        over_seeds(np.ones(20), {"a": good}, [], n=10, seed=0)
    with pytest.raises(ValueError, match="one per study"):
        over_seeds(y, {"a": good}, [], n=10, seed=0, groups=np.arange(19))
