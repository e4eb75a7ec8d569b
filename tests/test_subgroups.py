"""Robustness by subgroup: which test studies form each subgroup (cxrfusion/subgroups.py), and
each model's AUROC and each pair's difference on them, scored within the comparison's own
bootstrap rounds (statistics.on_subgroups): the whole test set gives over_seeds' numbers, a
subgroup's rounds match a hand computation with scikit-learn, and a round without both labels
is skipped and not counted."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrfusion import params as params_mod
from cxrfusion import subgroups
from cxrfusion.common import PipelineError
from cxrfusion.statistics import interval, on_subgroups, over_seeds, resamples

PAIRS = [("a", "b"), ("b", "c")]


def _models(y: np.ndarray, seeds: int, rng: np.random.Generator) -> dict:
    """Three models of increasing noise, `seeds` rows each, thresholds at 0.5."""
    return {name: {"probs": np.clip(y * strength + rng.random((seeds, len(y))), 0, 2) / 2,
                   "thresholds": np.full(seeds, 0.5)}
            for name, strength in (("a", 0.8), ("b", 0.4), ("c", 0.1))}


def test_the_whole_test_set_gives_the_comparisons_own_numbers():
    """Same labels, models, resamples, seed and groups: the same rounds as over_seeds, so a
    subgroup holding every test study reproduces its AUROC means and intervals exactly."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    models = _models(y, 3, rng)
    groups = np.arange(80) // 2  # two studies a patient
    whole = over_seeds(y, models, PAIRS, n=300, seed=5, groups=groups, level=0.9)
    sub = on_subgroups(y, models, PAIRS, {"all": np.ones(80, bool)}, n=300, seed=5,
                       groups=groups, level=0.9)["all"]
    assert sub["rounds"] == 300 and sub["studies"] == 80 and sub["abnormal"] == int(y.sum())
    for got, expected in [(sub["models"][m], whole["models"][m]["auroc"]) for m in models] + [
            (sub["pairs"][f"{a} - {b}"], whole["pairs"][f"{a} - {b}"]["auroc"]) for a, b in PAIRS]:
        assert (got["low"], got["high"]) == (expected["low"], expected["high"])
        assert got["mean"] == pytest.approx(expected["mean"], abs=1e-15)


def test_a_subgroup_matches_a_hand_computation_and_skips_rounds_without_both_labels():
    """One seed per model (every seed draw is row 0): each round is the AUROC of the drawn
    copies of the subgroup's members, here by scikit-learn with the copies as weights; rounds
    whose drawn members hold one label are skipped."""
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 30)
    models = _models(y, 1, rng)
    member = np.zeros(60, bool)
    member[[0, 1, 2, 3, 5]] = True  # 2 normal, 3 abnormal: many rounds lack a label
    got = on_subgroups(y, models, PAIRS, {"few": member}, n=400, seed=2)["few"]
    rounds = {name: [] for name in models}
    for idx in resamples(y, 400, 2):
        weight = np.bincount(idx, minlength=60) * member
        if weight[y == 1].sum() == 0 or weight[y == 0].sum() == 0:
            continue
        for name, m in models.items():
            rounds[name].append(roc_auc_score(y, m["probs"][0], sample_weight=weight))
    assert 0 < got["rounds"] == len(rounds["a"]) < 400
    for name, m in models.items():
        assert got["models"][name]["mean"] == pytest.approx(
            roc_auc_score(y[member], m["probs"][0][member]), abs=1e-12)
        low, high = interval(rounds[name], 0.95)
        assert got["models"][name]["low"] == pytest.approx(low, abs=1e-12)
        assert got["models"][name]["high"] == pytest.approx(high, abs=1e-12)
    diff = np.array(rounds["a"]) - np.array(rounds["b"])
    assert (got["pairs"]["a - b"]["low"], got["pairs"]["a - b"]["high"]) == pytest.approx(
        interval(diff, 0.95), abs=1e-12)


def test_too_few_scored_rounds_give_no_interval_and_bad_members_are_refused():
    y = np.array([0, 1] * 10)
    models = _models(y, 2, np.random.default_rng(3))
    one_each = np.zeros(20, bool)
    one_each[[0, 1]] = True
    got = on_subgroups(y, models, PAIRS, {"two": one_each}, n=20, seed=0)["two"]
    assert got["rounds"] < 20 and got["models"]["a"]["low"] is None  # too few for 95 %
    with pytest.raises(ValueError, match="one bool per test study"):
        on_subgroups(y, models, PAIRS, {"bad": np.ones(19, bool)}, n=20, seed=0)
    with pytest.raises(ValueError, match="one bool per test study"):
        on_subgroups(y, models, PAIRS, {"bad": np.ones(20)}, n=20, seed=0)


# --- which studies form each subgroup -------------------------------------------------------

def _studies(views="Frontal+Lateral") -> pd.DataFrame:
    """12 training studies of 1..12 words of indication, and 6 test studies."""
    train = pd.DataFrame({"uid": range(12), "split": "train",
                          "indication": [" ".join(["w"] * k) for k in range(1, 13)]})
    test = pd.DataFrame({"uid": range(100, 106), "split": "test",
                         "indication": ["", "w", "w " * 4, "w " * 5, "w " * 8, "w " * 9]})
    studies = pd.concat([train, test], ignore_index=True)
    studies["n_images"] = [1, 2] * 9
    studies["views"] = views if isinstance(views, str) else views * 9
    studies["findings"] = studies["impression"] = ""
    return studies


def test_members_by_view_images_and_report_length_cut_on_the_training_studies():
    studies = _studies(views=["Frontal", "Frontal+Lateral"])
    groups, left_out = subgroups.members(studies, range(100, 106), list(params_mod.SUBGROUPS),
                                         ["indication"])
    assert left_out == []
    # the training lengths 1..12: tertiles 4.67 and 8.33, cut at 4 and 8 words
    assert np.quantile(np.arange(1, 13), [1 / 3, 2 / 3]) == pytest.approx([4.667, 8.333],
                                                                           abs=1e-3)
    assert groups["indication: ≤ 4 words"].tolist() == [True, True, True, False, False, False]
    assert groups["indication: 5–8 words"].tolist() == [False, False, False, True, True, False]
    assert groups["indication: > 8 words"].tolist() == [False] * 5 + [True]
    assert groups["with a lateral view"].tolist() == [False, True] * 3
    assert (groups["without a lateral view"] == ~groups["with a lateral view"]).all()
    assert groups["one image"].tolist() == [True, False] * 3
    assert list(groups)[:4] == ["with a lateral view", "without a lateral view", "one image",
                                "several images"]


def test_tied_tertiles_merge_and_unknown_views_are_left_out_with_the_reason():
    studies = _studies(views="Unknown")
    studies.loc[studies["split"] == "train", "indication"] = [""] * 9 + ["a b", "a b c", "a"]
    groups, left_out = subgroups.members(studies, range(100, 106), ["view", "words"],
                                         ["indication"])
    assert list(groups) == ["indication: 0 words", "indication: > 0 words"]  # both cuts at 0
    assert groups["indication: 0 words"].tolist() == [True] + [False] * 5
    assert left_out == ["view: the dataset names no image's view (every view Unknown)"]


def test_params_refuse_an_unknown_subgroup(params):
    params.study_report.subgroups = ["view", "age"]
    with pytest.raises(PipelineError, match="study_report.subgroups"):
        params_mod.validate(params)
    params.study_report.subgroups = []
    params_mod.validate(params)
    params.study_report.min_per_label = 0
    with pytest.raises(PipelineError, match="study_report.min_per_label"):
        params_mod.validate(params)
