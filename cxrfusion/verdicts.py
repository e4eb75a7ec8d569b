"""The declared question and how each AUROC difference is read: the family of comparisons and
its procedure, the test of each row, its verdict, and what the design could have found.

A comparison is named `<model>-<model>/<text input>`, e.g. fusion-image/indication: the AUROC
of the first model minus the second's, both on that text input's runs (the image model reads
no report: its runs are the same for every input). params.yaml's `compare` section declares
the primary comparison and the secondary ones: together they are the study's family. A
comparison outside it is exploratory: its p is not adjusted and its verdict says so.

One construction a row (statistics.seed_mean_difference): the seed-mean difference d, its
standard error se (test studies by DeLong's components, clustered by patient where patients are
known, plus the between-seed variance over S) and Satterthwaite's degrees of freedom f. From
the one t = d / se on f degrees of freedom: the two-sided p, the 1 - a interval (it excludes 0
exactly when p < a), the two one-sided tests of equivalence within the margin m and their
1 - 2a interval. No resampling: no verdict depends on compare.seed.

The family's procedure: weighted Holm (Holm 1979; in Bretz et al. 2009's graphical terms, each
shown hypothesis passes its weight to those not yet shown in proportion to theirs). The primary
holds `compare.primary_share` of alpha, the secondaries the rest in equal shares, so the
primary is tested first at its share and the secondaries stay testable when it is not shown.
It controls the family-wise error rate at alpha. Equivalence is a family of its own under the
same procedure and weights (alpha again): a row reads equivalent only when its two one-sided
tests survive it. The adjusted interval of a row is the single-step 1 - w a interval, w its
weight: it excludes 0 only where the row is shown (a finding's may still hold 0: the procedure
passes alpha on after each finding).

Verdicts, by precedence (a = compare.alpha):
  higher / lower   the family-adjusted p of the difference is below a; the side is the sign
  equivalent       otherwise, the family-adjusted p of the two one-sided tests is below a
  inconclusive     otherwise: neither a difference nor equivalence within the margin is shown
"""
from __future__ import annotations

import math
from statistics import NormalDist

from scipy import stats

from cxrfusion.params import Comparison

VERDICTS = ("higher", "lower", "equivalent", "inconclusive")
POWER = 0.8  # the power at which the design's detectable difference is stated


def family(primary: str, secondary: list[str], primary_share: float = 1.0) -> dict[str, float]:
    """The declared family: comparison name -> its weight (share of alpha), primary first:
    the primary `primary_share`, each secondary an equal part of the rest (the primary all of
    it without secondaries). (params.py's rule for `compare` refuses a family that names a
    comparison twice.)"""
    names = [Comparison.parse(primary).name] + [Comparison.parse(s).name for s in secondary]
    if len(set(names)) != len(names):
        raise ValueError(f"the family names a comparison twice: {names}")
    if len(names) == 1:
        return {names[0]: 1.0}
    rest = (1 - primary_share) / (len(names) - 1)
    return {name: primary_share if i == 0 else rest for i, name in enumerate(names)}


def weighted_holm(p_values: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """Weighted Holm's adjusted p-values: taken in order of p / w, the j-th is the largest over
    i <= j of p_(i) W_(i) / w_(i), W_(i) the weight of the hypotheses not yet shown at step i,
    at most 1 (so the adjusted values keep the order). Equal weights: Holm's."""
    names = sorted(p_values, key=lambda k: (p_values[k] / weights[k] if weights[k] else math.inf,
                                             k))
    running, adjusted = 0.0, {}
    for i, name in enumerate(names):
        w, left = weights[name], math.fsum(weights[k] for k in names[i:])
        step = min(1.0, p_values[name] * (left / w)) if w > 0 else 1.0  # the last: p itself
        running = max(running, step)
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment: weighted_holm with equal weights."""
    return weighted_holm(p_values, {k: 1.0 for k in p_values})


def t_test(row: dict, alpha: float, margin: float, weight: float | None) -> dict:
    """A row's p, its 1 - alpha interval, the two one-sided tests of equivalence within
    +-margin and their 1 - 2 alpha interval, and with a family `weight` the 1 - weight alpha
    interval (single-step, adjusted), all from t = mean / se on the row's degrees of freedom."""
    d, se, df = row["mean"], row["se"], row["df"]
    t = stats.t(df)

    def bounds(level: float) -> dict:  # an AUROC difference lies in [-1, 1]: cut there
        half = t.ppf(1 - (1 - level) / 2) * se
        return {"low": max(-1.0, d - half), "high": min(1.0, d + half)}

    if se > 0:
        p = float(2 * t.sf(abs(d) / se))
        p_eq = float(max(t.sf((d + margin) / se), t.cdf((d - margin) / se)))
    else:  # every run ranks alike: the difference is known exactly
        p = 1.0 if d == 0 else 0.0
        p_eq = 0.0 if abs(d) < margin else 1.0
    out = {**bounds(1 - alpha), "p": p, "p_equivalence": p_eq,
           "equivalence_interval": bounds(1 - 2 * alpha), "df": df, "se": se}
    if weight is not None:
        out["adjusted_interval"] = {**bounds(1 - weight * alpha), "level": 1 - weight * alpha}
    return out


def verdict(p_adjusted: float, p_equivalence_adjusted: float, mean: float, alpha: float) -> str:
    """One of VERDICTS by the precedence in the module's docstring."""
    if p_adjusted < alpha:
        return "higher" if mean > 0 else "lower"
    return "equivalent" if p_equivalence_adjusted < alpha else "inconclusive"


def design(row: dict, alpha_row: float, alpha: float, margin: float) -> dict:
    """What the study could have found, for one AUROC difference, with the test it ran.

    The detectable difference is the true difference the two-sided t test at `alpha_row` (the
    row's share of alpha) finds with POWER: (t(1 - alpha_row / 2) + t(POWER)) se, on the row's
    degrees of freedom. Equivalence within the margin is within reach when the two one-sided
    tests at `alpha` would show it with POWER were the true difference 0: se <= margin /
    (t(1 - alpha) + t((1 + POWER) / 2)). The test studies (patients) that would bring se there
    scale the test-study part as units / n, with these seeds; the seeds that would, scale the
    training part as S / s, with these test studies. Where one part alone exceeds the bound,
    no number of the other suffices (None). The t quantiles are those of today's degrees of
    freedom: a guide, not a plan.
    """
    t = stats.t(row["df"])
    se, seeds, units = row["se"], row["seeds"], row["units"]
    v_studies, v_seeds = row["se_studies"] ** 2, row["sd_seeds"] ** 2
    reach = (margin / (t.ppf(1 - alpha) + t.ppf((1 + POWER) / 2))) ** 2
    room_studies = reach - v_seeds / seeds        # what the test studies may take
    room_seeds = reach - v_studies                # what the seeds may take
    studies = (math.ceil(units * v_studies / room_studies)
               if room_studies > 0 and v_studies > 0 else None)
    needed_seeds = (max(2, math.ceil(v_seeds / room_seeds)) if room_seeds > 0 and v_seeds > 0
                    else None)
    return {"se": se, "se_studies": row["se_studies"], "sd_seeds": row["sd_seeds"],
            "df": row["df"], "alpha": alpha_row, "power": POWER,
            "detectable": (t.ppf(1 - alpha_row / 2) + t.ppf(POWER)) * se,
            "units_for_equivalence": studies, "seeds_for_equivalence": needed_seeds}


def hanley_mcneil(auroc: float, abnormal: int, normal: int) -> float:
    """The variance of an AUROC estimate on `abnormal` and `normal` studies (Hanley & McNeil
    1982, with their exponential approximations of Q1 and Q2)."""
    q1, q2 = auroc / (2 - auroc), 2 * auroc ** 2 / (1 + auroc)
    return (auroc * (1 - auroc) + (abnormal - 1) * (q1 - auroc ** 2)
            + (normal - 1) * (q2 - auroc ** 2)) / (abnormal * normal)


def planned_test_studies(auroc_a: float, auroc_b: float, prevalence: float, correlation: float,
                         sd_seeds: float, seeds: int, alpha_row: float,
                         power: float = POWER) -> int | None:
    """The test studies that let the two-sided test at `alpha_row` show the expected AUROC
    difference auroc_a - auroc_b with `power`: the smallest n with (z(1 - alpha_row / 2) +
    z(power)) se(n) <= |difference|, se(n)^2 = V_a + V_b - 2 r sqrt(V_a V_b) + sd_seeds^2 /
    seeds (Hanley-McNeil variances at n x prevalence abnormal studies). None when the seeds'
    part alone is too large for any n. Normal quantiles: the degrees of freedom of a study not
    yet run are unknown, so a plan takes them as many."""
    z = NormalDist().inv_cdf
    bound = (abs(auroc_a - auroc_b) / (z(1 - alpha_row / 2) + z(power))) ** 2

    def variance(n: int) -> float:
        m = max(2, round(n * prevalence))
        k = max(2, n - m)
        va, vb = hanley_mcneil(auroc_a, m, k), hanley_mcneil(auroc_b, m, k)
        return va + vb - 2 * correlation * math.sqrt(va * vb) + sd_seeds ** 2 / seeds

    if sd_seeds ** 2 / seeds >= bound:
        return None
    low, high = 4, 8
    while variance(high) > bound:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if variance(mid) > bound else (low, mid)
    return high
