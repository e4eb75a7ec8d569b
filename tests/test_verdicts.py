"""cxrfusion/verdicts.py and the `compare` section of params.yaml: the declared family, Holm's
adjustment, the verdicts and the design's detectable difference, by hand."""
from __future__ import annotations

import copy
import math
from statistics import NormalDist

import numpy as np
import pytest
import yaml
from conftest import ROOT

from cxrfusion import params
from cxrfusion.common import PipelineError
from cxrfusion.params import Comparison
from cxrfusion.verdicts import design, family, holm, smallest_adjusted_p, unadjusted, verdict

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


@pytest.mark.parametrize("p_adjusted, p_eq, low, high, expected", [
    (0.01, 0.9, 0.02, 0.2, "higher"),
    (0.01, 0.9, -0.2, -0.02, "lower"),
    (0.01, 0.01, 0.001, 0.04, "higher"),    # rejected and inside the margin: the test first
    (0.30, 0.01, -0.03, 0.04, "equivalent"),
    (0.30, 0.20, -0.09, 0.12, "inconclusive"),
    (0.05, 0.05, -0.01, 0.01, "inconclusive"),  # "below alpha" is strict
])
def test_verdict_precedence(p_adjusted, p_eq, low, high, expected):
    assert verdict(p_adjusted, p_eq, low, high, alpha=0.05) == expected


def test_a_rejection_whose_interval_holds_zero_is_a_bug_not_a_verdict():
    with pytest.raises(AssertionError, match="must invert each other"):
        verdict(0.01, 0.9, -0.01, 0.2, alpha=0.05)


def test_two_one_sided_tests_by_hand():
    # 1999 values: the 90 % interval is the 99th smallest to the 99th largest (order_rank:
    # ceil(0.1 x 2000 / 2) - 1)
    values = np.linspace(-0.04, 0.045, 1999)
    row = unadjusted(values, alpha=0.05, margin=0.05)
    assert row["equivalence_interval"]["low"] == pytest.approx(values[98])
    assert row["equivalence_interval"]["high"] == pytest.approx(values[-99])
    assert row["p_equivalence"] == 1 / 2000                        # none beyond either margin
    assert row["p"] == pytest.approx(2 * (int((values <= 0).sum()) + 1) / 2000)
    # 150 values at or above +0.05 of 1999: the upper one-sided p is 151 / 2000 > 0.05
    shifted = np.r_[values[150:], np.full(150, 0.06)]
    assert unadjusted(shifted, 0.05, 0.05)["p_equivalence"] == pytest.approx(151 / 2000)


def test_design_by_hand():
    rng = np.random.default_rng(0)
    study_rounds = rng.normal(0.02, 0.04, 2000)
    per_seed = [0.01, 0.05, 0.03]
    g = design(study_rounds, per_seed, units=100, alpha_row=0.05 / 6, alpha=0.05, margin=0.05)
    v_studies, v_seeds = np.var(study_rounds, ddof=1), np.var(per_seed, ddof=1)  # 0.0004
    se = math.sqrt(v_studies + v_seeds / 3)
    assert g["se"] == pytest.approx(se)
    assert g["detectable"] == pytest.approx((Z(1 - 0.05 / 12) + Z(0.8)) * se)
    reach = (0.05 / (Z(0.95) + Z(0.9))) ** 2
    assert g["units_for_equivalence"] == math.ceil(100 * v_studies / (reach - v_seeds / 3))
    assert g["seeds_needed"] is None
    # seeds that disagree this much: no number of test studies brings the margin in reach
    g = design(study_rounds, [-0.1, 0.1, 0.05], 100, 0.05 / 6, 0.05, 0.05)
    v_seeds = np.var([-0.1, 0.1, 0.05], ddof=1)
    assert g["units_for_equivalence"] is None
    assert g["seeds_needed"] == math.floor(v_seeds / reach) + 1
    assert v_seeds / g["seeds_needed"] < reach <= v_seeds / (g["seeds_needed"] - 1)


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
    roles = family(p.compare.primary, p.compare.secondary)
    assert list(roles)[0] == "fusion-image/indication" and roles[list(roles)[0]] == "primary"
    assert len(roles) == 6 and sorted(roles.values()).count("secondary") == 5
    assert smallest_adjusted_p(p.compare.bootstrap, 6) < p.compare.alpha


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
    _refused(lambda p: p["compare"].__setitem__("bootstrap", 200),
             r"compare.bootstrap=200 .*family of 6 the smallest Holm-adjusted p is 0.0597, never "
             r"below compare.alpha=0.05; use 240 or more")
    _refused(lambda p: p["compare"].__setitem__("margin", 0), r"compare.margin=0 ")
    _refused(lambda p: p["evaluate"].__setitem__("bootstrap", 1000),
             "evaluate.bootstrap was replaced by compare.bootstrap")
