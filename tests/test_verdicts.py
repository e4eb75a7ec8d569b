"""cxrfusion/verdicts.py and the `compare` section of params.yaml: the declared family and its
weights, weighted Holm's adjustment, each row's t test, the verdicts and the design, by hand."""
from __future__ import annotations

import copy
import json
import math
from statistics import NormalDist

import numpy as np
import pytest
import yaml
from conftest import ROOT
from scipy import stats

from cxrfusion import params
from cxrfusion.common import PipelineError
from cxrfusion.params import Comparison
from cxrfusion.verdicts import design, family, holm, t_test, verdict, weighted_holm

Z = NormalDist().inv_cdf


def test_holm_by_hand():
    # sorted: a 0.01 x 4 = 0.04; c 0.03 x 3 = 0.09; b 0.04 x 2 = 0.08 -> kept at 0.09 (the
    # adjusted values keep the order); d 0.2 x 1
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2})
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.2})
    assert list(adjusted) == ["a", "b", "c", "d"]                   # the caller's order
    assert holm({"a": 0.4, "b": 0.6}) == pytest.approx({"a": 0.8, "b": 0.8})  # capped by order
    assert holm({"a": 0.7, "b": 0.9}) == {"a": 1.0, "b": 1.0}        # at most 1
    assert holm({"only": 0.03}) == {"only": 0.03}                   # a family of one


def test_weighted_holm_by_hand():
    w = {"primary": 0.8, "s1": 0.1, "s2": 0.1}
    # p / w: primary 0.03 / 0.8 = 0.0375 first (x 1); s1 0.004 / 0.1 = 0.04 next, with the
    # weight left, 0.2: 0.004 x 0.2 / 0.1 = 0.008 -> kept at 0.0375; s2 0.2 alone: 0.2
    adjusted = weighted_holm({"primary": 0.03, "s1": 0.004, "s2": 0.2}, w)
    assert adjusted == pytest.approx({"primary": 0.0375, "s1": 0.0375, "s2": 0.2})
    # the primary not shown (p 0.3): a secondary is still tested, at its own share first
    adjusted = weighted_holm({"primary": 0.3, "s1": 0.001, "s2": 0.5}, w)
    # then the primary with the weight left, 0.9: 0.3 x 0.9 / 0.8
    assert adjusted["s1"] == pytest.approx(0.01) and adjusted["primary"] == pytest.approx(0.3375)
    assert weighted_holm({"a": 0.01, "b": 0.02}, {"a": 0.5, "b": 0.5}) == pytest.approx(
        holm({"a": 0.01, "b": 0.02}))                               # equal weights: Holm


def test_family_weights():
    assert family("fusion-image/indication", ["fusion-text/indication",
                                              "text-image/indication"], 0.8).weights == (
        pytest.approx({"fusion-image/indication": 0.8, "fusion-text/indication": 0.1,
                       "text-image/indication": 0.1}))
    assert family("fusion-image/indication", [], 0.8).weights == {
        "fusion-image/indication": 1.0}
    with pytest.raises(ValueError, match="twice"):
        family("fusion-image/indication", ["fusion-image/indication"])
    with pytest.raises(ValueError, match="twice"):
        family("fusion-image/indication", ["fusion-shuffled/indication"], placebo=True)


def _weighted_holm_closed_form(p: dict, w: dict) -> dict:
    """Weighted Holm as its textbook step-down: in order of p / w, the j-th adjusted p is the
    largest over i <= j of p_(i) W_(i) / w_(i), W_(i) the weight not yet shown."""
    names = sorted(p, key=lambda k: p[k] / w[k])
    running, out = 0.0, {}
    for i, k in enumerate(names):
        running = max(running, min(1.0, p[k] * sum(w[m] for m in names[i:]) / w[k]))
        out[k] = running
    return out


def test_the_graph_of_weighted_holm_gives_its_step_down():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 7))
        p = dict(zip("abcdefg", rng.uniform(0, 0.2, n) ** 2))
        w = dict(zip("abcdefg", rng.uniform(0.05, 1, n)))
        assert weighted_holm(p, w) == pytest.approx(_weighted_holm_closed_form(p, w))


PRIMARY, PLACEBO = "fusion-image/indication", "fusion-shuffled/indication"
SECONDARIES = ["fusion-text/indication", "text-image/indication"]


def test_the_placebo_follows_the_primary_by_hand():
    fam = family(PRIMARY, SECONDARIES, 0.8, placebo=True)
    assert fam.weights == pytest.approx({PRIMARY: 0.8, PLACEBO: 0.0, SECONDARIES[0]: 0.1,
                                         SECONDARIES[1]: 0.1})
    assert fam.passes[PRIMARY] == {PLACEBO: 1.0}           # all of it, once shown
    assert fam.level(PLACEBO) == pytest.approx(0.8)        # tested at the primary's share
    assert [fam.role(n) for n in fam.weights] == ["primary", "placebo", "secondary",
                                                  "secondary"]
    assert fam.role("fusion-text/findings+impression") == "exploratory"
    # p / w: the primary 0.01 / 0.8 = 0.0125 first; the placebo then holds 0.8: 0.02 / 0.8 =
    # 0.025; it passes 0.8 on in halves: each secondary 0.5, 0.2 / 0.5 = 0.4; the last holds
    # all: 0.3 / 1, kept at 0.4 (the adjusted values keep the order)
    adjusted = fam.adjust({PRIMARY: 0.01, PLACEBO: 0.02, SECONDARIES[0]: 0.2,
                           SECONDARIES[1]: 0.3})
    assert adjusted == pytest.approx({PRIMARY: 0.0125, PLACEBO: 0.025, SECONDARIES[0]: 0.4,
                                      SECONDARIES[1]: 0.4})
    # the primary not shown: the placebo is never shown, however small its p
    adjusted = fam.adjust({PRIMARY: 0.5, PLACEBO: 1e-6, SECONDARIES[0]: 0.001,
                           SECONDARIES[1]: 0.9})
    assert adjusted[PLACEBO] >= adjusted[PRIMARY] >= 0.05
    assert adjusted[SECONDARIES[0]] == pytest.approx(0.01)  # still tested at its own 0.1


def test_a_primary_share_of_one_is_a_fixed_sequence():
    """compare.primary_share 1: the secondaries hold nothing until the primary is shown, then
    share its alpha (they are testable after it, never before)."""
    fam = family(PRIMARY, SECONDARIES, 1.0)
    shown = fam.adjust({PRIMARY: 0.01, SECONDARIES[0]: 0.02, SECONDARIES[1]: 0.5})
    assert shown == pytest.approx({PRIMARY: 0.01, SECONDARIES[0]: 0.04, SECONDARIES[1]: 0.5})
    not_shown = fam.adjust({PRIMARY: 0.2, SECONDARIES[0]: 1e-6, SECONDARIES[1]: 1e-6})
    assert min(not_shown.values()) == pytest.approx(0.2)


@pytest.mark.parametrize("p_adjusted, p_eq, mean, expected", [
    (0.01, 0.9, 0.1, "higher"),
    (0.01, 0.9, -0.1, "lower"),
    (0.01, 0.01, 0.02, "higher"),    # shown and inside the margin: the difference first
    (0.30, 0.01, 0.001, "equivalent"),
    (0.30, 0.20, 0.01, "inconclusive"),
    (0.05, 0.05, 0.0, "inconclusive"),  # "below alpha" is strict
])
def test_verdict_precedence(p_adjusted, p_eq, mean, expected):
    assert verdict(p_adjusted, p_eq, mean, alpha=0.05) == expected


def test_t_test_by_hand():
    row = {"mean": 0.03, "se": 0.02, "df": 7.5}
    t = stats.t(7.5)
    out = t_test(row, alpha=0.05, margin=0.05, weight=0.1)
    assert out["p"] == pytest.approx(2 * t.sf(1.5))
    assert (out["low"], out["high"]) == pytest.approx((0.03 - t.ppf(0.975) * 0.02,
                                                      0.03 + t.ppf(0.975) * 0.02))
    assert out["p_equivalence"] == pytest.approx(max(t.sf(4.0), t.cdf(-1.0)))
    assert out["equivalence_interval"]["high"] == pytest.approx(0.03 + t.ppf(0.95) * 0.02)
    assert out["adjusted_interval"]["level"] == pytest.approx(0.995)
    assert out["adjusted_interval"]["low"] == pytest.approx(0.03 - t.ppf(0.9975) * 0.02)
    # p < alpha exactly when the interval excludes 0, at any mean
    for mean in np.linspace(-0.1, 0.1, 41):
        r = t_test({**row, "mean": mean}, 0.05, 0.05, None)
        assert (r["p"] < 0.05) == (r["low"] > 0 or r["high"] < 0)
        assert (r["p_equivalence"] < 0.05) == (-0.05 < r["equivalence_interval"]["low"]
                                               and r["equivalence_interval"]["high"] < 0.05)
    wide = t_test({"mean": 0.5, "se": 0.4, "df": 2}, 0.05, 0.05, None)  # cut at +1
    assert wide["high"] == 1.0 and wide["low"] < 0 and wide["p"] > 0.05
    exact = t_test({"mean": 0.0, "se": 0.0, "df": 5}, 0.05, 0.05, None)
    assert exact["p"] == 1.0 and exact["p_equivalence"] == 0.0


def test_design_by_hand():
    row = {"mean": 0.02, "se": math.sqrt(0.04 ** 2 + 0.02 ** 2 / 3), "df": 12.0,
           "se_studies": 0.04, "sd_seeds": 0.02, "seeds": 3, "units": 100}
    g = design(row, alpha_row=0.04, alpha=0.05, margin=0.05)
    t = stats.t(12.0)
    assert g["detectable"] == pytest.approx((t.ppf(1 - 0.02) + t.ppf(0.8)) * row["se"])
    reach = (0.05 / (t.ppf(0.95) + t.ppf(0.9))) ** 2
    assert g["units_for_equivalence"] == math.ceil(100 * 0.04 ** 2 / (reach - 0.02 ** 2 / 3))
    assert g["seeds_for_equivalence"] is None  # the test studies' part alone is too large
    # seeds that disagree this much: no number of test studies brings the margin in reach
    g = design({**row, "se_studies": 0.005, "sd_seeds": 0.1}, 0.04, 0.05, 0.05)
    assert g["units_for_equivalence"] is None
    assert g["seeds_for_equivalence"] == math.ceil(0.1 ** 2 / (reach - 0.005 ** 2))


def test_planned_test_studies_is_the_smallest_that_reaches_the_power():
    from cxrfusion.verdicts import hanley_mcneil, planned_test_studies

    # AUROC 0.9, 45 abnormal, 55 normal: Q1 = 0.9 / 1.1, Q2 = 1.62 / 1.9; (0.09 + 44 (Q1 -
    # 0.81) + 54 (Q2 - 0.81)) / 2475 = 2.7521 / 2475
    assert hanley_mcneil(0.9, 45, 55) == pytest.approx(
        (0.09 + 44 * (0.9 / 1.1 - 0.81) + 54 * (1.62 / 1.9 - 0.81)) / 2475)
    assert math.sqrt(hanley_mcneil(0.9, 45, 55)) == pytest.approx(0.0333, abs=1e-4)
    n = planned_test_studies(0.878, 0.844, 0.642, 0.5, 0.02, 5, 0.04)
    bound = (0.034 / (Z(1 - 0.02) + Z(0.8))) ** 2

    def var(k):
        m = round(k * 0.642)
        va, vb = hanley_mcneil(0.878, m, k - m), hanley_mcneil(0.844, m, k - m)
        return va + vb - 2 * 0.5 * math.sqrt(va * vb) + 0.02 ** 2 / 5
    assert var(n) <= bound < var(n - 1)
    assert planned_test_studies(0.878, 0.844, 0.642, 0.5, 0.02, 3, 0.04) > n  # fewer seeds
    assert planned_test_studies(0.878, 0.844, 0.642, 0.5, 0.05, 3, 0.04) is None


# --- the declared family in params.yaml --------------------------------------------------------

def test_comparison_names():
    c = Comparison.parse("fusion-image/findings+impression")
    assert (c.a, c.b, c.text_input, c.key) == ("fusion", "image", "findings+impression",
                                               "fusion_minus_image")
    assert c.name == "fusion-image/findings+impression"
    for bad in ("image-fusion/indication", "fusion/indication", "fusion-image", "x-y/z"):
        with pytest.raises(ValueError, match="is not a comparison"):
            Comparison.parse(bad)


def test_the_default_family_is_every_comparison_primary_first():
    p = params.load(ROOT / "params.yaml")
    fam = family(p.compare.primary, params.secondaries(p.compare), p.compare.primary_share,
                 p.compare.placebo)
    weights = fam.weights
    assert list(weights)[:2] == [PRIMARY, PLACEBO] and weights[PRIMARY] == 0.8
    assert len(weights) == 10 and sum(weights.values()) == pytest.approx(1)
    # the TF-IDF baseline's rows, one a text input, and the frozen encoder's are secondaries:
    # the primary keeps its 0.8
    baseline = [f"text-tfidf/{i}" for i in p.text.inputs] + [
        "fusion_frozen@demo_vit-image_frozen@demo_vit/indication"]
    assert set(baseline) <= set(weights)
    assert all(weights[name] == pytest.approx(0.2 / 8) for name in baseline)


def _refused(change, match):
    with open(ROOT / "params.yaml") as f:
        p = yaml.safe_load(f)
    change(p)
    with pytest.raises(PipelineError, match=match):
        params.validate(copy.deepcopy(p))


def test_a_bad_family_is_refused_before_any_work():
    def primary(value):
        return lambda p: p["compare"].__setitem__("primary", value)
    _refused(primary("fusion-image/impression"),
             r"compare.primary=.*names a text input that is not one of text.inputs")
    _refused(primary("image-fusion/indication"), r"compare.primary=.*is not a comparison")
    _refused(lambda p: p["compare"]["secondary"].append("fusion-image/indication"),
             "names a comparison twice")
    _refused(lambda p: p["compare"]["secondary"].append("fusion-shuffled/indication"),
             r"compare.placebo already tests fusion-shuffled/indication right after the primary")
    _refused(lambda p: p["compare"].__setitem__("bootstrap", 30),
             r"compare.bootstrap=30 .*too few resamples for the 95% intervals at "
             r"compare.alpha=0.05; use 40 or more")
    _refused(lambda p: p["compare"].__setitem__("primary_share", 0), r"compare.primary_share=0 ")
    _refused(lambda p: p["compare"].__setitem__("margin", 0), r"compare.margin=0 ")
    _refused(lambda p: p["evaluate"].__setitem__("bootstrap", 1000),
             "evaluate.bootstrap was replaced by compare.bootstrap")


# --- the committed demo: no verdict moves with compare.seed -------------------------------------

def _answers(seeds) -> list[dict]:
    """The committed demo's predictions answered under each of `seeds` as compare.seed (40
    resamples: only the descriptive intervals use them): per row, its verdict, p, adjusted p
    and interval."""
    from cxrfusion import formats
    from cxrfusion.comparison import answer_question
    from stages.compare import read_run, same_studies

    p = params.load(ROOT / "params.yaml")
    scored = {run: read_run(run) for run in formats.runs(p)}
    labels = same_studies(scored, "test")["label"].to_numpy()
    p.compare.bootstrap = 40
    out = []
    for seed in seeds:
        p.compare.seed = seed
        result = answer_question(scored, labels, 0, None, None, p)
        out.append({(i, key): tuple(d["auroc"][k] for k in ("verdict", "p", "p_adjusted",
                                                             "low", "high"))
                    for i, pairs in result["differences"].items() for key, d in pairs.items()})
    return out


def test_no_verdict_moves_with_the_resampling_seed(monkeypatch):
    """Five values of compare.seed: every AUROC row's p, adjusted p, interval and verdict are
    the same (the predictions are the committed demo's, whichever machine made them)."""
    monkeypatch.chdir(ROOT)
    answers = _answers((0, 1, 2, 3, 4))
    assert all(a == answers[0] for a in answers[1:])


@pytest.mark.committed
def test_the_committed_verdicts_are_the_predictions_verdicts(monkeypatch):
    monkeypatch.chdir(ROOT)
    committed = json.loads((ROOT / "metrics/comparison.json").read_text())["differences"]
    assert {k: v[0] for k, v in _answers((7,))[0].items()} == {
        (i, key): d["auroc"]["verdict"] for i, pairs in committed.items()
        for key, d in pairs.items()}
