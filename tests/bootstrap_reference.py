"""The plain percentile bootstrap of one model's metric and of a pair's difference, one seed
each: the reference that tests check statistics.over_seeds against (with one seed per model
and no validation draws, over_seeds gives these intervals exactly), and the tests of
resamples' cluster draws; with the one-model scores (auprc, f1, sensitivity) the pipeline
itself never calls. Not used by the pipeline.
"""
from __future__ import annotations

import numpy as np

from cxrfusion.metrics import auroc, operating_rows, ranking_rows
from cxrfusion.statistics import interval, resamples


def auprc(labels, probs) -> float:
    """Average precision, tied scores one point of the curve: equals sklearn's
    average_precision_score. nan where the labels hold one class only."""
    y, p = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    one_class = not len(y) or y.min() == y.max()
    return float("nan") if one_class else float(ranking_rows(y, p[None])[1][0])


def f1(labels, probs, threshold: float) -> float:
    """F1 of calling abnormal at or above `threshold`; 0 without true positives."""
    return float(operating_rows(labels, np.asarray(probs, np.float64)[None])(threshold)[2][0])


def sensitivity(labels, probs, threshold: float) -> float:
    """Fraction of abnormal studies called abnormal at or above `threshold`; 0 without any."""
    return float(operating_rows(labels, np.asarray(probs, np.float64)[None])(threshold)[0][0])


SCORERS = {"auroc": lambda y, p, t: auroc(y, p), "auprc": lambda y, p, t: auprc(y, p),
           "f1": f1, "sensitivity": sensitivity}  # metric -> f(labels, probabilities, threshold)


def bootstrap_interval(labels, probs, metric: str, n: int, seed: int,
                       threshold: float = 0.5, groups=None) -> dict:
    """One model's metric with a 95 % percentile interval over resampled studies, or over
    resampled `groups` of studies (see resamples; the same resamples as paired_bootstrap with
    the same seed and groups)."""
    y, p, f = np.asarray(labels).astype(int), np.asarray(probs, float), SCORERS[metric]
    values = [f(y[idx], p[idx], threshold) for idx in resamples(y, n, seed, groups)]
    low, high = interval(values)
    return {"value": f(y, p, threshold), "ci95": [float(low), float(high)], "resamples": n,
            "seed": seed}


def paired_bootstrap(labels, probs_a, probs_b, metric: str, n: int, seed: int,
                     threshold: float = 0.5, groups=None) -> dict:
    """Difference metric(a) - metric(b) with a 95 % percentile interval.

    Both models are scored on the same resampled studies in each round (paired), so the
    interval reflects the difference, not each model's own noise. `groups`: see resamples.
    """
    y = np.asarray(labels).astype(int)
    a, b = np.asarray(probs_a, float), np.asarray(probs_b, float)
    f = SCORERS[metric]
    diffs = [f(y[idx], a[idx], threshold) - f(y[idx], b[idx], threshold)
             for idx in resamples(y, n, seed, groups)]
    low, high = interval(diffs)
    return {"difference": f(y, a, threshold) - f(y, b, threshold),
            "ci95": [float(low), float(high)], "resamples": n, "seed": seed}
