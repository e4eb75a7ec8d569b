"""Comparing models on the same test studies. The tested AUROC differences: the seed-mean
difference, its standard error and degrees of freedom, without resampling
(seed_mean_difference). The descriptive intervals: bootstrap resamples of studies or, where
patients are known, of patients; the one quantile rule of every interval and the p-values that
invert it (interval; bootstrap_p and equivalence_p, the procedure before seed_mean_difference,
which bench/verdicts_simulation.py compares with it); intervals over both test studies and
training seeds (over_seeds), and on subgroups of the test studies within the same rounds
(on_subgroups); DeLong's test of two AUROCs.

Label 1 (abnormal) is the positive class throughout. Like cxrfusion/metrics.py, whose kernels
score every resample, it needs no sklearn and no scipy: numpy, and metrics.py's imports.
"""
from __future__ import annotations

import math

import numpy as np

from cxrfusion.metrics import MEASURES, choose_threshold, measure_rows, midranks, ranker
from cxrfusion.params import Comparison


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


# --- the quantile rule: intervals and the p-values that invert them ---------------------------

def order_rank(level: float, n: int) -> int:
    """k: a `level` interval over n bootstrap values runs from the k-th smallest to the k-th
    largest, k = ceil((1 - level) (n + 1) / 2) - 1, so that it excludes a value exactly when
    the p-values below fall under 1 - level (Davison & Hinkley's (count + 1) / (n + 1))."""
    k = math.ceil(round((1 - level) * (n + 1) / 2, 9)) - 1
    if k < 1:
        raise ValueError(f"{n} bootstrap resamples are too few for a {level:.0%} interval: "
                         f"use {math.ceil(2 / (1 - level))} or more")
    return k


def interval(values, level: float = 0.95) -> tuple[float, float]:
    """The `level` percentile interval of bootstrap values: k-th smallest to k-th largest
    (order_rank). bootstrap_p(values) < 1 - level exactly when it excludes 0, ties at 0
    included; equivalence_p(values, m) < (1 - level) / 2 exactly when it lies inside (-m, m)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = order_rank(level, len(v))
    return float(v[k - 1]), float(v[len(v) - k])


def bootstrap_p(values) -> float:
    """Two-sided p-value of "the difference is 0" from bootstrap values of the difference:
    2 x (the smaller count of values at or below 0, and at or above 0, + 1) / (n + 1), at most
    1. Its floor is 2 / (n + 1): n resamples can show no more than that."""
    v = np.asarray(values, dtype=np.float64)
    tail = min(int((v <= 0).sum()), int((v >= 0).sum()))
    return min(1.0, 2 * (tail + 1) / (len(v) + 1))


def equivalence_p(values, margin: float) -> float:
    """Two one-sided tests of "the difference lies within (-margin, +margin)": the larger of
    the one-sided p-values (count at or below -margin, and at or above +margin, + 1) / (n + 1).
    Below alpha exactly when the 1 - 2 alpha interval lies inside the margins."""
    v = np.asarray(values, dtype=np.float64)
    tail = max(int((v <= -margin).sum()), int((v >= margin).sum()))
    return min(1.0, (tail + 1) / (len(v) + 1))


# --- over test studies and training seeds -------------------------------------------------------

SEED_METRICS = tuple(m.name for m in MEASURES)  # over_seeds' metrics: the table's, in its order


def _rows(model: dict, name: str, key: str, shape: tuple) -> np.ndarray:
    a = np.asarray(model[key], dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"model {name!r}: {key} of shape {a.shape}, expected {shape}")
    return a


def _stacked(labels, models: dict, pairs, validation) -> tuple:
    """Labels, and every model's seed rows stacked and checked: (y, blocks, probs, thresholds,
    val_probs or None, rules); blocks: name -> (first row, seeds)."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be one 0/1 label per test study")
    y = y.astype(int)
    needed = {"probs", "thresholds"} | ({"val_probs", "rule"} if validation else set())
    rows, thresholds, val_rows, rules, blocks = [], [], [], [], {}
    for name, model in models.items():
        missing = needed - set(model)
        if missing:
            raise ValueError(f"model {name!r} lacks {', '.join(sorted(missing))}")
        probs = np.asarray(model["probs"], dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(y) or not len(probs):
            raise ValueError(f"model {name!r}: probs of shape {probs.shape}, expected (seeds, "
                             f"{len(y)}): one row per training seed, one column per test study")
        blocks[name] = (sum(len(r) for r in rows), len(probs))
        rows.append(probs)
        thresholds.append(_rows(model, name, "thresholds", (len(probs),)))
        if validation:
            val_rows.append(_rows(model, name, "val_probs",
                                  (len(probs), len(validation["labels"]))))
            rules += [model["rule"]] * len(probs)
    if not rows:
        raise ValueError("no models")
    for a, b in pairs:
        for name in (a, b):
            if name not in blocks:
                raise ValueError(f"pair ({a!r}, {b!r}): no model {name!r}")
        if blocks[a][1] != blocks[b][1] and 1 not in (blocks[a][1], blocks[b][1]):
            raise ValueError(f"pair ({a!r}, {b!r}): {blocks[a][1]} and {blocks[b][1]} seeds; a "
                             "pair compares seed rows by index, so both need the same seeds "
                             "(or one model a single run: an arm trained once)")
    return (y, blocks, np.vstack(rows), np.concatenate(thresholds),
            np.vstack(val_rows) if validation else None, rules)


def _rechooser(validation: dict | None, val_probs, rules, thresholds, n: int, stream):
    """An iterator of each round's thresholds, one per seed row: with `validation`, each round
    draws the validation studies (resamples, from its own stream: the test and seed draws stay
    as they are) and re-chooses every row's threshold by its model's rule on them, the same
    draw for every model; without, the thresholds as given, every round."""
    if validation is None:
        while True:
            yield thresholds
    y = np.asarray(validation["labels"]).astype(int)
    for idx in resamples(y, n, stream, validation.get("groups")):
        yield np.array([choose_threshold(y[idx], probs[idx], rule)
                        for probs, rule in zip(val_probs, rules)])


def _draws(y: np.ndarray, blocks: dict, n: int, seed: int, groups=None):
    """The `n` rounds of the two-level bootstrap, the same for every caller with the same
    arguments: (copies of each test study, the seed rows drawn for each model in `blocks`
    order). The test studies come from resamples(y, n, seed, groups); the seed rows, S_m of
    each model's S_m with replacement, from the first generator spawned from `seed` (the second
    is the validation studies', _rechooser)."""
    seed_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    n_seeds = np.array([s for _, s in blocks.values()])
    offsets = np.repeat([f for f, _ in blocks.values()], n_seeds)  # each model's first row
    highs = np.repeat(n_seeds, n_seeds)
    for idx in resamples(y, n, seed, groups):
        # a resample is the number of copies of each study: no sort per round
        yield np.bincount(idx, minlength=len(y)), offsets + seed_rng.integers(0, highs)


def _per_model(blocks: dict):
    """A function averaging seed rows (rows, ...) into one row per model of `blocks`."""
    n_seeds = np.array([s for _, s in blocks.values()])
    starts = np.cumsum(n_seeds) - n_seeds

    def mean(values: np.ndarray) -> np.ndarray:
        sums = np.add.reduceat(values, starts, axis=0)
        return sums / n_seeds.reshape((-1,) + (1,) * (values.ndim - 1))
    return mean


def over_seeds(labels, models: dict, pairs, n: int, seed: int, groups=None, *,
               specificity: float = 0.9, validation: dict | None = None,
               level: float = 0.95) -> dict:
    """Each model's metrics and each pair's differences, as means over training seeds, with
    `level` percentile intervals (interval) that cover which test studies were drawn, how
    training runs vary and, with `validation`, where each run's threshold fell.

    `models`: {name: {"probs": (seeds, studies), "thresholds": (seeds,) chosen on validation,
    and with `validation` "val_probs": (seeds, validation studies) and "rule": the rule that
    chose them (choose_threshold)}}; `pairs`: (a, b) names, compared seed row by seed row
    (per_seed; a model of one row, an arm trained once, against each row of the other), each
    pair named "a - b" in the result (params.Comparison's ascii_label);
    `validation`: None, or {"labels": (validation studies,), "groups": patients or None};
    `specificity`: where sensitivity_at_specificity reads each test ROC.

    Method, a two-level bootstrap: each of `n` rounds draws the test studies resamples(labels,
    n, seed, groups) draws; from a second generator spawned from `seed`, for each model
    independently S_m of its S_m seed rows with replacement; and, with `validation`, from a
    third, the validation studies, on which every row's threshold is chosen again. The model's
    value in the round is the mean over the drawn rows of the metric on the drawn studies, a
    pair's the difference of its models' values. `rounds` keeps each pair's values per round.
    One seed per model, no validation: the intervals of one model's, and
    one pair's, plain percentile bootstrap over the same resamples (tests/bootstrap_reference.py,
    the reference tests/test_statistics.py checks it against).
    """
    if n < 1:
        raise ValueError(f"{n} resamples: use 1 or more")
    pairs = [tuple(pair) for pair in pairs]
    y, blocks, probs, thresholds, val_probs, rules = _stacked(labels, models, pairs, validation)
    score = measure_rows(y, probs, specificity)
    point = score(thresholds)
    shape = (len(blocks), n, len(SEED_METRICS))
    rounds = np.empty(shape)
    chosen = _rechooser(validation, val_probs, rules, thresholds, n,
                        np.random.SeedSequence(seed).spawn(2)[1])
    per_model = _per_model(blocks)
    for r, (copies, drawn) in enumerate(_draws(y, blocks, n, seed, groups)):
        values = score(next(chosen), copies)
        rounds[:, r] = per_model(values[drawn])

    models_out = _model_summaries(blocks, point, rounds, level)
    pairs_out, pair_rounds = {}, {}
    index = {name: m for m, name in enumerate(blocks)}
    for a, b in pairs:
        name = Comparison(a, b).ascii_label
        pair_rounds[name] = {m: rounds[index[a], :, j] - rounds[index[b], :, j]
                             for j, m in enumerate(SEED_METRICS)}
        pairs_out[name] = _pair_summary(blocks, point, a, b, models_out, pair_rounds[name], level)
    return {"models": models_out, "pairs": pairs_out, "rounds": pair_rounds,
            "resamples": n, "seed": seed, "level": level}


def _bounds(values: np.ndarray, level: float) -> dict:
    low, high = interval(values, level)
    return {"low": low, "high": high}


def _model_summaries(blocks: dict, point: np.ndarray, rounds: np.ndarray, level: float) -> dict:
    """Per model and metric: each seed's value, their mean and sd, and the interval of the
    model's values over the rounds."""
    out = {}
    for m, (name, (first, seeds)) in enumerate(blocks.items()):
        per_seed = point[first:first + seeds]
        out[name] = {
            metric: {"per_seed": per_seed[:, j].tolist(), "mean": float(per_seed[:, j].mean()),
                     "sd": float(per_seed[:, j].std(ddof=1)) if seeds > 1 else float("nan"),
                     **_bounds(rounds[m, :, j], level)}
            for j, metric in enumerate(SEED_METRICS)}
    return out


def _pair_summary(blocks: dict, point: np.ndarray, a: str, b: str, models: dict,
                  pair_rounds: dict, level: float) -> dict:
    """Per metric: a - b seed row by seed row, the difference of the means, and the interval
    of the differences over the rounds."""
    (fa, sa), (fb, sb) = blocks[a], blocks[b]
    diffs = point[fa:fa + sa] - point[fb:fb + sb]  # an arm trained once: its one row each time
    return {metric: {"per_seed": diffs[:, j].tolist(),
                     "mean": models[a][metric]["mean"] - models[b][metric]["mean"],
                     **_bounds(pair_rounds[metric], level)}
            for j, metric in enumerate(SEED_METRICS)}


# --- on subgroups of the test studies, within the same rounds ---------------------------------

def on_subgroups(labels, models: dict, pairs, members: dict, n: int, seed: int, groups=None, *,
                 level: float = 0.95) -> dict:
    """Each model's AUROC and each pair's AUROC difference on subgroups of the test studies,
    scored in the rounds of over_seeds with the same labels, models, n, seed and groups: the
    same test-study and seed draws, each round's drawn studies restricted to the subgroup's
    members (the draws stay paired between models and with the whole test set).

    `members`: {subgroup: a bool per test study}. A round whose drawn members lack a label
    cannot be scored and is skipped; `rounds` counts those that were scored. Intervals are
    `level` percentile intervals (interval) over them; None where too few rounds were scored
    for one. Means are over seeds of each run's AUROC on the members, as in over_seeds.
    """
    pairs = [tuple(pair) for pair in pairs]
    y, blocks, probs, *_ = _stacked(labels, models, pairs, None)
    masks = {}
    for name, m in members.items():
        mask = np.asarray(m)
        if mask.shape != y.shape or mask.dtype != bool:
            raise ValueError(f"subgroup {name!r}: members of shape {mask.shape} and type "
                             f"{mask.dtype}, expected one bool per test study ({len(y)})")
        masks[name] = mask.astype(np.float64)
    rank, per_model = ranker(y, probs), _per_model(blocks)
    values = {name: np.full((len(blocks), n), np.nan) for name in masks}
    for r, (copies, drawn) in enumerate(_draws(y, blocks, n, seed, groups)):
        for name, mask in masks.items():
            values[name][:, r] = per_model(rank(copies * mask)[0][drawn])  # nan: a label absent
    index = {name: m for m, name in enumerate(blocks)}
    out = {}
    for name, mask in masks.items():
        point = per_model(rank(mask)[0])
        scored = values[name][:, ~np.isnan(values[name]).any(axis=0)]
        out[name] = {
            "studies": int(mask.sum()), "abnormal": int(mask[y == 1].sum()),
            "rounds": scored.shape[1],
            "models": {m: _summary(point[index[m]], scored[index[m]], level) for m in blocks},
            "pairs": {Comparison(a, b).ascii_label: _summary(point[index[a]] - point[index[b]],
                                             scored[index[a]] - scored[index[b]], level)
                      for a, b in pairs}}
    return out


def _summary(mean: float, rounds: np.ndarray, level: float) -> dict:
    """mean, and the `level` interval of the rounds (None where too few for one)."""
    try:
        low, high = interval(rounds, level)
    except ValueError:
        low = high = None
    return {"mean": float(mean), "low": low, "high": high}


# --- the inferential rows: one construction, no resampling -----------------------------------

def _components(y: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components of each row's AUROC: per abnormal study, the fraction of
    normal studies it outranks (ties 1/2); per normal study, the fraction of abnormal studies
    above it. Each row's AUROC is the mean of either. Shapes (rows, abnormal), (rows, normal)."""
    pos, neg = y == 1, y != 1
    m, n = int(pos.sum()), int(neg.sum())
    tz, tx, ty = midranks(rows), midranks(rows[:, pos]), midranks(rows[:, neg])
    return (tz[:, pos] - tx) / n, 1 - (tz[:, neg] - ty) / m


def seed_mean_difference(labels, probs_a, probs_b, groups=None) -> dict:
    """The AUROC difference a - b as a mean over S training seeds (seed row k of a against
    seed row k of b), its standard error and degrees of freedom: what every inferential row's
    p, verdict and intervals follow from (cxrfusion/verdicts.py). No resampling: nothing here
    depends on a random seed.

    The variance has two parts. The test-study part: DeLong's (1988) variance of the
    seed-averaged difference, whose structural components are the seed means of each run's
    (the AUROC is linear in them), or where `groups` names each study's patient, Obuchowski's
    (1997) clustered form over patients; K - 1 degrees of freedom, K studies (patients). The
    training part: the between-seed variance of the per-seed differences over S, with S - 1
    degrees of freedom (none with one seed: an arm trained once has no training part, and the
    row says so with `seeds` 1; against S seeds of another arm its one row is each seed's
    partner, so the training part is the other arm's alone). se^2 = v_studies + v_seeds / S;
    the degrees of freedom are Satterthwaite's (1946) for that sum.
    """
    y = np.asarray(labels).astype(int)
    a, b = np.atleast_2d(np.asarray(probs_a, float)), np.atleast_2d(np.asarray(probs_b, float))
    if a.shape[1:] == b.shape[1:] and 1 in (len(a), len(b)):  # an arm trained once: one row
        a, b = np.broadcast_arrays(a, b)  # against each of the other's: only its seeds vary
    if a.shape != b.shape or a.shape[1] != len(y):
        raise ValueError(f"seed rows of shapes {a.shape} and {b.shape} for {len(y)} studies: "
                         "the same seeds, one column per test study")
    m, n, seeds = int(y.sum()), int((y == 0).sum()), len(a)
    if m < 2 or n < 2:
        raise ValueError(f"an AUROC difference needs two studies of each label or more; there "
                         f"are {m} abnormal and {n} normal")
    v10, v01 = _components(y, np.vstack([a, b]))
    d10 = v10[:seeds].mean(0) - v10[seeds:].mean(0)  # the seed-mean difference's components
    d01 = v01[:seeds].mean(0) - v01[seeds:].mean(0)
    mean = float(d10.mean())
    per_seed = v10[:seeds].mean(1) - v10[seeds:].mean(1)
    if groups is None:
        units = len(y)
        v_studies = float(np.var(d10, ddof=1) / m + np.var(d01, ddof=1) / n)
    else:
        _, cluster = np.unique(np.asarray(groups), return_inverse=True)
        units = int(cluster.max()) + 1
        if units < 2:
            raise ValueError("the test studies come from one patient: no variance between "
                             "patients can be estimated")
        pos = y == 1
        c10 = np.bincount(cluster[pos], d10, units) - np.bincount(cluster[pos], None, units) * mean
        c01 = (np.bincount(cluster[~pos], d01, units)
               - np.bincount(cluster[~pos], None, units) * mean)
        k = units / (units - 1)
        v_studies = float(k * ((c10 ** 2).sum() / m ** 2 + (c01 ** 2).sum() / n ** 2
                               + 2 * (c10 * c01).sum() / (m * n)))
    v_seeds = float(np.var(per_seed, ddof=1)) if seeds > 1 else 0.0
    var = v_studies + v_seeds / seeds
    parts = v_studies ** 2 / (units - 1) + ((v_seeds / seeds) ** 2 / (seeds - 1) if seeds > 1
                                            else 0.0)
    return {"mean": mean, "se": math.sqrt(var), "df": var ** 2 / parts if parts > 0 else math.inf,
            "se_studies": math.sqrt(v_studies), "sd_seeds": math.sqrt(v_seeds),
            "seeds": seeds, "units": units, "per_seed": per_seed.tolist()}


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


