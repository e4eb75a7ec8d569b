"""Classification metrics, study-level aggregation and bootstrap intervals (one model; paired).

Label 1 (abnormal) is the positive class throughout, as in the original.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def classification_metrics(labels, probs, threshold: float = 0.5) -> dict:
    """accuracy, precision, recall, f1, auroc, auprc and the confusion matrix [[tn, fp], [fn, tp]]."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2  # ranking metrics need both classes
    return {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "auroc": float(skm.roc_auc_score(y, p)) if both else float("nan"),
        "auprc": float(skm.average_precision_score(y, p)) if both else float("nan"),
        "confusion": skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),
    }


def study_predictions(images: pd.DataFrame) -> pd.DataFrame:
    """One row per study: its label and the mean probability over its images."""
    return (images.groupby("uid", sort=True)
            .agg(label=("label", "first"), probability=("probability", "mean"))
            .reset_index())


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mann-Whitney form of the AUROC (ties count one half): equals sklearn's, ~50x faster."""
    from scipy.stats import rankdata

    ranks = rankdata(probs)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), len(labels) - pos.sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    pred = probs >= threshold
    tp = np.sum(pred & (labels == 1))
    wrong = np.sum(pred != (labels == 1))
    return float(2 * tp / (2 * tp + wrong)) if tp else 0.0


METRICS = {"auroc": lambda y, p, t: auroc(y, p), "f1": f1}


def resamples(labels: np.ndarray, n: int, seed: int):
    """`n` seeded bootstrap resamples (index arrays) of the studies. A resample that holds one
    class only cannot be scored by the ranking metrics and is redrawn."""
    if len(np.unique(labels)) < 2:
        raise ValueError("the test studies hold one class only: no metric can be compared on "
                         "them; use a larger split.test.")
    rng = np.random.default_rng(seed)
    while n:
        idx = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[idx])) == 2:
            n -= 1
            yield idx


def bootstrap_interval(labels, probs, metric: str, n: int, seed: int,
                       threshold: float = 0.5) -> dict:
    """One model's metric with a 95 % percentile interval over resampled studies (the same
    resamples as paired_bootstrap with the same seed)."""
    y, p, f = np.asarray(labels).astype(int), np.asarray(probs, float), METRICS[metric]
    values = [f(y[idx], p[idx], threshold) for idx in resamples(y, n, seed)]
    low, high = np.percentile(values, [2.5, 97.5])
    return {"value": f(y, p, threshold), "ci95": [float(low), float(high)], "resamples": n,
            "seed": seed}


def paired_bootstrap(labels, probs_a, probs_b, metric: str, n: int, seed: int,
                     threshold: float = 0.5) -> dict:
    """Difference metric(a) - metric(b) with a 95 % percentile interval.

    Both models are scored on the same resampled studies in each round (paired), so the
    interval reflects the difference, not each model's own noise.
    """
    y = np.asarray(labels).astype(int)
    a, b = np.asarray(probs_a, float), np.asarray(probs_b, float)
    f = METRICS[metric]
    diffs = [f(y[idx], a[idx], threshold) - f(y[idx], b[idx], threshold)
             for idx in resamples(y, n, seed)]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": f(y, a, threshold) - f(y, b, threshold),
            "ci95": [float(low), float(high)], "resamples": n, "seed": seed}
