"""The declared question and how each AUROC difference is read: the family of comparisons and
Holm's adjustment, the verdict of each row, and what the design could have found.

A comparison is named `<model>-<model>/<text input>`, e.g. fusion-image/indication: the AUROC
of the first model minus the second's, both on that text input's runs (the image model reads
no report: its runs are the same for every input). params.yaml's `compare` section declares
the primary comparison and the secondary ones; together they are the family, and every
p-value in it is Holm-adjusted over the family. A comparison outside it is exploratory: its
p-value is not adjusted and its verdict is reported as such.

Verdicts, by precedence (compare.alpha = a, compare.margin = m):
  higher / lower   the family-adjusted bootstrap p is below a (then the 1 - a interval also
                   excludes 0: bootstrap_p inverts it); the side is the interval's
  equivalent       otherwise, when the 1 - 2a interval lies inside (-m, +m): two one-sided
                   tests at a (equivalence_p)
  inconclusive     otherwise: neither a difference nor equivalence within the margin is shown
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from cxrfusion.params import Comparison
from cxrfusion.statistics import bootstrap_p, equivalence_p, interval

VERDICTS = ("higher", "lower", "equivalent", "inconclusive")
POWER = 0.8  # the power at which the design's detectable difference is stated


def family(primary: str, secondary: list[str]) -> dict[str, str]:
    """The declared family: comparison name -> role (primary | secondary), primary first.
    (params.py's rule for `compare` refuses a family that names a comparison twice.)"""
    names = [Comparison.parse(primary).name] + [Comparison.parse(s).name for s in secondary]
    if len(set(names)) != len(names):
        raise ValueError(f"the family names a comparison twice: {names}")
    return {name: "primary" if i == 0 else "secondary" for i, name in enumerate(names)}


def smallest_adjusted_p(resamples: int, family_size: int) -> float:
    """The smallest Holm-adjusted p a family can reach: family size x bootstrap_p's floor."""
    return min(1.0, family_size * 2 / (resamples + 1))


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes the largest of
    (m - j + 1) p_(j) over j <= i, at most 1 (so the adjusted values keep the order)."""
    names = sorted(p_values, key=lambda k: (p_values[k], k))
    m, running, adjusted = len(names), 0.0, {}
    for i, name in enumerate(names):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def verdict(p_adjusted: float, p_equivalence: float, low: float, high: float,
            alpha: float) -> str:
    """One of VERDICTS by the precedence in the module's docstring; `low`, `high`: the 1 -
    alpha interval."""
    if p_adjusted < alpha:
        return "higher" if low > 0 else "lower" if high < 0 else _disagree(low, high)
    return "equivalent" if p_equivalence < alpha else "inconclusive"


def _disagree(low: float, high: float):
    raise AssertionError(f"a rejected comparison whose interval [{low}, {high}] holds 0: "
                         "bootstrap_p and interval must invert each other")


def unadjusted(rounds: np.ndarray, alpha: float, margin: float) -> dict:
    """What the bootstrap rounds of one AUROC difference say before adjustment: the 1 - alpha
    interval, the 1 - 2 alpha interval of the equivalence test, and both p-values."""
    low90, high90 = interval(rounds, 1 - 2 * alpha)
    return {"p": bootstrap_p(rounds), "p_equivalence": equivalence_p(rounds, margin),
            "equivalence_interval": {"low": low90, "high": high90}}


def design(study_rounds: np.ndarray, per_seed: list[float], units: int, alpha_row: float,
           alpha: float, margin: float) -> dict:
    """What the study could have found, for one AUROC difference (mean over S seeds).

    Its variance is split into a test-study part, the variance over the bootstrap rounds of the
    difference with every seed kept (only the studies redrawn), and a training part, the
    between-seed variance of the per-seed differences over S: se^2 = v_studies + v_seeds / S.
    The detectable difference is the one a two-sided test at `alpha_row` finds with POWER:
    (z(1 - alpha_row / 2) + z(POWER)) se. Equivalence within the margin is within reach when the
    two one-sided tests at `alpha` would show it with POWER if the true difference were 0:
    se <= margin / (z(1 - alpha) + z((1 + POWER) / 2)). The test studies (patients) that would
    bring it there scale the test-study part as units / n; the seeds' part does not shrink with
    studies, so where it alone exceeds that bound no number of test studies reaches it (None),
    and seeds_needed says how many seeds would. With 3 seeds the training part rests on 2
    degrees of freedom: a rough figure, not a plan.
    """
    z = NormalDist().inv_cdf
    s = len(per_seed)
    v_studies = float(np.var(study_rounds, ddof=1))
    v_seeds = float(np.var(per_seed, ddof=1)) if s > 1 else 0.0
    se = math.sqrt(v_studies + v_seeds / s)
    reach = (margin / (z(1 - alpha) + z((1 + POWER) / 2))) ** 2  # the variance that reaches it
    room = reach - v_seeds / s
    studies = math.ceil(units * v_studies / room) if room > 0 and v_studies > 0 else None
    return {"se": se, "se_studies": math.sqrt(v_studies), "sd_seeds": math.sqrt(v_seeds),
            "alpha": alpha_row, "power": POWER,
            "detectable": (z(1 - alpha_row / 2) + z(POWER)) * se,
            "units_for_equivalence": studies,
            "seeds_needed": math.floor(v_seeds / reach) + 1 if v_seeds and room <= 0 else None}
