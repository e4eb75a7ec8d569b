"""Do the AUROC verdicts keep their promises? Studies drawn with a known true difference, read
by today's procedure and the new one (issue 36, item 4): the coverage of each row's 95 %
interval and the declared family's false-positive rate, under the global null and a partial
null, at 3 and at 10 training seeds, with studies independent and with patients holding
several studies.

    python bench/verdicts_simulation.py                     # the defaults: 2 processes, 763
                                                            # CPU-s; 9 min 39 s on the 2-core
                                                            # machine shared with other work
    python bench/verdicts_simulation.py --quick             # a few replications, every
                                                            # configuration: seconds
    python bench/verdicts_simulation.py --format table      # a table instead of JSON
    python bench/verdicts_simulation.py --replications 2000 --bootstrap 400 --workers 2

It prints one JSON object on stdout (or, with --format table, a table), progress on stderr;
it reads and writes no file.

The two procedures, each the project's own code (nothing re-implemented here):
  new    cxrfusion.statistics.seed_mean_difference per row (DeLong's test-study variance,
         clustered by patient where patients are given, + the between-seed variance / S,
         Satterthwaite's df), cxrfusion.verdicts.t_test (p and the 95 % interval), and
         cxrfusion.verdicts.weighted_holm over the family with verdicts.family's weights (the
         primary compare.primary_share = 0.8 of alpha): a row is shown when its adjusted p <
         alpha. No resampling.
  today  the two-level bootstrap cxrfusion.statistics.over_seeds (test studies, or patients,
         and seed rows resampled), once per text input with the same seed as stages/compare.py
         does; a row's p is statistics.bootstrap_p and its interval statistics.interval(0.95)
         of the AUROC-difference rounds; the family is adjusted by verdicts.holm (equal
         weights). The project runs compare.bootstrap = 2,000 resamples; here --bootstrap
         (default 400) per replication, because over_seeds scores all 8 measures in every round
         and 2,000 would not fit in 10 minutes. 400 and not fewer: with 6 comparisons Holm's
         first step needs p < 0.05 / 6 = 0.0083, and bootstrap_p's floor 2 / (n + 1) is under
         it only from n = 240 on; 400 keeps the floor (0.005) clear of it and puts the 95 %
         interval's ends at the 10th value from each side, not the 6th. Fewer resamples make
         the interval's ends noisier, not biased. They do make the p coarser: at 400, Holm's
         first step (0.0083) is passed only by p = 2 / 401, no resample on the other side of
         0 (at 2,000, by up to 7), so today's family rejects somewhat less often than with
         2,000 resamples: its false-positive rate (and power) here are, if anything,
         underestimates. --old-replications runs it on the first replications only (default:
         all of them).

The data-generating model (per replication; every number below is a constant of this file):
  - 98 test studies, 59 abnormal (the demo's test split, data/prepared/counts.json; the
    abnormal ones placed at random each replication);
  - five models, as the pipeline trains them: the image model (it reads no report: the same
    runs for both text inputs) and the text and fusion models of each text input
    (indication, findings+impression), each trained S times (S = 3 or 10 seeds);
  - the latent score of study i by run s of model m:
        x = y_i mu_{m,s} + u_i + w_{i,m} + e_{i,m,s},   mu_{m,s} = mu_m + 0.2 z_{m,s}
    u_i ~ N(0, 0.4) shared by every model (the models' errors correlate: some studies are hard
    for all), w_{i,m} ~ N(0, 0.4) model m's own, the same for all its seeds, e_{i,m,s} ~
    N(0, 0.2) each run's own; z_{m,s} ~ N(0, 1) is the training seed as a random effect on the
    model's separation (sd 0.2 latent units: an AUROC sd over seeds of about 0.03 to 0.04,
    the demo's); the probability is the logistic of x (AUROC does not see the transform, the
    0.5 thresholds of today's descriptive measures do);
  - configurations: S3 and S10 (studies independent), S3_patients (the defaults), and on
    request S10_patients (--configs; it would push the default run past 10 minutes);
  - with patients (the *_patients configurations): 40 patients of 1 to 6 studies (12 x 1, 11 x 2,
    8 x 3, 6 x 4, 2 x 5, 1 x 6 = 98 studies), each study's patient drawn at random each
    replication; half of u's and of each w's variance is the patient's (shared by all of the
    patient's studies), half the study's. Both procedures get the patients (over_seeds
    resamples patients; seed_mean_difference clusters by patient).
  - mu_m = Phi^-1(A_m) sqrt(2 + 0.2^2), so that a run on studies of two patients ranks an
    abnormal above a normal study with probability A_m on average over seeds (E Phi(a + bZ) =
    Phi(a / sqrt(1 + b^2))). Scenarios, A_m per model:
      global null   every model 0.80: the six differences 0
      partial null  image 0.80; indication: text 0.80, fusion 0.80 (its three rows null);
                    findings+impression: text 0.90, fusion 0.90 (text - image and fusion -
                    image +0.10, non-null; fusion - text null): four true nulls, two not
    Both scenarios are drawn from the same random numbers (only mu differs).
  - The true difference of a row is the expected seed-mean AUROC difference of this design:
    a pair of studies of one patient shares the patient's part of u and w, so it is ranked
    right with probability Phi(mu_m / sqrt(2 (1 - 0.4) + 0.2^2)); the expected share of such
    pairs among abnormal-normal pairs is q = sum_p C(n_p, 2) / C(98, 2) (0.0223 here; 0
    without patients), and the expected AUROC is (1 - q) A_m + q times that. It is computed
    analytically, exactly (no Monte Carlo error in the truth).

What is reported, per configuration (S, patients or not), scenario and procedure, each rate r
over R replications with its Monte Carlo SE sqrt(r (1 - r) / R):
  coverage_primary   the primary row's (fusion-image/indication) 95 % interval holds its true
                     difference
  coverage_rows      the six rows' coverage averaged (its SE from the replications' own
                     averages, which are correlated within a replication); coverage per row
  fpr                the family's false-positive rate: the share of replications in which at
                     least one TRUE-null row of the family is shown (adjusted p < alpha)
  rejections         per row, the share of replications in which it is shown (the partial
                     null's non-null rows: power)
`seconds`: the run's wall clock (total) and each procedure's, summed over the replications
(the wall clock inside the workers: with busy cores, more than their CPU time).
`targets` holds, for the new procedure only, coverage_primary and coverage_rows >= 0.93 and
fpr <= alpha (the point estimates; their SEs beside them), `all_targets_pass` their
conjunction. No target is held to today's procedure: it is the baseline.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import NormalDist

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrfusion import verdicts  # noqa: E402
from cxrfusion.params import PAIRS, Compare, Comparison  # noqa: E402
from cxrfusion.statistics import (  # noqa: E402
    bootstrap_p,
    interval,
    over_seeds,
    seed_mean_difference,
)

# --- the design ---------------------------------------------------------------------------------

STUDIES, ABNORMAL = 98, 59                 # the demo's test split (data/prepared/counts.json)
INPUTS = ("indication", "findings+impression")
MODELS = ("image",) + tuple(f"{v}@{i}" for i in INPUTS for v in ("text", "fusion"))
SHARED, OWN, RUN = 0.4, 0.4, 0.2          # variance of u, w, e: within a class, 1 in all
SD_SEED = 0.2                              # the training seed's random effect on mu
PATIENT_SHARE = 0.5                        # of u's and w's variance, with patients
PATIENT_SIZES = [1] * 12 + [2] * 11 + [3] * 8 + [4] * 6 + [5] * 2 + [6] * 1
assert sum(PATIENT_SIZES) == STUDIES and len(PATIENT_SIZES) == 40
SCENARIOS = {  # A_m: the chance a run ranks an abnormal study of one patient above a normal one
    # of another, on average over seeds
    "global_null": {"image": 0.80, "text@indication": 0.80, "fusion@indication": 0.80,
                    "text@findings+impression": 0.80, "fusion@findings+impression": 0.80},
    "partial_null": {"image": 0.80, "text@indication": 0.80, "fusion@indication": 0.80,
                     "text@findings+impression": 0.90, "fusion@findings+impression": 0.90},
}
CONFIGS = {  # name -> (seeds, patients?)
    "S3": (3, False), "S10": (10, False), "S3_patients": (3, True), "S10_patients": (10, True)}
DEFAULT_CONFIGS = ["S3", "S10", "S3_patients"]  # S10_patients on request: the time budget
TARGET_COVERAGE = 0.93

COMPARE = Compare()  # the project's defaults: primary, secondary, alpha, primary_share, margin
# the family without the placebo's and the TF-IDF baseline's rows (neither is simulated):
# weighted Holm
SIMULATED = ("fusion", "image", "text")
WEIGHTS = verdicts.family(COMPARE.primary, [
    name for name in COMPARE.secondary if {Comparison.parse(name).a,
                                           Comparison.parse(name).b} <= set(SIMULATED)],
    COMPARE.primary_share).weights
FAMILY = list(WEIGHTS)                     # comparison names, the primary first
ALPHA, MARGIN = COMPARE.alpha, COMPARE.margin
PHI = NormalDist()


def model_of(variant: str, text_input: str) -> str:
    """The simulated model a comparison's variant reads: the image model is the same for
    every text input."""
    return "image" if variant == "image" else f"{variant}@{text_input}"


def rows() -> dict[str, tuple[str, str]]:
    """Family name -> (model a, model b)."""
    out = {}
    for name in FAMILY:
        c = Comparison.parse(name)
        out[name] = (model_of(c.a, c.text_input), model_of(c.b, c.text_input))
    return out


def mu(auroc: float) -> float:
    return PHI.inv_cdf(auroc) * math.sqrt(2 + SD_SEED ** 2)


def same_patient_share(patients: bool) -> float:
    """q: the expected share of abnormal-normal pairs that are two studies of one patient."""
    if not patients:
        return 0.0
    return sum(n * (n - 1) for n in PATIENT_SIZES) / (STUDIES * (STUDIES - 1))


def expected_auroc(auroc: float, patients: bool) -> float:
    """The expected AUROC of one run on this design (module docstring)."""
    q = same_patient_share(patients)
    within = PHI.cdf(mu(auroc) / math.sqrt(2 * (1 - PATIENT_SHARE * (SHARED + OWN))
                                           + SD_SEED ** 2))
    return (1 - q) * auroc + q * within


def truths(scenario: str, patients: bool) -> dict[str, float]:
    a = SCENARIOS[scenario]
    return {name: expected_auroc(a[ma], patients) - expected_auroc(a[mb], patients)
            for name, (ma, mb) in rows().items()}


# --- one replication ----------------------------------------------------------------------------

def draw(rng: np.random.Generator, seeds: int, patients: bool):
    """Labels, patient ids (or None) and each model's standardised parts: what both scenarios
    share."""
    y = np.zeros(STUDIES, dtype=int)
    y[rng.choice(STUDIES, ABNORMAL, replace=False)] = 1
    if patients:
        groups = rng.permutation(np.repeat(np.arange(len(PATIENT_SIZES)), PATIENT_SIZES))
        share = PATIENT_SHARE
    else:
        groups, share = None, 0.0

    def effect(variance: float) -> np.ndarray:
        own = rng.standard_normal(STUDIES) * math.sqrt(variance * (1 - share))
        if groups is None:
            return own
        return own + rng.standard_normal(len(PATIENT_SIZES))[groups] * math.sqrt(variance * share)

    u = effect(SHARED)
    parts = {m: (u + effect(OWN) + rng.standard_normal((seeds, STUDIES)) * math.sqrt(RUN),
                 rng.standard_normal(seeds)) for m in MODELS}
    return y, groups, parts


def probabilities(y: np.ndarray, parts: dict, scenario: str) -> dict[str, np.ndarray]:
    """Each model's (seeds, studies) probabilities under `scenario`."""
    out = {}
    for m, (noise, z) in parts.items():
        mu_s = mu(SCENARIOS[scenario][m]) + SD_SEED * z
        out[m] = 1 / (1 + np.exp(-(y * mu_s[:, None] + noise)))
    return out


def new_procedure(y, groups, probs: dict) -> dict:
    """Per family row: p, 95 % interval, adjusted p (weighted Holm)."""
    out, pairs = {}, rows()
    for name, (a, b) in pairs.items():
        tested = seed_mean_difference(y, probs[a], probs[b], groups)
        t = verdicts.t_test(tested, ALPHA, MARGIN, WEIGHTS[name])
        out[name] = {"mean": tested["mean"], "p": t["p"], "low": t["low"], "high": t["high"]}
    adjusted = verdicts.weighted_holm({k: r["p"] for k, r in out.items()}, WEIGHTS)
    for name, r in out.items():
        r["p_adjusted"] = adjusted[name]
    return out


def today_procedure(y, groups, probs: dict, bootstrap: int, seed: int) -> dict:
    """Per family row: bootstrap p, 95 % percentile interval, Holm-adjusted p; over_seeds once
    per text input with the same seed (stages/compare.py's compare_input)."""
    out = {}
    for text_input in INPUTS:
        models = {v: {"probs": probs[model_of(v, text_input)],
                      "thresholds": np.full(len(probs["image"]), 0.5)}
                  for v in SIMULATED}
        result = over_seeds(y, models, [pair for pair in PAIRS if set(pair) <= set(models)],
                            bootstrap, seed, groups, level=1 - ALPHA)  # no placebo simulated
        for c in Comparison.of_input(text_input):
            if c.name not in WEIGHTS:
                continue
            rounds = result["rounds"][c.ascii_label]["auroc"]
            low, high = interval(rounds, 1 - ALPHA)
            out[c.name] = {"mean": result["pairs"][c.ascii_label]["auroc"]["mean"],
                           "p": bootstrap_p(rounds), "low": low, "high": high}
    adjusted = verdicts.holm({k: out[k]["p"] for k in FAMILY})
    for name in FAMILY:
        out[name]["p_adjusted"] = adjusted[name]
    return {name: out[name] for name in FAMILY}


def outcome(rows_: dict, truth: dict) -> tuple[list[bool], list[bool]]:
    """(covered, shown) per family row."""
    return ([r["low"] <= truth[k] <= r["high"] for k, r in rows_.items()],
            [r["p_adjusted"] < ALPHA for r in rows_.values()])


def replicate(task: tuple) -> dict:
    """Replications `first` to `last - 1` of one configuration: per scenario and procedure,
    arrays (replications, rows) of covered and shown, and the seconds each procedure took."""
    config, first, last, old_last, bootstrap, seed = task
    seeds, patients = CONFIGS[config]
    index = list(CONFIGS).index(config)
    out = {s: {"new": {"covered": [], "shown": []}, "today": {"covered": [], "shown": []}}
           for s in SCENARIOS}
    spent = {"new": 0.0, "today": 0.0}
    truth = {s: truths(s, patients) for s in SCENARIOS}
    for rep in range(first, last):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, rep]))
        y, groups, parts = draw(rng, seeds, patients)
        for scenario in SCENARIOS:
            probs = probabilities(y, parts, scenario)
            t0 = time.perf_counter()
            covered, shown = outcome(new_procedure(y, groups, probs), truth[scenario])
            spent["new"] += time.perf_counter() - t0
            out[scenario]["new"]["covered"].append(covered)
            out[scenario]["new"]["shown"].append(shown)
            if rep < old_last:
                t0 = time.perf_counter()
                covered, shown = outcome(
                    today_procedure(y, groups, probs, bootstrap,
                                    (seed * len(CONFIGS) + index) * 1_000_003 + rep),
                    truth[scenario])
                spent["today"] += time.perf_counter() - t0
                out[scenario]["today"]["covered"].append(covered)
                out[scenario]["today"]["shown"].append(shown)
    return {"config": config, "first": first, "outcomes": out, "seconds": spent}


# --- summaries ----------------------------------------------------------------------------------

def rate(hits) -> dict:
    hits = np.asarray(hits, dtype=float)
    r, n = float(hits.mean()), len(hits)
    return {"rate": r, "mc_se": math.sqrt(r * (1 - r) / n), "replications": n}


def summarise(covered: np.ndarray, shown: np.ndarray, truth: dict) -> dict:
    """The rates of one procedure in one configuration and scenario (module docstring)."""
    null = np.array([truth[k] == 0 for k in FAMILY])
    per_rep = covered.mean(axis=1)
    n = len(covered)
    out = {
        "coverage_primary": rate(covered[:, 0]),
        "coverage_rows": {"rate": float(per_rep.mean()),
                          "mc_se": float(per_rep.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
                          "replications": n},
        "fpr": rate(shown[:, null].any(axis=1)) if null.any() else None,
        "coverage_by_row": {k: float(covered[:, j].mean()) for j, k in enumerate(FAMILY)},
        "rejections": {k: float(shown[:, j].mean()) for j, k in enumerate(FAMILY)},
    }
    return out


def targets(results: dict) -> dict:
    out = {}
    for config, scenarios in results.items():
        for scenario, procs in scenarios.items():
            new = procs["new"]
            for key, value, target, ok in (
                    ("coverage_primary", new["coverage_primary"], f">= {TARGET_COVERAGE}",
                     new["coverage_primary"]["rate"] >= TARGET_COVERAGE),
                    ("coverage_rows", new["coverage_rows"], f">= {TARGET_COVERAGE}",
                     new["coverage_rows"]["rate"] >= TARGET_COVERAGE),
                    ("fpr", new["fpr"], f"<= {ALPHA}", new["fpr"]["rate"] <= ALPHA)):
                out[f"{config}/{scenario}/new/{key}"] = {
                    "value": value["rate"], "mc_se": value["mc_se"], "target": target,
                    "pass": bool(ok)}
    return out


def table(result: dict) -> str:
    lines = [f"{'configuration':14} {'scenario':13} {'procedure':9} {'R':>5} "
             f"{'coverage primary':>18} {'coverage rows':>16} {'FPR':>16}"]
    for config, scenarios in result["results"].items():
        for scenario, procs in scenarios.items():
            for proc, s in procs.items():
                def cell(d):
                    return f"{d['rate']:.3f} ({d['mc_se']:.3f})"
                lines.append(f"{config:14} {scenario:13} {proc:9} "
                             f"{s['coverage_primary']['replications']:>5} "
                             f"{cell(s['coverage_primary']):>18} {cell(s['coverage_rows']):>16} "
                             f"{cell(s['fpr']):>16}")
    failed = [k for k, t in result["targets"].items() if not t["pass"]]
    lines.append(f"(MC SE in brackets) new procedure's targets: coverage >= "
                 f"{TARGET_COVERAGE}, FPR <= {ALPHA}: "
                 + ("all pass" if not failed else "missed: " + ", ".join(failed)))
    lines.append(f"seconds: {result['seconds']}")
    return "\n".join(lines)


# --- the command line ---------------------------------------------------------------------------

def run(replications: int, old_replications: int, bootstrap: int, workers: int, seed: int,
        configs: list[str], chunk: int = 50) -> dict:
    start = time.perf_counter()
    tasks = [(config, first, min(first + chunk, replications), old_replications, bootstrap,
              seed) for config in configs for first in range(0, replications, chunk)]
    parts = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for i, part in enumerate(pool.map(replicate, tasks)):
                parts.append(part)
                _progress(i + 1, len(tasks), start)
    else:
        for i, task in enumerate(tasks):
            parts.append(replicate(task))
            _progress(i + 1, len(tasks), start)
    results, seconds = {}, {"new": 0.0, "today": 0.0}
    for config in configs:
        mine = sorted((p for p in parts if p["config"] == config), key=lambda p: p["first"])
        for p in mine:
            for k in seconds:
                seconds[k] += p["seconds"][k]
        results[config] = {}
        for scenario in SCENARIOS:
            truth = truths(scenario, CONFIGS[config][1])
            results[config][scenario] = {}
            for proc in ("new", "today"):
                covered = np.array([c for p in mine
                                    for c in p["outcomes"][scenario][proc]["covered"]], bool)
                shown = np.array([s for p in mine
                                  for s in p["outcomes"][scenario][proc]["shown"]], bool)
                if len(covered):
                    results[config][scenario][proc] = summarise(
                        covered.reshape(-1, len(FAMILY)), shown.reshape(-1, len(FAMILY)),
                        truth)
    out = {
        "question": "issue 36, item 4: coverage of the 95 % interval and the family's "
                    "false-positive rate, today's procedure (over_seeds bootstrap, Holm) and "
                    "the new one (seed_mean_difference t, weighted Holm)",
        "family": FAMILY, "weights": WEIGHTS, "alpha": ALPHA,
        "design": {"studies": STUDIES, "abnormal": ABNORMAL, "patients": len(PATIENT_SIZES),
                   "patient_sizes": PATIENT_SIZES, "variances": {"shared": SHARED, "own": OWN,
                                                                 "run": RUN},
                   "sd_seed": SD_SEED, "patient_share": PATIENT_SHARE,
                   "scenarios": SCENARIOS,
                   "configs": {c: {"seeds": CONFIGS[c][0], "patients": CONFIGS[c][1]}
                               for c in configs},
                   "true_differences": {c: {s: truths(s, CONFIGS[c][1]) for s in SCENARIOS}
                                        for c in configs}},
        "replications": replications, "old_replications": min(old_replications, replications),
        "bootstrap": bootstrap, "seed": seed, "workers": workers,
        "results": results,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    }
    out["targets"] = targets(results)
    out["all_targets_pass"] = all(t["pass"] for t in out["targets"].values())
    out["seconds"] = {"total": round(time.perf_counter() - start, 1),
                      "new_summed": round(seconds["new"], 1),
                      "today_summed": round(seconds["today"], 1)}
    return out


def _progress(done: int, total: int, start: float) -> None:
    elapsed = time.perf_counter() - start
    sys.stderr.write(f"\r{done}/{total} chunks, {elapsed:.0f} s"
                     + (f", about {elapsed / done * (total - done):.0f} s left" if done < total
                        else "\n"))
    sys.stderr.flush()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replications", type=int, default=1000,
                        help="replications of each configuration (default 1000)")
    parser.add_argument("--old-replications", type=int, default=None,
                        help="today's procedure on the first N of them only (default: all)")
    parser.add_argument("--bootstrap", type=int, default=400,
                        help="over_seeds' resamples per replication (default 400; >= 240)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes (default 2: the development machine's cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help=f"default: {' '.join(DEFAULT_CONFIGS)} (S10_patients doubles "
                        "today's cost of S3_patients: on request); with --quick all four")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 2 replications, 40 resamples (the fewest a 95 %% "
                        "interval needs), one process, every configuration")
    parser.add_argument("--format", choices=("json", "table"), default="json")
    args = parser.parse_args(argv)
    if args.quick:
        args.replications, args.bootstrap, args.workers = 2, 40, 1
    if args.configs is None:
        args.configs = list(CONFIGS) if args.quick else DEFAULT_CONFIGS
    old = args.replications if args.old_replications is None else args.old_replications
    result = run(args.replications, old, args.bootstrap, args.workers, args.seed, args.configs,
                 chunk=50 if not args.quick else 1)
    if args.quick:
        result["mode"] = "quick: meaningless rates"
    sys.stdout.write((json.dumps(result, indent=2) if args.format == "json" else table(result))
                     + "\n")
    return result


if __name__ == "__main__":
    main()
