"""cxrfusion/metrics.py: classification metrics, study aggregation, paired bootstrap intervals."""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from cxrfusion import metrics
from cxrfusion.metrics import (bootstrap_interval, classification_metrics, paired_bootstrap,
                            study_predictions)

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
    assert m["f1"] == pytest.approx(8 / 11)              # 2tp / (2tp + fp + fn)
    # 20 of the 24 (abnormal, normal) pairs are ranked right
    assert m["auroc"] == pytest.approx(20 / 24)
    # precision at each abnormal study, walking down the ranking: 1, 1, 1, 4/5, 5/6, 6/8
    assert m["auprc"] == pytest.approx((1 + 1 + 1 + 4 / 5 + 5 / 6 + 6 / 8) / 6)


def test_classification_metrics_equal_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 57)
    p = np.clip(0.35 * y + rng.random(57) * 0.65, 0, 1)
    m = classification_metrics(y, p, threshold=0.4)
    pred = (p >= 0.4).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["confusion"] == skm.confusion_matrix(y, pred).tolist()
    assert all(isinstance(m[k], float) for k in ("accuracy", "precision", "recall", "f1", "auroc", "auprc"))


def test_threshold_is_inclusive_and_one_class_has_no_ranking_metrics():
    # a probability equal to the threshold is called abnormal
    assert classification_metrics([0, 1], [0.2, 0.7], threshold=0.7)["confusion"] == [[1, 0], [0, 1]]
    m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.6])
    assert m["confusion"] == [[0, 0], [1, 2]]
    assert m["recall"] == pytest.approx(2 / 3)
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    # no predicted positives: precision 0 instead of a warning or an exception
    assert classification_metrics([0, 1], [0.1, 0.2])["precision"] == 0.0


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


def test_no_undefined_metric_warning_escapes(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        for labels, probs in (([1, 1, 1], [0.9, 0.2, 0.6]), ([0, 0], [0.1, 0.2]),
                              ([0, 0], [0.9, 0.8]), ([0, 1], [0.1, 0.2])):
            classification_metrics(labels, probs)
    # an sklearn that warns although zero_division is given (as some versions did for recall
    # without abnormal rows): the warning stays inside, the value is still 0
    real = skm.recall_score

    def warns(*args, **kwargs):
        warnings.warn("Recall is ill-defined", UndefinedMetricWarning)
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics.skm, "recall_score", warns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        assert classification_metrics([0, 0], [0.1, 0.7])["recall"] == 0.0


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
