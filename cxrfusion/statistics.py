"""Comparing models on the same test studies: bootstrap intervals (one model; paired), over
resampled studies or, where patients are known, resampled patients; DeLong's test of two
AUROCs; and intervals over both test studies and training seeds (over_seeds).

Label 1 (abnormal) is the positive class throughout. numpy only, as cxrfusion/metrics.py.
"""
from __future__ import annotations

import math

import numpy as np

from cxrfusion.metrics import auprc, auroc, f1, midranks, ranker, sensitivity, thresholder

METRICS = {"auroc": lambda y, p, t: auroc(y, p), "auprc": lambda y, p, t: auprc(y, p),
           "f1": f1, "sensitivity": sensitivity}


def resamples(labels: np.ndarray, n: int, seed: int, groups=None):
    """`n` seeded bootstrap resamples (index arrays) of the studies.

    `groups` (one id per study, e.g. its patient): studies of one patient are not independent,
    so each resample draws groups with replacement, as many draws as there are groups, and
    takes every study of each drawn group, once per draw (cluster bootstrap). None: each study
    is its own group (the resamples of the same seed as before groups existed). A resample that
    holds one class only cannot be scored by the ranking metrics and is redrawn.
    """
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("the test studies hold one class only: no metric can be compared on "
                         "them; use a larger split.test.")
    rng = np.random.default_rng(seed)
    if groups is None:
        def draw():
            return rng.integers(0, len(labels), len(labels))
    else:
        draw = _cluster_draw(np.asarray(groups), len(labels), rng)
    while n:
        idx = draw()
        drawn = labels[idx]
        if drawn.min() != drawn.max():  # both labels (0/1); np.unique would sort
            n -= 1
            yield idx


def _cluster_draw(groups: np.ndarray, n_studies: int, rng: np.random.Generator):
    """A function that draws one cluster resample: the studies of len(groups) drawn groups."""
    if len(groups) != n_studies:
        raise ValueError(f"{len(groups)} group ids for {n_studies} studies: one per study")
    _, group = np.unique(groups, return_inverse=True)
    order = np.argsort(group, kind="stable")  # study indices, group after group
    sizes = np.bincount(group)
    starts = np.cumsum(sizes) - sizes         # where each group begins in `order`

    def draw():
        drawn = rng.integers(0, len(sizes), len(sizes))
        lengths = sizes[drawn]
        ends = np.cumsum(lengths)
        # position i of drawn group g's block (it begins at ends - lengths) takes
        # order[starts[g] + i - block begin]: every study of g, once per draw
        shift = np.repeat(starts[drawn] - (ends - lengths), lengths)
        return order[shift + np.arange(ends[-1])]
    return draw


def bootstrap_interval(labels, probs, metric: str, n: int, seed: int,
                       threshold: float = 0.5, groups=None) -> dict:
    """One model's metric with a 95 % percentile interval over resampled studies, or over
    resampled `groups` of studies (see resamples; the same resamples as paired_bootstrap with
    the same seed and groups)."""
    y, p, f = np.asarray(labels).astype(int), np.asarray(probs, float), METRICS[metric]
    values = [f(y[idx], p[idx], threshold) for idx in resamples(y, n, seed, groups)]
    low, high = np.percentile(values, [2.5, 97.5])
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
    f = METRICS[metric]
    diffs = [f(y[idx], a[idx], threshold) - f(y[idx], b[idx], threshold)
             for idx in resamples(y, n, seed, groups)]
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": f(y, a, threshold) - f(y, b, threshold),
            "ci95": [float(low), float(high)], "resamples": n, "seed": seed}


# --- DeLong -------------------------------------------------------------------------------------

def delong(labels, probs_a, probs_b) -> dict:
    """DeLong's test of two correlated AUROCs, both models scored on the same studies.

    The variance of the difference comes from the structural components (per abnormal study,
    the fraction of normal studies it outranks; per normal study, the fraction of abnormal ones
    above it), computed from midranks as in Sun & Xu (2014) rather than from all pairs.
    Predictions that rank the studies alike (variance 0) differ by nothing: z 0, p 1.
    """
    y = np.asarray(labels).astype(int)
    a, b = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if a.shape != y.shape or b.shape != y.shape or y.ndim != 1:
        raise ValueError(f"probabilities of shapes {a.shape} and {b.shape} for {len(y)} labels: "
                         "one probability per study and model")
    x = np.vstack([a, b])
    pos, neg = y == 1, y != 1
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs two studies of each label or more; there are {m} "
                         f"abnormal and {n} normal")
    tz, tx, ty = midranks(x), midranks(x[:, pos]), midranks(x[:, neg])
    aurocs = (tz[:, pos].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, pos] - tx) / n       # abnormal study: normal studies below it (ties 1/2)
    v01 = 1 - (tz[:, neg] - ty) / m   # normal study: abnormal studies above it (ties 1/2)
    s = np.cov(v10) / m + np.cov(v01) / n
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    diff = float(aurocs[0] - aurocs[1])
    if var <= 0:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        se = 0.0
    else:
        se = math.sqrt(var)
        z = diff / se
    return {"auroc_a": float(aurocs[0]), "auroc_b": float(aurocs[1]), "difference": diff,
            "se": se, "z": z, "p": math.erfc(abs(z) / math.sqrt(2))}


# --- over test studies and training seeds -------------------------------------------------------

SEED_METRICS = ("auroc", "auprc", "f1", "sensitivity_at_specificity")


def _seed_scorer(y: np.ndarray, probs: np.ndarray, operating: np.ndarray,
                 at_specificity: np.ndarray):
    """A function of `copies` (see ranker) giving (rows, SEED_METRICS): each seed row's metrics;
    the rows are sorted and thresholded once, here."""
    rank = ranker(y, probs)
    at_operating, at_target = thresholder(y, probs, operating), thresholder(y, probs,
                                                                            at_specificity)

    def score(copies=None) -> np.ndarray:
        aurocs, auprcs = rank(copies)
        return np.stack([aurocs, auprcs, at_operating(copies)[0], at_target(copies)[1]], axis=1)
    return score


def _stacked(labels, models: dict, pairs) -> tuple[np.ndarray, dict, np.ndarray, np.ndarray,
                                                   np.ndarray]:
    """Labels and every model's seed rows stacked, checked; blocks: name -> (first row, seeds)."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be one 0/1 label per test study")
    y = y.astype(int)
    rows, operating, at_spec, blocks = [], [], [], {}
    for name, model in models.items():
        missing = {"probs", "operating", "at_specificity"} - set(model)
        if missing:
            raise ValueError(f"model {name!r} lacks {', '.join(sorted(missing))}")
        p = np.asarray(model["probs"], dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(y) or not len(p):
            raise ValueError(f"model {name!r}: probs of shape {p.shape}, expected (seeds, "
                             f"{len(y)}): one row per training seed, one column per test study")
        for key in ("operating", "at_specificity"):
            t = np.asarray(model[key], dtype=np.float64)
            if t.shape != (len(p),):
                raise ValueError(f"model {name!r}: {key} of shape {t.shape}, expected "
                                 f"({len(p)},): one threshold per training seed")
        blocks[name] = (sum(len(r) for r in rows), len(p))
        rows.append(p)
        operating.append(np.asarray(model["operating"], dtype=np.float64))
        at_spec.append(np.asarray(model["at_specificity"], dtype=np.float64))
    if not rows:
        raise ValueError("no models")
    for a, b in pairs:
        for name in (a, b):
            if name not in blocks:
                raise ValueError(f"pair ({a!r}, {b!r}): no model {name!r}")
        if blocks[a][1] != blocks[b][1]:
            raise ValueError(f"pair ({a!r}, {b!r}): {blocks[a][1]} and {blocks[b][1]} seeds; a "
                             "pair compares seed rows by index, so both need the same seeds")
    return y, blocks, np.vstack(rows), np.concatenate(operating), np.concatenate(at_spec)


def over_seeds(labels, models: dict, pairs, n: int, seed: int, groups=None) -> dict:
    """Each model's metrics and each pair's differences, as means over training seeds, with 95 %
    percentile intervals that cover which test studies were drawn and how training runs vary.

    `models`: {name: {"probs": (seeds, studies), "operating": (seeds,) F1 thresholds,
    "at_specificity": (seeds,) thresholds of the fixed specificity}}, thresholds chosen on
    validation; `pairs`: (a, b) names, compared seed row by seed row (per_seed).

    Method, a two-level bootstrap: each of `n` rounds draws the test studies resamples(labels,
    n, seed, groups) draws and, from a second generator spawned from `seed`, for each model
    independently S_m of its S_m seed rows with replacement; the model's value in the round is
    the mean over the drawn rows of the metric on the drawn studies, a pair's the difference of
    its models' values. One seed per model: the intervals of bootstrap_interval/paired_bootstrap.
    """
    if n < 1:
        raise ValueError(f"{n} resamples: use 1 or more")
    pairs = [tuple(pair) for pair in pairs]
    y, blocks, probs, operating, at_spec = _stacked(labels, models, pairs)
    score = _seed_scorer(y, probs, operating, at_spec)
    point = score()
    rounds = np.empty((len(blocks), n, len(SEED_METRICS)))
    seed_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    n_seeds = np.array([s for _, s in blocks.values()])
    offsets = np.repeat([f for f, _ in blocks.values()], n_seeds)  # each model's first row
    highs, starts = np.repeat(n_seeds, n_seeds), np.cumsum(n_seeds) - n_seeds
    for r, idx in enumerate(resamples(y, n, seed, groups)):
        # a resample is the number of copies of each study: no sort per round
        values = score(np.bincount(idx, minlength=len(y)))
        drawn = offsets + seed_rng.integers(0, highs)  # S_m seed rows of each model
        rounds[:, r] = np.add.reduceat(values[drawn], starts, axis=0) / n_seeds[:, None]

    def interval(values: np.ndarray) -> dict:
        low, high = np.percentile(values, [2.5, 97.5])
        return {"low": float(low), "high": float(high)}

    index = {name: m for m, name in enumerate(blocks)}
    out_models = {}
    for name, (first, seeds) in blocks.items():
        per_seed = point[first:first + seeds]
        out_models[name] = {
            metric: {"per_seed": per_seed[:, j].tolist(), "mean": float(per_seed[:, j].mean()),
                     "sd": float(per_seed[:, j].std(ddof=1)) if seeds > 1 else float("nan"),
                     **interval(rounds[index[name], :, j])}
            for j, metric in enumerate(SEED_METRICS)}
    out_pairs = {}
    for a, b in pairs:
        (fa, seeds), (fb, _) = blocks[a], blocks[b]
        diffs = point[fa:fa + seeds] - point[fb:fb + seeds]
        out_pairs[f"{a} - {b}"] = {
            metric: {"per_seed": diffs[:, j].tolist(),
                     "mean": out_models[a][metric]["mean"] - out_models[b][metric]["mean"],
                     **interval(rounds[index[a], :, j] - rounds[index[b], :, j])}
            for j, metric in enumerate(SEED_METRICS)}
    return {"models": out_models, "pairs": out_pairs, "resamples": n, "seed": seed}
