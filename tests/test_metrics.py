"""cxrfusion/metrics.py: classification and ranking metrics, curves, operating points chosen on
validation, calibration, study aggregation; and the bootstrap intervals of
cxrfusion/statistics.py that score with them."""
from __future__ import annotations

import logging
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from bootstrap_reference import auprc, bootstrap_interval, f1, paired_bootstrap, sensitivity
from scipy.stats import rankdata
from sklearn import metrics as skm

from cxrfusion import metrics
from cxrfusion.metrics import (
    auroc,
    brier,
    calibrated_ece,
    calibration,
    calibration_rows,
    choose_threshold,
    classification_metrics,
    ece_bins,
    midranks,
    operating_rows,
    pr_curve,
    ranker,
    roc_curve,
    roc_rows,
    sensitivity_at_specificity,
    study_predictions,
    tpr_at,
)

# 4 normal, 6 abnormal studies; at threshold 0.5: tn 3, fp 1 (0.6), fn 2 (0.3, 0.45), tp 4
LABELS = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
PROBS = [0.1, 0.4, 0.6, 0.2, 0.9, 0.8, 0.3, 0.7, 0.55, 0.45]


def test_classification_metrics_by_hand():
    m = classification_metrics(LABELS, PROBS)
    assert m["n"] == 10
    assert m["confusion"] == [[3, 1], [2, 4]]           # [[tn, fp], [fn, tp]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(8 / 11)              # 2tp / (2tp + fp + fn)
    # 20 of the 24 (abnormal, normal) pairs are ranked right
    assert m["auroc"] == pytest.approx(20 / 24)
    # precision at each abnormal study, walking down the ranking: 1, 1, 1, 4/5, 5/6, 6/8
    assert m["auprc"] == pytest.approx((1 + 1 + 1 + 4 / 5 + 5 / 6 + 6 / 8) / 6)


def _random_case(seed: int, n: int = 57, decimals: int | None = None):
    """Labels of both classes and informative probabilities; rounded, they tie often."""
    rng = np.random.default_rng(seed)
    while True:
        y = rng.integers(0, 2, n)
        if 0 < y.sum() < n:
            break
    p = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    return y, (p if decimals is None else np.round(p, decimals))


@pytest.mark.parametrize("seed, n, decimals", [(3, 57, None), (4, 57, 1), (5, 200, 2),
                                               (6, 9, 1), (7, 31, 0)])
def test_classification_metrics_equal_sklearn(seed, n, decimals):
    y, p = _random_case(seed, n, decimals)
    for threshold in (0.4, 0.5, float(p[0])):            # also a threshold on a score
        m = classification_metrics(y, p, threshold=threshold)
        pred = (p >= threshold).astype(int)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert m["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert m["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
        assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0,
                                                                  zero_division=0))
        assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
        assert m["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
        assert all(type(m[k]) is float for k in ("accuracy", "precision", "recall",
                                                 "specificity", "f1", "auroc", "auprc"))
        assert all(type(v) is int for row in m["confusion"] for v in row)
    if decimals is not None:
        assert len(np.unique(p)) < len(p)                 # the case does hold ties


def test_threshold_is_inclusive_and_one_class_has_no_ranking_metrics():
    # a probability equal to the threshold is called abnormal
    assert (classification_metrics([0, 1], [0.2, 0.7], threshold=0.7)["confusion"]
            == [[1, 0], [0, 1]])
    m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.6])
    assert m["confusion"] == [[0, 0], [1, 2]]
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == 0.0                       # no normal rows: 0, not an error
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    # no predicted positives: precision 0 instead of a warning or an exception
    assert classification_metrics([0, 1], [0.1, 0.2])["precision"] == 0.0
    with pytest.raises(ValueError, match="no rows to score on val"):
        classification_metrics([], [], context="val")
    with pytest.raises(ValueError, match="3 probabilities for 2 labels"):
        classification_metrics([0, 1], [0.1, 0.2, 0.3])


def test_one_class_nan_is_logged_with_its_reason_and_context(caplog):
    with caplog.at_level(logging.WARNING, logger="cxrfusion.metrics"):
        m = classification_metrics([1] * 12, np.linspace(0, 1, 12), context="val, epoch 3")
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert caplog.records[0].getMessage() == ("AUROC and AUPRC are undefined (nan) on val, "
                                              "epoch 3: the 12 rows hold label 1 only")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxrfusion.metrics"):
        classification_metrics([0, 0], [0.9, 0.2])            # context is optional
        assert caplog.records[0].getMessage() == ("AUROC and AUPRC are undefined (nan): the 2 "
                                                  "rows hold label 0 only")
        caplog.clear()
        classification_metrics(LABELS, PROBS)                 # both classes: nothing to say
    assert not caplog.records


def test_no_warning_escapes():
    # the undefined cases are 0 (zero_division) or nan with the log line above; a numpy
    # "invalid value" warning on top would be a second, vaguer message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for labels, probs in (([1, 1, 1], [0.9, 0.2, 0.6]), ([0, 0], [0.1, 0.2]),
                              ([0, 0], [0.9, 0.8]), ([0, 1], [0.1, 0.2]), ([1], [0.3])):
            classification_metrics(labels, probs)
            auroc(labels, probs), auprc(labels, probs)
            f1(labels, probs, 0.5), sensitivity(labels, probs, 0.5)
            roc_curve(labels, probs), pr_curve(labels, probs)


def test_importing_metrics_needs_neither_sklearn_nor_scipy():
    # every pipeline process imports it: sklearn and scipy would cost it about 2 s
    code = ("import sys, cxrfusion.metrics; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=metrics.__file__.rsplit("/cxrfusion/", 1)[0])
    assert out.stdout.strip() == "[]"


# --- ranking metrics and curves -----------------------------------------------------------------

@pytest.mark.parametrize("seed, n, decimals", [(0, 40, None), (1, 40, 1), (2, 300, 2),
                                               (8, 5, 0), (9, 120, 1)])
def test_auroc_auprc_equal_sklearn_with_ties(seed, n, decimals):
    y, p = _random_case(seed, n, decimals)
    assert auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert auprc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert auroc(y, 1 - p) == pytest.approx(1 - auroc(y, p), abs=1e-12)
    assert math.isnan(auroc(np.ones(n), p)) and math.isnan(auprc(np.zeros(n), p))


def test_ranking_by_hand_with_a_tie():
    # abnormal 0.8, 0.5; normal 0.5, 0.2: pairs (0.8, 0.5) 1, (0.8, 0.2) 1, (0.5, 0.5) 1/2,
    # (0.5, 0.2) 1: 3.5 / 4. The tie is one point of the PR curve: at 0.8 precision 1, at 0.5
    # precision 2/3, so AP = (1 + 2/3) / 2 (not 1/2 + 1/2 x 1/2 or 1/2 + 1/2 x 1 by order)
    y, p = [1, 0, 1, 0], [0.8, 0.5, 0.5, 0.2]
    assert auroc(y, p) == 3.5 / 4
    assert auprc(y, p) == pytest.approx((1 + 2 / 3) / 2)
    assert auprc([1, 0, 1, 0], [0.5, 0.5, 0.8, 0.2]) == auprc(y, p)  # the order does not matter


def test_calibration_rows_keep_the_full_samples_bins_across_resamples():
    # 12 distinct scores, 3 equal-mass bins of 4 (by rank); a resample weights each study by
    # its copies: ECE = sum over bins |sum copies x (label - p)| / sum copies
    y = np.array([0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    copies = np.array([2, 0, 1, 1, 3, 0, 1, 2, 1, 0, 0, 1])
    brier_, ece_ = calibration_rows(y, p[None], 3)(copies)
    gap = copies * (y - p)
    assert ece_[0] == pytest.approx(sum(abs(gap[b:b + 4].sum()) for b in (0, 4, 8)) / 12)
    assert brier_[0] == pytest.approx((copies * (p - y) ** 2).sum() / 12)
    assert calibration_rows(y, p[None], 3)()[1][0] == pytest.approx(calibration(y, p, 3)["ece"])


def test_midranks_equal_scipy():
    rng = np.random.default_rng(0)
    x = np.round(rng.random((4, 30)), 1)
    assert np.array_equal(midranks(x), np.vstack([rankdata(row) for row in x]))
    assert np.array_equal(midranks(x[0]), rankdata(x[0]))
    assert midranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_row_kernels_with_copies_equal_the_copied_studies_exactly():
    # a bootstrap round scores each study as often as it was drawn: the same numbers, to the
    # last bit, as scoring the resampled arrays (what bootstrap_interval does)
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 30)
    probs = np.round(rng.random((20, 60)) * 0.7 + 0.3 * y, 1)  # 20 rows: two blocks of rows
    thresholds = rng.random(20)
    rank, score = ranker(y, probs), operating_rows(y, probs)
    roc, calibrate = roc_rows(y, probs, 0.9), calibration_rows(y, probs, 4)
    for _ in range(20):
        idx = rng.integers(0, 60, 60)
        copies = np.bincount(idx, minlength=60)
        a, b = rank(copies), metrics.ranking_rows(y[idx], probs[:, idx])
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
        c, d = score(thresholds, copies), operating_rows(y[idx], probs[:, idx])(thresholds)
        assert all(u.tobytes() == v.tobytes() for u, v in zip(c, d))
        assert roc(copies) == pytest.approx(roc_rows(y[idx], probs[:, idx], 0.9)(), abs=1e-12)
        brier_, ece_ = calibrate(copies)
        for r in (0, 17):                                   # and the one-row functions
            assert a[0][r] == auroc(y[idx], probs[r, idx])
            assert a[1][r] == auprc(y[idx], probs[r, idx])
            assert c[2][r] == f1(y[idx], probs[r, idx], thresholds[r])
            assert c[0][r] == sensitivity(y[idx], probs[r, idx], thresholds[r])
            assert c[1][r] == skm.recall_score(1 - y[idx], probs[r, idx] < thresholds[r])
            assert brier_[r] == pytest.approx(brier(y[idx], probs[r, idx]))
        assert a[0][3] == pytest.approx(skm.roc_auc_score(y[idx], probs[3, idx]))
        assert a[1][3] == pytest.approx(skm.average_precision_score(y[idx], probs[3, idx]))


def test_f1_and_sensitivity_by_hand():
    # at 0.5: tp 4 (0.9, 0.8, 0.7, 0.55), fp 1 (0.6), fn 2 (0.3, 0.45)
    assert f1(LABELS, PROBS, 0.5) == pytest.approx(8 / 11)
    assert sensitivity(LABELS, PROBS, 0.5) == pytest.approx(4 / 6)
    assert sensitivity(LABELS, PROBS, 0.55) == pytest.approx(4 / 6)  # inclusive
    assert sensitivity(LABELS, PROBS, 0.56) == pytest.approx(3 / 6)
    assert f1(LABELS, PROBS, 0.95) == 0.0 and sensitivity(LABELS, PROBS, 0.95) == 0.0
    assert sensitivity([0, 0], [0.9, 0.1], 0.5) == 0.0       # no abnormal: 0


@pytest.mark.parametrize("seed, n, decimals", [(0, 40, None), (1, 40, 1), (2, 7, 0)])
def test_curves_equal_sklearn(seed, n, decimals):
    y, p = _random_case(seed, n, decimals)
    for ours, theirs in zip(roc_curve(y, p), skm.roc_curve(y, p, drop_intermediate=False)):
        assert ours.shape == theirs.shape
        assert np.allclose(ours, theirs)
    precision, recall, thresholds = skm.precision_recall_curve(y, p)
    for ours, theirs in zip(pr_curve(y, p), (recall, precision, thresholds)):
        assert ours.shape == theirs.shape
        assert np.allclose(ours, theirs)
    # the area under our PR points, as average precision sums it, is the AUPRC
    r, pr, _ = pr_curve(y, p)
    assert -np.sum(np.diff(r) * pr[:-1]) == pytest.approx(auprc(y, p))


def test_curves_by_hand():
    fpr, tpr, thresholds = roc_curve([0, 1, 1, 0], [0.1, 0.5, 0.5, 0.3])
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 1, 1, 1]
    assert thresholds.tolist() == [np.inf, 0.5, 0.3, 0.1]
    recall, precision, thresholds = pr_curve([0, 1, 1, 0], [0.1, 0.5, 0.5, 0.3])
    assert recall.tolist() == [1, 1, 1, 0] and thresholds.tolist() == [0.1, 0.3, 0.5]
    assert precision.tolist() == pytest.approx([2 / 4, 2 / 3, 1, 1])


# --- operating points ---------------------------------------------------------------------------

# 4 abnormal, 4 normal validation studies. Called abnormal at or above each distinct score:
#   score   0.9  0.8  0.7  0.6  0.5  0.4  0.3  0.2
#   tp       1    2    2    3    3    3    4    4
#   fp       0    0    1    1    2    3    3    4
#   youden  1/4  1/2  1/4  1/2  1/4   0   1/4   0     (tp/4 - fp/4)
#   f1      2/5  4/6  4/7  6/8  6/9  6/10 8/11 8/12   (2tp / (tp + fp + 4))
# youden: 1/2 at 0.8 and at 0.6, the higher wins: halfway to 0.7 -> 0.75;
# max_f1: 3/4 at 0.6: halfway to 0.5 -> 0.55
VAL_LABELS = [1, 1, 0, 1, 0, 0, 1, 0]
VAL_PROBS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]


def test_youden_and_max_f1_by_hand_differ():
    youden = choose_threshold(VAL_LABELS, VAL_PROBS, "youden")
    best_f1 = choose_threshold(VAL_LABELS, VAL_PROBS, "max_f1")
    assert youden == pytest.approx(0.75) and best_f1 == pytest.approx(0.55)
    # the order of the studies does not matter
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = (np.array(VAL_LABELS)[order], np.array(VAL_PROBS)[order])
    assert choose_threshold(*shuffled, "youden") == youden
    assert choose_threshold(*shuffled, "max_f1") == best_f1
    # and the validation calls are those of the chosen score
    p = np.array(VAL_PROBS)
    assert ((p >= youden) == (p >= 0.8)).all() and ((p >= best_f1) == (p >= 0.6)).all()
    assert classification_metrics(VAL_LABELS, VAL_PROBS, best_f1)["f1"] == pytest.approx(3 / 4)


def test_operating_points_with_tied_scores():
    # abnormal 0.9, 0.6, 0.6; normal 0.6, 0.2, 0.2. At 0.9: tp 1, fp 0 (youden 1/3, f1 2/4);
    # at 0.6: tp 3, fp 1 (youden 2/3, f1 6/7); at 0.2: tp 3, fp 3 (youden 0, f1 6/9).
    # Both pick 0.6 - all three tied studies together - halfway to 0.2: 0.4
    y, p = [1, 1, 0, 1, 0, 0], [0.9, 0.6, 0.6, 0.6, 0.2, 0.2]
    assert choose_threshold(y, p, "youden") == pytest.approx(0.4)
    assert choose_threshold(y, p, "max_f1") == pytest.approx(0.4)


def test_lowest_score_chosen_goes_halfway_to_zero():
    # abnormal 0.3, 0.1; normal 0.2. f1: at 0.3 2/3, at 0.2 2/4, at 0.1 4/5 -> 0.1, halfway to
    # 0.0: 0.05. youden: at 0.3 1/2, at 0.2 -1/2, at 0.1 0 -> 0.3, halfway to 0.2: 0.25
    y, p = [1, 0, 1], [0.3, 0.2, 0.1]
    assert choose_threshold(y, p, "max_f1") == pytest.approx(0.05)
    assert choose_threshold(y, p, "youden") == pytest.approx(0.25)
    assert choose_threshold([1, 0], [0.0, 0.0], "max_f1") == 0.0  # nothing below 0.0


def test_a_number_is_the_threshold_and_bad_rules_are_refused():
    assert choose_threshold(VAL_LABELS, VAL_PROBS, 0.3) == 0.3
    assert choose_threshold(VAL_LABELS, VAL_PROBS, 1) == 1.0
    assert choose_threshold([1, 1], [0.2, 0.3], np.float32(0.5)) == 0.5  # labels not needed
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="not a probability in"):
            choose_threshold(VAL_LABELS, VAL_PROBS, bad)
    for bad in ("youdens", "0.5", True, None):
        with pytest.raises(ValueError, match="unknown threshold rule.*youden, max_f1"):
            choose_threshold(VAL_LABELS, VAL_PROBS, bad)
    for rule in ("youden", "max_f1"):
        with pytest.raises(ValueError, match="both labels; these 3 hold label 1 only"):
            choose_threshold([1, 1, 1], [0.2, 0.5, 0.9], rule)
        with pytest.raises(ValueError, match="both labels; these 0 hold nothing"):
            choose_threshold([], [], rule)
        with pytest.raises(ValueError, match="2 probabilities for 3 labels"):
            choose_threshold([0, 1, 1], [0.2, 0.5], rule)


# --- sensitivity at a fixed specificity: the test ROC, threshold-free --------------------------

def test_sensitivity_at_specificity_reads_sklearns_roc_as_drawn():
    # by hand from sklearn's roc_curve points: the top of a vertical rise at 1 - specificity,
    # else the straight line between the points on either side (what the ROC figure draws)
    rng = np.random.default_rng(3)
    for trial in range(120):
        n = int(rng.integers(6, 70))
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        p = np.round(rng.random(n) * 0.6 + 0.4 * y, int(rng.integers(1, 3)))  # ties, often
        spec = float(rng.choice([0.9, 0.8, 0.95, 0.5, 1.0, 0.0]))
        fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
        x = 1 - spec
        at = np.flatnonzero(np.isclose(fpr, x, atol=1e-12))
        if at.size:
            expected = tpr[at].max()
        else:
            a, b = np.flatnonzero(fpr < x)[-1], np.flatnonzero(fpr > x)[0]
            expected = tpr[a] + (tpr[b] - tpr[a]) * (x - fpr[a]) / (fpr[b] - fpr[a])
        assert sensitivity_at_specificity(y, p, spec) == pytest.approx(expected, abs=1e-9)
        assert roc_rows(y, p[None], spec)()[0] == pytest.approx(expected, abs=1e-9)


def test_sensitivity_at_specificity_by_hand():
    # normal 0.1 0.2 0.3 0.4 0.8, abnormal 0.35 0.6 0.7 0.9: the curve (fpr, tpr) runs
    # (0,0) (0,1/4) (1/5,1/4) (1/5,2/4) (1/5,3/4) (2/5,3/4) (2/5,1) ... (1,1)
    y, p = [0, 0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.8, 0.35, 0.6, 0.7, 0.9]
    assert sensitivity_at_specificity(y, p, 0.9) == pytest.approx(1 / 4)   # on the flat part
    assert sensitivity_at_specificity(y, p, 0.8) == pytest.approx(3 / 4)   # top of the rise
    assert sensitivity_at_specificity(y, p, 0.7) == pytest.approx(3 / 4)
    # tied scores: one abnormal and one normal at 0.5 are one diagonal step, from (0, 1/2)
    # after the abnormal 0.9 to (1/2, 1): halfway along it at specificity 3/4
    assert sensitivity_at_specificity([0, 1, 0, 1], [0.5, 0.9, 0.2, 0.5], 0.75) == (
        pytest.approx(0.75))
    assert tpr_at(np.array([0, 0.5, 0.5, 1]), np.array([0, 0.2, 0.6, 1]), [0.25, 0.5]) == (
        pytest.approx([0.1, 0.6]))


def test_operating_points_on_random_validation_sets_are_the_best_candidates():
    # brute force over the candidates: the objective at the returned threshold is the maximum
    for seed in range(6):
        y, p = _random_case(seed, 50, 1 if seed % 2 else None)
        scores = np.unique(p)
        for rule, objective in (("youden", lambda m: m["recall"] + m["specificity"] - 1),
                                ("max_f1", lambda m: m["f1"])):
            t = choose_threshold(y, p, rule)
            best = max(objective(classification_metrics(y, p, s)) for s in scores)
            assert objective(classification_metrics(y, p, t)) == pytest.approx(best)
            assert not np.isin(t, p) or t == 0.0                  # not on a validation score


# --- calibration --------------------------------------------------------------------------------

# 8 studies (label): 0.1 (0), 0.2 (0), 0.3 (1), 0.25 (0), 0.6 (1), 0.7 (0), 0.9 (1), 1.0 (1)
CAL_LABELS = [0, 0, 1, 0, 1, 0, 1, 1]
CAL_PROBS = [0.1, 0.2, 0.3, 0.25, 0.6, 0.7, 0.9, 1.0]
# Brier: (0.01 + 0.04 + 0.49 + 0.0625 + 0.16 + 0.49 + 0.01 + 0) / 8 = 1.2625 / 8


def test_calibration_by_hand_equal_mass_bins():
    # sorted: 0.1 (0), 0.2 (0), 0.25 (0), 0.3 (1) | 0.6 (1), 0.7 (0), 0.9 (1), 1.0 (1)
    #   two bins of 4: mean 0.2125, abnormal 1/4 -> 0.0375; mean 0.8, abnormal 3/4 -> 0.05
    # ECE = 4/8 x (0.0375 + 0.05) = 0.04375
    c = calibration(CAL_LABELS, CAL_PROBS, bins=2)
    assert c["ece"] == pytest.approx(0.04375)
    assert c["brier"] == pytest.approx(1.2625 / 8) == brier(CAL_LABELS, CAL_PROBS)
    assert c["binning"] == "2 equal-mass bins"
    assert [(b["low"], b["high"], b["n"]) for b in c["bins"]] == [(0.1, 0.3, 4), (0.6, 1.0, 4)]
    assert [b["mean_probability"] for b in c["bins"]] == pytest.approx([0.2125, 0.8])
    assert [b["fraction_abnormal"] for b in c["bins"]] == [0.25, 0.75]
    # four bins of two: |0 - 0.15|, |0.5 - 0.275|, |0.5 - 0.65|, |1 - 0.95|, 2/8 each
    assert calibration(CAL_LABELS, CAL_PROBS, bins=4)["ece"] == pytest.approx(0.14375)


def test_calibration_default_bins_follow_the_number_of_studies_and_keep_ties_together():
    assert [ece_bins(n) for n in (1, 8, 9, 27, 28, 98, 700)] == [1, 2, 3, 3, 4, 5, 9]
    c = calibration(CAL_LABELS, CAL_PROBS)  # 8 studies: 2 bins
    assert c["binning"] == "2 equal-mass bins" and len(c["bins"]) == 2
    # five tied scores cannot be split: the bins take them whole
    c = calibration([0, 1, 0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.9], bins=2)
    assert [b["n"] for b in c["bins"]] == [5, 1]
    assert c["ece"] == pytest.approx((5 * abs(0.6 - 0.5) + abs(0 - 0.9)) / 6)


def test_calibrated_ece_is_the_noise_floor_of_a_calibrated_model():
    # one bin, every probability 0.5, 100 studies: the 95th percentile of |B(100, 1/2) / 100 -
    # 1/2|, which is 0.10 (P(|X - 50| >= 10) = 0.057, >= 11: 0.035)
    assert calibrated_ece(np.full(100, 0.5), bins=1, draws=4000) == pytest.approx(0.10, abs=0.011)
    # sure probabilities leave little to chance; more studies, a lower floor; seeded
    assert calibrated_ece(np.r_[np.full(50, 0.01), np.full(50, 0.99)], bins=2) < 0.03
    rng = np.random.default_rng(0)
    small, large = rng.random(100), rng.random(1000)
    assert calibrated_ece(large) < calibrated_ece(small)
    assert calibrated_ece(small) == calibrated_ece(small) != calibrated_ece(small, seed=1)


def test_calibration_of_a_calibrated_and_of_a_confident_wrong_model():
    # each bin's probability is its fraction abnormal: ECE 0; always sure and always wrong: 1
    y = [0, 0, 0, 1, 1, 1, 1, 0]
    assert calibration(y, [0.25] * 4 + [0.75] * 4, bins=2)["ece"] == pytest.approx(0, abs=1e-15)
    # the same probabilities, labels swapped between the halves: |0.75 - 0.25| in each bin
    assert calibration(y[::-1], [0.25] * 4 + [0.75] * 4, bins=2)["ece"] == pytest.approx(0.5)
    assert calibration([0, 1, 0, 1], [0.5] * 4)["ece"] == 0.0
    assert calibration([0, 1], [1.0, 0.0], bins=2)["ece"] == 1.0
    assert calibration([0, 1], [1.0, 0.0])["brier"] == 1.0
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        calibration([0, 1], [0.5, 1.2])
    with pytest.raises(ValueError, match="one per study"):
        calibration([], [])
    with pytest.raises(ValueError, match="whole number"):
        calibration([0, 1], [0.5, 0.5], bins=0)


def test_study_predictions_mean_per_uid():
    images = pd.DataFrame({
        "uid": [7, 3, 5, 7, 5],
        "filename": ["7a.png", "3a.png", "5a.png", "7b.png", "5b.png"],
        "label": [0, 1, 1, 0, 1],
        "probability": [0.2, 0.9, 0.1, 0.4, 0.5],
    })
    studies = study_predictions(images)
    assert list(studies.columns) == ["uid", "label", "probability"]
    assert studies["uid"].tolist() == [3, 5, 7]            # one row per study, sorted by uid
    assert studies["label"].tolist() == [1, 1, 0]
    assert studies["probability"].tolist() == pytest.approx([0.9, 0.3, 0.3])


# --- paired bootstrap ----------------------------------------------------------------------------

def _example(n=80, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    good = np.clip(0.5 * y + 0.5 * rng.random(n), 0, 1)     # informative scores
    noisy = np.clip(0.15 * y + 0.85 * rng.random(n), 0, 1)  # weakly informative scores
    return y, good, noisy


@pytest.mark.parametrize("metric", ["auroc", "f1"])
def test_paired_bootstrap_seeded(metric):
    y, a, b = _example()
    first = paired_bootstrap(y, a, b, metric, n=200, seed=1)
    again = paired_bootstrap(y, a, b, metric, n=200, seed=1)
    other = paired_bootstrap(y, a, b, metric, n=200, seed=2)
    assert first == again
    assert first["ci95"] != other["ci95"]
    assert first["difference"] == other["difference"]  # the point estimate does not resample
    assert first["resamples"] == 200 and first["seed"] == 1


@pytest.mark.parametrize("metric", ["auroc", "f1"])
def test_paired_bootstrap_point_estimate_and_interval(metric):
    y, a, b = _example(seed=4)
    # a mildly better model: the interval straddles the point estimate
    noisy = np.clip(a + np.random.default_rng(9).normal(0, 0.25, len(a)), 0, 1)
    r = paired_bootstrap(y, a, noisy, metric, n=300, seed=0)
    f = {"auroc": lambda p: skm.roc_auc_score(y, p),
         "f1": lambda p: skm.f1_score(y, (p >= 0.5).astype(int))}[metric]
    assert r["difference"] == pytest.approx(f(a) - f(noisy))
    low, high = r["ci95"]
    assert low <= r["difference"] <= high and low < high
    assert high - low < 1


@pytest.mark.parametrize("metric", ["auroc", "f1"])
def test_paired_bootstrap_model_against_itself_is_zero(metric):
    y, a, _ = _example()
    r = paired_bootstrap(y, a, a, metric, n=100, seed=0)
    assert r["difference"] == 0.0
    assert list(r["ci95"]) == [0.0, 0.0]


def test_paired_bootstrap_clearly_better_model_is_positive():
    y, good, noisy = _example(n=60, seed=7)
    assert skm.roc_auc_score(y, good) > skm.roc_auc_score(y, noisy) + 0.2  # the example is clear
    for metric in ("auroc", "f1"):
        r = paired_bootstrap(y, good, noisy, metric, n=300, seed=0)
        assert r["difference"] > 0
        assert 0 < r["ci95"][0] <= r["ci95"][1]
        # and the reverse comparison is its mirror image in sign
        back = paired_bootstrap(y, noisy, good, metric, n=300, seed=0)
        assert back["difference"] == pytest.approx(-r["difference"])
        assert back["ci95"][1] < 0


def test_paired_bootstrap_threshold_and_one_class_resamples():
    # 2 abnormal of 12: many resamples hold one class only and must be redrawn, not scored
    y = np.array([0] * 10 + [1] * 2)
    a = np.linspace(0.05, 0.95, 12)
    b = a[::-1].copy()
    r = paired_bootstrap(y, a, b, "auroc", n=100, seed=0)
    assert r["difference"] == pytest.approx(1.0 - 0.0)
    assert all(np.isfinite(r["ci95"]))
    # f1 follows the threshold: with threshold 0.9 model a calls only the top study abnormal
    r = paired_bootstrap(y, a, b, "f1", n=50, seed=0, threshold=0.9)
    assert r["difference"] == pytest.approx(skm.f1_score(y, (a >= 0.9).astype(int))
                                            - skm.f1_score(y, (b >= 0.9).astype(int)))


# --- one model's interval -------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["auroc", "f1"])
def test_bootstrap_interval_seeded_and_around_the_estimate(metric):
    y, _, noisy = _example(seed=3)  # an imperfect model: its interval has a width
    r = bootstrap_interval(y, noisy, metric, n=200, seed=1)
    assert r == bootstrap_interval(y, noisy, metric, n=200, seed=1)
    assert r["ci95"] != bootstrap_interval(y, noisy, metric, n=200, seed=2)["ci95"]
    f = {"auroc": skm.roc_auc_score(y, noisy), "f1": skm.f1_score(y, (noisy >= 0.5).astype(int))}
    assert r["value"] == pytest.approx(f[metric])
    low, high = r["ci95"]
    assert 0 <= low < r["value"] < high <= 1
    assert r["resamples"] == 200 and r["seed"] == 1


def test_bootstrap_interval_narrows_with_more_studies():
    # the same kind of scores on 40 and on 800 studies: the interval shrinks about as 1/sqrt(n)
    widths = []
    for n in (40, 800):
        y, _, noisy = _example(n=n, seed=5)
        low, high = bootstrap_interval(y, noisy, "auroc", n=300, seed=0)["ci95"]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5


def test_bootstrap_interval_of_a_perfect_model_is_a_point():
    y = np.array([0, 1] * 10)
    r = bootstrap_interval(y, y * 0.8 + 0.1, "auroc", n=50, seed=0)
    assert r["value"] == 1.0 and r["ci95"] == [1.0, 1.0]


def test_interval_and_difference_resample_the_same_studies():
    # with one seed both draw the same resamples: a model compared with a constant-AUROC
    # twin (scores reversed give 1 - AUROC on every resample) has difference 2 x AUROC - 1
    y, _, noisy = _example(seed=6)
    single = bootstrap_interval(y, noisy, "auroc", n=100, seed=4)
    assert single["ci95"][0] < single["ci95"][1]
    paired = paired_bootstrap(y, noisy, 1 - noisy, "auroc", n=100, seed=4)
    assert paired["ci95"] == pytest.approx([2 * v - 1 for v in single["ci95"]])


def test_bootstrap_refuses_test_studies_of_one_class():
    with pytest.raises(ValueError, match="one class only"):
        bootstrap_interval(np.ones(10), np.linspace(0, 1, 10), "auroc", n=10, seed=0)
    with pytest.raises(ValueError, match="one class only"):
        paired_bootstrap(np.zeros(10), np.linspace(0, 1, 10), np.ones(10), "f1", n=10, seed=0)
