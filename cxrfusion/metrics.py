"""Metrics of one model: classification metrics, ranking metrics and their curves, operating
points chosen on validation, calibration, and study-level aggregation; and MEASURES, the one
table of the measures the comparison scores on every seed row (its kernels, columns, panels).

Label 1 (abnormal) is the positive class throughout, as in the original. Every pipeline process
imports this module, so it needs numpy, pandas and cxrfusion.params only (no sklearn, no scipy:
about 2 s of imports each). Intervals and model comparisons are in cxrfusion/statistics.py.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import numpy as np
import pandas as pd

from cxrfusion.params import THRESHOLD_RULES  # evaluate.threshold's rules, applied here

log = logging.getLogger(__name__)


# --- row kernels: many score rows on the same studies, one sort per row ------------------------

def _tie_runs(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted ascending: the first and last position of each element's run of ties."""
    r, k = ordered.shape
    pos = np.broadcast_to(np.arange(k), (r, k))
    differs = ordered[:, 1:] != ordered[:, :-1]
    starts = np.concatenate([np.ones((r, 1), bool), differs], axis=1)
    ends = np.concatenate([differs, np.ones((r, 1), bool)], axis=1)
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, k)[:, ::-1], axis=1)[:, ::-1]
    return first, last


def midranks(x) -> np.ndarray:
    """Ranks 1..k along the last axis, ties sharing the mean of their ranks (scipy's rankdata,
    method "average")."""
    x = np.asarray(x, dtype=np.float64)
    if not x.size:
        return x.copy()
    rows = x.reshape(-1, x.shape[-1])
    order = np.argsort(rows, axis=1)
    first, last = _tie_runs(np.take_along_axis(rows, order, axis=1))
    ranks = np.empty_like(rows)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=1)
    return ranks.reshape(x.shape)


_BLOCK = 16  # rows


def ranker(labels, probs):
    """A function of `copies` (how often each study counts, e.g. in a bootstrap resample; None:
    once) giving the AUROC and AUPRC of each row of `probs` (rows, studies) against the 0/1
    `labels`. The rows are sorted once, here, not on every call; nan where a class is missing.

    Both are sums over runs of tied scores: AUROC = sum of abnormal x (normal below + half the
    normal tied) / (abnormal x normal), Mann-Whitney as sklearn's roc_auc_score; AUPRC = sum of
    the abnormal in a run x the precision at its score / abnormal, tied scores one point of the
    curve as in sklearn's average_precision_score. The AUROC sum is exact in float64 and the
    AUPRC sum runs in score order, so a study copied k times scores exactly as k studies of
    that score and label.
    """
    y = np.asarray(labels) == 1
    p = np.asarray(probs, dtype=np.float64)
    rows, k = p.shape
    if rows > _BLOCK:  # blocks of rows whose temporaries stay in the cache: ~2x faster
        parts = [ranker(labels, p[i:i + _BLOCK]) for i in range(0, rows, _BLOCK)]

        def rank_blocks(copies=None) -> tuple[np.ndarray, np.ndarray]:
            aurocs, auprcs = zip(*(part(copies) for part in parts))
            return np.concatenate(aurocs), np.concatenate(auprcs)
        return rank_blocks
    order = np.argsort(p, axis=1)
    first, last = _tie_runs(np.take_along_axis(p, order, axis=1))
    # masks as 0/1 floats and flat indices: products and take are several times faster than
    # np.where and take_along_axis, and this runs once per bootstrap round
    pos = y[order].astype(np.float64)
    ends = (last == np.arange(k)).astype(np.float64)  # the last position of each run
    below = (first + (k + 1) * np.arange(rows)[:, None]).ravel()  # in sums with a 0 column

    def rank(copies=None) -> tuple[np.ndarray, np.ndarray]:
        w = np.ones(p.shape) if copies is None else np.asarray(copies, np.float64).take(order)
        cum_pos, cum_all = np.zeros((rows, k + 1)), np.zeros((rows, k + 1))
        np.cumsum(w * pos, axis=1, out=cum_pos[:, 1:])
        np.cumsum(w, axis=1, out=cum_all[:, 1:])
        pos_below = cum_pos.ravel().take(below).reshape(p.shape)  # before the run
        all_below = cum_all.ravel().take(below).reshape(p.shape)
        n_pos, n_all = cum_pos[:, -1:], cum_all[:, -1:]
        run_pos = ends * (cum_pos[:, 1:] - pos_below)  # at the runs' ends only
        run_neg = cum_all[:, 1:] - all_below - run_pos
        pairs = (run_pos * (all_below - pos_below + run_neg / 2)).sum(axis=1)
        terms = run_pos * ((n_pos - pos_below) / np.maximum(n_all - all_below, 1))
        n_pos, n_neg = n_pos[:, 0], n_all[:, 0] - n_pos[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            # cumsum adds in order, so runs without studies (0) change nothing
            return pairs / (n_pos * n_neg), np.cumsum(terms, axis=1)[:, -1] / n_pos
    return rank


def ranking_rows(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AUPRC of each row of `probs` (rows, studies): see ranker."""
    return ranker(labels, probs)()


def operating_rows(labels, probs):
    """A function of (thresholds, copies) giving the sensitivity, specificity and F1 of each row
    of `probs` (rows, studies) called abnormal at or above its own threshold (one per row, or
    one for all); `copies` as in ranker. A ratio without a denominator is 0 (zero_division=0).
    Counts are sums of whole numbers: exact."""
    y = np.asarray(labels) == 1
    p = np.asarray(probs, dtype=np.float64)
    abnormal, normal = y.astype(np.float64), (~y).astype(np.float64)

    def score(thresholds, copies=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.ones(p.shape[1]) if copies is None else np.asarray(copies, np.float64)
        called = (p >= np.asarray(thresholds, np.float64).reshape(-1, 1)).astype(np.float64)
        tp, fp = (called * abnormal) @ c, (called * normal) @ c
        n_pos, n_neg = abnormal @ c, normal @ c
        fn = n_pos - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = np.where(n_pos > 0, tp / n_pos, 0.0)
            spec = np.where(n_neg > 0, (n_neg - fp) / n_neg, 0.0)
            f1s = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        return sens, spec, f1s
    return score


FPR_TOLERANCE = 1e-12  # 1 - 0.9 is 0.09999999999999998: a point at 4/40 = 0.1 still meets 90 %


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, x) -> np.ndarray:
    """The ROC curve's true positive rate at false positive rate(s) `x`, read as the curve is
    drawn: straight lines between its points (fpr ascending, as roc_curve gives them); where
    the curve rises vertically at `x`, the top of the rise (the most sensitive threshold that
    keeps the false positive rate at `x`)."""
    fpr, tpr = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    x = np.asarray(x, np.float64)
    j = np.clip(np.searchsorted(fpr, x + FPR_TOLERANCE, side="right") - 1, 0, fpr.size - 1)
    k = np.minimum(j + 1, fpr.size - 1)
    x0, x1 = fpr[j], fpr[k]
    w = np.divide(x - x0, x1 - x0, out=np.zeros(np.shape(x)), where=x1 > x0)
    return tpr[j] + np.clip(w, 0.0, 1.0) * (tpr[k] - tpr[j])


def sensitivity_at_specificity(labels, probs, specificity: float) -> float:
    """Sensitivity on the ROC curve of these studies where specificity is `specificity`,
    threshold-free: linear between the curve's points (tpr_at), as the ROC figure draws it."""
    fpr, tpr, _ = roc_curve(labels, probs)
    return float(tpr_at(fpr, tpr, 1.0 - specificity))


def roc_rows(labels, probs, specificity: float):
    """A function of `copies` (as in ranker) giving each row's sensitivity_at_specificity: the
    ROC of the resampled studies, read at 1 - `specificity` as tpr_at reads it. Rows are
    sorted once, here; a tied run of scores is one point of the curve."""
    y = np.asarray(labels) == 1
    p = np.asarray(probs, dtype=np.float64)
    rows, k = p.shape
    order = np.argsort(-p, axis=1, kind="stable")  # highest first, as the curve runs
    _, last = _tie_runs(-np.take_along_axis(p, order, axis=1))
    ends = (last + (k * np.arange(rows))[:, None]).ravel()  # each study's run end, flat
    pos = y[order].astype(np.float64)
    x = 1.0 - specificity

    def read(copies=None) -> np.ndarray:
        w = np.ones(p.shape) if copies is None else np.asarray(copies, np.float64).take(order)
        tps = np.cumsum(w * pos, axis=1).ravel().take(ends).reshape(p.shape)
        fps = np.cumsum(w * (1 - pos), axis=1).ravel().take(ends).reshape(p.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = np.hstack([np.zeros((rows, 1)), tps / tps[:, -1:]])
            fpr = np.hstack([np.zeros((rows, 1)), fps / fps[:, -1:]])
        j = (fpr <= x + FPR_TOLERANCE).sum(axis=1) - 1  # the last point at or left of x
        r = np.arange(rows)
        k1 = np.minimum(j + 1, k)
        x0, x1 = fpr[r, j], fpr[r, k1]
        w_ = np.divide(x - x0, x1 - x0, out=np.zeros(rows), where=x1 > x0)
        return tpr[r, j] + np.clip(w_, 0.0, 1.0) * (tpr[r, k1] - tpr[r, j])
    return read


def ece_bins(n: int) -> int:
    """Equal-mass bins for the ECE of n studies: the cube root of n, rounded up (5 bins of about
    20 studies for 98; 9 of about 80 for 700). Ten bins of ten studies put a perfectly
    calibrated model's ECE near 0.1 by noise alone; fewer, fuller bins lower that floor."""
    return max(1, int(np.ceil(round(n ** (1 / 3), 9))))


def _equal_mass_bins(sorted_scores: np.ndarray, bins: int) -> np.ndarray:
    """The bin (0..bins-1) of each position of ascending rows: position i of n in bin
    floor(i x bins / n), tied scores in the bin of their run's first position."""
    first, _ = _tie_runs(sorted_scores)
    return first * bins // sorted_scores.shape[1]


def calibration_rows(labels, probs, bins: int | None = None):
    """A function of `copies` (as in ranker) giving each row's Brier score and ECE; the ECE's
    equal-mass bins (ece_bins) are those of the rows' own scores on these studies, fixed
    across resamples."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    rows, k = p.shape
    bins = bins or ece_bins(k)
    order = np.argsort(p, axis=1, kind="stable")
    which = _equal_mass_bins(np.take_along_axis(p, order, axis=1), bins)
    ends = np.stack([(which <= b).sum(axis=1) for b in range(bins)], axis=1)  # (rows, bins)
    starts = np.hstack([np.zeros((rows, 1), int), ends[:, :-1]])
    offset = (k + 1) * np.arange(rows)[:, None]
    gap = y[order] - np.take_along_axis(p, order, axis=1)  # label - probability, ascending
    squared = (p - y) ** 2

    def score(copies=None) -> tuple[np.ndarray, np.ndarray]:
        c = np.ones(k) if copies is None else np.asarray(copies, np.float64)
        total = c.sum()
        cum = np.zeros((rows, k + 1))
        np.cumsum(c.take(order) * gap, axis=1, out=cum[:, 1:])
        flat = cum.ravel()
        per_bin = flat.take(ends + offset) - flat.take(starts + offset)
        # row sums, not a matrix product: a row scores the same bits beside any other rows
        return (squared * c).sum(axis=1) / total, np.abs(per_bin).sum(axis=1) / total
    return score


# --- the measures of the comparison: one table --------------------------------------------------

def _ranking(labels, probs, specificity: float):
    rank = ranker(labels, probs)
    return lambda thresholds, copies: rank(copies)  # (AUROC, AUPRC)


def _roc(labels, probs, specificity: float):
    read = roc_rows(labels, probs, specificity)
    return lambda thresholds, copies: (read(copies),)  # (sensitivity at specificity,)


def _operating(labels, probs, specificity: float):
    return operating_rows(labels, probs)  # (sensitivity, specificity, F1)


def _calibration(labels, probs, specificity: float):
    calibrate = calibration_rows(labels, probs)
    return lambda thresholds, copies: calibrate(copies)  # (Brier, ECE)


@dataclass(frozen=True)
class Measure:
    """One measure the comparison scores on every seed row in every bootstrap round.

    `kernel`: (labels, probs (rows, studies), specificity) -> a function of (thresholds,
    copies) giving a tuple of per-row values; the measure is its `part`-th. Every measure of
    one kernel shares one call of it (the rows are sorted once). `column`: what its column in
    comparison.md measures, formatted with comparison.json's top-level fields. `forest`: (panel
    title, short name for the axis) where the forest plot draws it, else None."""
    name: str  # its key in comparison.json and metrics/summary.json
    kernel: Callable
    part: int
    column: str
    forest: tuple[str, str] | None = None


MEASURES = (  # the order of comparison.json, comparison.md's columns and the forest's panels
    Measure("auroc", _ranking, 0, "AUROC", ("AUROC difference", "AUROC")),  # threshold-free
    Measure("auprc", _ranking, 1, "AUPRC", ("AUPRC difference", "AUPRC")),
    Measure("sensitivity_at_specificity", _roc, 0,
            "Sensitivity at {specificity:.0%} specificity (test ROC)",
            ("Sensitivity at fixed specificity\n(test ROC)", "sensitivity")),
    Measure("sensitivity", _operating, 0,  # at the threshold chosen on validation
            "Sensitivity at the validation threshold"),
    Measure("specificity", _operating, 1, "Specificity at the validation threshold"),
    Measure("f1", _operating, 2, "F1 at the validation threshold",
            ("F1 at the validation threshold", "F1")),
    Measure("brier", _calibration, 0, "Brier score"),  # calibration
    Measure("ece", _calibration, 1, "ECE ({ece_bins} equal-mass bins)"),
)


def measure_rows(labels, probs, specificity: float):
    """A function of (thresholds, copies) giving (rows, MEASURES): each row of `probs`
    (rows, studies) scored on every measure, on the studies as often as `copies` counts them
    (ranker; None: once) and, at the threshold, called abnormal at or above its own threshold
    (operating_rows). Each kernel is built once, here: its rows are sorted once."""
    kernels = {m.kernel: m.kernel(labels, probs, specificity) for m in MEASURES}

    def score(thresholds, copies=None) -> np.ndarray:
        values = {kernel: f(thresholds, copies) for kernel, f in kernels.items()}
        return np.stack([values[m.kernel][m.part] for m in MEASURES], axis=1)
    return score


# --- one model ---------------------------------------------------------------------------------

def _both_classes(y: np.ndarray) -> bool:
    return bool(len(y)) and y.min() != y.max()


def auroc(labels, probs) -> float:
    """Mann-Whitney form of the AUROC (ties count one half): equals sklearn's roc_auc_score.
    nan where the labels hold one class only."""
    y, p = np.asarray(labels).astype(int), np.asarray(probs, dtype=np.float64)
    return float(ranking_rows(y, p[None])[0][0]) if _both_classes(y) else float("nan")


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def classification_metrics(labels, probs, threshold: float = 0.5, context: str = "") -> dict:
    """accuracy, precision, recall, specificity, f1, auroc, auprc and the confusion matrix
    [[tn, fp], [fn, tp]], a study being called abnormal at or above `threshold`.

    A ratio without a denominator (no predicted or no actual abnormal / normal) is 0, as
    sklearn's zero_division=0. Rows of one class only have no AUROC or AUPRC: they are nan, and
    a warning says so, naming `context` (what was scored, e.g. "val, epoch 3"), so that a nan
    never reaches a log or a metrics file unexplained.
    """
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    if not len(y):
        raise ValueError(f"no rows to score{f' on {context}' if context else ''}")
    if len(p) != len(y):
        raise ValueError(f"{len(p)} probabilities for {len(y)} labels: one per row")
    called, actual = p >= threshold, y == 1
    tp = int(np.count_nonzero(called & actual))
    fp = int(np.count_nonzero(called & ~actual))
    fn = int(np.count_nonzero(~called & actual))
    tn = len(y) - tp - fp - fn
    both = _both_classes(y)  # ranking metrics need both classes
    if not both:
        log.warning("AUROC and AUPRC are undefined (nan)%s: the %d rows hold label %d only",
                    f" on {context}" if context else "", len(y), y[0])
        ranking = (float("nan"), float("nan"))
    else:
        aurocs, auprcs = ranking_rows(y, p[None])
        ranking = (float(aurocs[0]), float(auprcs[0]))
    return {
        "n": int(len(y)),
        "accuracy": (tp + tn) / len(y),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auroc": ranking[0],
        "auprc": ranking[1],
        "confusion": [[tn, fp], [fn, tp]],
    }


def _curve_counts(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At each distinct score, highest first: abnormal and normal studies at or above it."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # last position of each distinct score
    tps = np.cumsum(y)[last]
    return tps, last + 1 - tps, p[last]


def roc_curve(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): the points of sklearn's roc_curve(drop_intermediate=False), from
    (0, 0) at threshold inf down to every distinct score. One class only: the rate without a
    denominator is nan, as sklearn's."""
    tps, fps, thresholds = _curve_counts(labels, probs)
    tps, fps = np.r_[0, tps], np.r_[0, fps]
    with np.errstate(invalid="ignore", divide="ignore"):
        return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def pr_curve(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, thresholds): the points of sklearn's precision_recall_curve,
    thresholds ascending, ending at recall 0, precision 1 (which has no threshold). Without
    abnormal studies recall is 1 throughout, as sklearn's."""
    tps, fps, thresholds = _curve_counts(labels, probs)
    precision = tps / (tps + fps)
    recall = tps / tps[-1] if tps[-1] else np.ones(len(tps))
    return np.r_[recall[::-1], 0.0], np.r_[precision[::-1], 1.0], thresholds[::-1]


def study_predictions(images: pd.DataFrame) -> pd.DataFrame:
    """One row per study: its label and the mean probability over its images."""
    return (images.groupby("uid", sort=True)
            .agg(label=("label", "first"), probability=("probability", "mean"))
            .reset_index())


# --- operating points, chosen on validation ----------------------------------------------------

def _candidates(labels, probs, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int,
                                                   int]:
    """Distinct validation scores, highest first, with the abnormal (tp) and normal (fp)
    studies at or above each, and the numbers of abnormal and normal studies."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    if len(p) != len(y):
        raise ValueError(f"{len(p)} probabilities for {len(y)} labels: one per study")
    if not _both_classes(y):
        raise ValueError(f"{what} needs validation studies of both labels; these "
                         f"{len(y)} hold {'label %d only' % y[0] if len(y) else 'nothing'}")
    tps, fps, scores = _curve_counts(y, p)
    n_pos = int(tps[-1])
    return scores, tps, fps, n_pos, len(y) - n_pos


def _below(scores: np.ndarray, i: int) -> float:
    """A threshold between distinct score i (highest first) and the next lower one (0.0 below
    the lowest): the validation calls of threshold scores[i], without sitting on a score."""
    high = float(scores[i])
    low = float(scores[i + 1]) if i + 1 < len(scores) else min(0.0, high)
    mid = low + (high - low) / 2
    return mid if low < mid or low == high else high  # adjacent floats: the score itself


def choose_threshold(labels, probs, rule) -> float:
    """The threshold at or above which a study is called abnormal, from validation predictions.

    `rule`: a number in [0, 1] is the threshold itself; "youden" maximises sensitivity +
    specificity - 1, "max_f1" maximises F1. The candidates are the distinct validation
    probabilities; among equal maxima the highest candidate wins (fewest studies called
    abnormal). The threshold returned lies halfway between it and the next lower distinct
    validation probability (0.0 below the lowest): the same validation calls, but no
    validation score sits on the threshold.
    """
    if isinstance(rule, Real) and not isinstance(rule, bool):
        if not 0 <= rule <= 1:
            raise ValueError(f"threshold {rule} is not a probability in [0, 1]")
        return float(rule)
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}: use a probability in [0, 1] or one "
                         f"of {', '.join(THRESHOLD_RULES)}")
    scores, tps, fps, n_pos, n_neg = _candidates(labels, probs, f"the {rule} threshold")
    if rule == "youden":
        # (sensitivity + specificity - 1) * n_pos * n_neg, in integers: equal values tie exactly
        objective = tps * n_neg - fps * n_pos
    else:
        objective = 2 * tps / (tps + fps + n_pos)  # exact ratios of integers: ties stay ties
    return _below(scores, int(np.argmax(objective)))  # argmax: the first, i.e. highest, maximum


# --- calibration -------------------------------------------------------------------------------

def brier(labels, probs) -> float:
    """Mean squared difference between the probability and the 0/1 label."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    return float(np.mean((p - y) ** 2))


def calibrated_ece(probs, bins: int | None = None, draws: int = 1000, seed: int = 0,
                   quantile: float = 0.95) -> float:
    """The ECE's noise floor: the `quantile` of the ECE that a perfectly calibrated model with
    these scores would have, its labels drawn as Bernoulli(probability) `draws` times (seeded),
    with the same equal-mass bins. An ECE below it is what noise alone gives."""
    p = np.asarray(probs, dtype=np.float64)
    bins = bins or ece_bins(len(p))
    order = np.argsort(p, kind="stable")
    which = _equal_mass_bins(p[order][None], bins)[0]
    labels = np.random.default_rng(seed).random((draws, len(p))) < p[order]
    gaps = labels - p[order]                                   # (draws, studies), ascending p
    per_bin = np.stack([gaps[:, which == b].sum(axis=1) for b in np.unique(which)], axis=1)
    return float(np.quantile(np.abs(per_bin).sum(axis=1) / len(p), quantile))


def calibration(labels, probs, bins: int | None = None) -> dict:
    """Expected calibration error, Brier score, and the table of a reliability diagram.

    `bins` equal-mass bins (None: ece_bins of the number of studies): the studies sorted by
    probability, position i of n in bin floor(i x bins / n), tied probabilities in one bin.
    ECE: the sum over bins of n_b / N x |fraction abnormal - mean probability| in the bin (the
    same number as calibration_rows). Each row of `bins` in the result: low, high (the lowest
    and highest probability in it), n, mean_probability, fraction_abnormal.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if not len(y) or len(p) != len(y):
        raise ValueError(f"{len(p)} probabilities for {len(y)} labels: one per study, at least "
                         "one")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    if bins is not None and (int(bins) != bins or bins < 1):
        raise ValueError(f"bins {bins}: use a whole number >= 1")
    bins = int(bins or ece_bins(len(y)))
    brier_score, ece = calibration_rows(y, p[None], bins)()
    order = np.argsort(p, kind="stable")
    which = _equal_mass_bins(p[order][None], bins)[0]
    table = []
    for b in np.unique(which):
        members = order[which == b]
        table.append({"low": float(p[members].min()), "high": float(p[members].max()),
                      "n": int(len(members)), "mean_probability": float(p[members].mean()),
                      "fraction_abnormal": float(y[members].mean())})
    return {"ece": float(ece[0]), "brier": float(brier_score[0]), "bins": table,
            "binning": f"{bins} equal-mass bins"}
