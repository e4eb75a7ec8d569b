"""The plain percentile bootstrap of one model's metric and of a pair's difference, one seed
each: the reference that tests check statistics.over_seeds against (with one seed per model
and no validation draws, over_seeds gives these intervals exactly), and the tests of
resamples' cluster draws. Not used by the pipeline.
"""
from __future__ import annotations

import numpy as np

from cxrfusion.metrics import auprc, auroc, f1, sensitivity
from cxrfusion.statistics import interval, resamples

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
