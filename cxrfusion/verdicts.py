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
from dataclasses import dataclass
from statistics import NormalDist

from scipy import stats

from cxrfusion.params import PLACEBO, Comparison

VERDICTS = ("higher", "lower", "equivalent", "inconclusive")
POWER = 0.8  # the power at which the design's detectable difference is stated


@dataclass(frozen=True)
class Family:
    """The declared family as a graph (Bretz et al. 2009): each comparison's initial share of
    alpha (`weights`, in the declared order: the primary, the placebo, the secondaries) and,
    once it is shown, the shares of its alpha it passes to each other row (`passes`)."""
    weights: dict[str, float]
    passes: dict[str, dict[str, float]]
    placebo: str | None = None

    @property
    def primary(self) -> str:
        return next(iter(self.weights))

    def __contains__(self, name: str) -> bool:
        return name in self.weights

    def role(self, name: str) -> str:
        return ("primary" if name == self.primary else "placebo" if name == self.placebo else
                "secondary" if name in self.weights else "exploratory")

    def level(self, name: str) -> float:
        """The share of alpha at which a row is first tested: its weight, or for a row that
        starts with none (the placebo; a secondary of compare.primary_share 1), the share
        the rows before it pass to it once shown."""
        return self.weights[name] or math.fsum(
            self.weights[k] * out.get(name, 0.0) for k, out in self.passes.items())

    def adjust(self, p_values: dict[str, float]) -> dict[str, float]:
        """Each row's family-adjusted p (`graphical`)."""
        return graphical(p_values, self.weights, self.passes)


def family(primary: str, secondary: list[str], primary_share: float = 1.0,
           placebo: bool = False) -> Family:
    """The declared family. The primary holds `primary_share` of alpha (all of it without
    secondaries), each secondary an equal part of the rest. Without the placebo, each row once
    shown passes its alpha to the rows not yet shown in proportion to their weights: weighted
    Holm. With it (compare.placebo), fusion - shuffled on the primary's text input starts with
    none and follows the primary in a fixed sequence: the primary passes it all its alpha, and
    it passes what it holds on to the secondaries. (params.py's rule for `compare` refuses a
    family that names a comparison twice.)"""
    first = Comparison.parse(primary)
    rows = [Comparison(*PLACEBO, first.text_input).name] if placebo else []
    names = [first.name, *rows, *(Comparison.parse(s).name for s in secondary)]
    if len(set(names)) != len(names):
        raise ValueError(f"the family names a comparison twice: {names}")
    rest = names[1 + len(rows):]
    share = primary_share if rest else 1.0
    weights = {first.name: share, **{r: 0.0 for r in rows},
               **{r: (1 - share) / len(rest) for r in rest}}

    passes = {}
    for name in names:
        if rows and name == first.name:
            passes[name] = {rows[0]: 1.0}           # the sequence: primary, then placebo
        elif name in rows:
            passes[name] = _onward(weights, rest) if rest else {}
        else:
            targets = [t for t in names if t != name and t not in rows]
            passes[name] = _onward(weights, targets) if targets else {}
    return Family(weights, passes, rows[0] if rows else None)


def _onward(weights: dict[str, float], targets: list[str]) -> dict[str, float]:
    """A shown row's edges: to `targets` in proportion to their weights (in equal parts when
    they hold none)."""
    total = math.fsum(weights[t] for t in targets)
    return {t: weights[t] / total if total else 1 / len(targets) for t in targets}


def graphical(p_values: dict[str, float], weights: dict[str, float],
              passes: dict[str, dict[str, float]]) -> dict[str, float]:
    """Adjusted p-values of the graphical procedure (Bretz et al. 2009, their algorithm for
    adjusted p): the row with the smallest p / w is taken, its adjusted p is the largest p / w
    so far (at most 1); its weight goes to the rows left along its edges, and the edges that
    led to it are joined to those leaving it. Rows left with no weight get 1. It controls the
    family-wise error rate at any alpha: a row is shown when its adjusted p < alpha."""
    left = list(p_values)
    w = {k: weights[k] for k in left}
    g = {k: {m: passes.get(k, {}).get(m, 0.0) for m in left if m != k} for k in left}
    running, adjusted = 0.0, {}
    while left:
        j = min(left, key=lambda k: (p_values[k] / w[k] if w[k] > 0 else math.inf, k))
        if w[j] <= 0:  # nothing left to test them at
            adjusted.update({k: 1.0 for k in left})
            break
        running = max(running, min(1.0, p_values[j] / w[j]))
        adjusted[j] = running
        left.remove(j)
        for k in left:
            w[k] += w[j] * g[j][k]
        g = {k: {m: _joined(g, k, m, j) for m in left if m != k} for k in left}
    return {k: adjusted[k] for k in p_values}


def _joined(g: dict, k: str, m: str, j: str) -> float:
    """The edge k -> m once j is shown: its own, plus the way through j, renormalised."""
    loop = 1 - g[k][j] * g[j][k]
    return (g[k][m] + g[k][j] * g[j][m]) / loop if loop > 0 else 0.0


def weighted_holm(p_values: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """Weighted Holm's adjusted p-values: the graph in which each row passes its weight to the
    rows left in proportion to theirs. Equal weights: Holm's."""
    names, total = list(p_values), math.fsum(weights.values())
    weights = {k: weights[k] / total for k in names}  # only their ratios matter
    passes = {k: _onward(weights, [m for m in names if m != k]) for k in names}
    return graphical(p_values, weights, passes)


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
