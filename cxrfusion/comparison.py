"""The declared question answered from every run's predictions (stage `compare`): per text
input, each model's metrics over seeds and the paired differences with descriptive intervals
(statistics.over_seeds), DeLong per seed and for the ensemble, each AUROC difference's test
(statistics.seed_mean_difference), family-adjusted p, verdict and design
(cxrfusion/verdicts.py), and the figures of comparison.json.

`scored`: {Run: {"test", "val": studies (uid, label, probability), "evaluation": what
`evaluate` wrote, "rule": the rule that chose its threshold}}, every run on the same studies.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrfusion import figures, params, results, verdicts
from cxrfusion.formats import runs_of
from cxrfusion.metrics import calibrated_ece, calibration, ece_bins
from cxrfusion.params import Comparison, Params
from cxrfusion.statistics import delong, over_seeds, seed_mean_difference


def answer_question(scored: dict, labels: np.ndarray, validation_studies: int,
                    validation: dict | None, groups, p: Params) -> dict:
    """comparison.json: the test set, the bootstrap, every model and difference per text
    input, and the declared question's answer. `validation`: the validation studies' labels
    and patients when they are redrawn (compare.resample_validation), else None; `groups`: each
    test study's patient, or None."""
    c, seeds = p.compare, p.train.seeds
    result = {"test_studies": len(labels), "validation_studies": validation_studies,
              **({"resampled": "studies", "resampled_units": len(labels)} if groups is None
                 else {"resampled": "patients", "resampled_units": len(np.unique(groups))}),
              "seeds": len(seeds), "threshold": p.evaluate.threshold,
              "specificity": p.evaluate.specificity,
              "bootstrap": {"resamples": c.bootstrap, "seed": c.seed,
                            "validation_resampled": c.resample_validation,
                            "level": 1 - c.alpha},
              "ece_bins": ece_bins(len(labels)),  # equal-mass
              "models": {}, "differences": {}}
    tested = {}
    for text_input in p.text.inputs:
        result["models"][text_input], result["differences"][text_input], tested[text_input] = (
            compare_input(scored, text_input, labels, validation, groups, p))
    answer(result, tested, p)
    return result


# --- per text input -----------------------------------------------------------------

def spread(sd) -> float | None:
    """A standard deviation over seeds; None (JSON null) with one seed, where it has none: a
    NaN would make comparison.json unreadable to strict JSON readers."""
    return None if sd is None or not np.isfinite(sd) else float(sd)


def by_seed(values, seeds) -> dict:
    """Per-seed numbers as named keys (`dvc metrics` list named numbers, not lists)."""
    return {f"seed-{s}": v for s, v in zip(seeds, values)}


def model_rows(scored: dict, variant: str, text_input: str, seeds) -> dict:
    """over_seeds' input for one model: its seed rows of test and validation probabilities
    (one row for an arm trained once)."""
    mine = [scored[run] for run in runs_of(variant, text_input, seeds)]
    return {"probs": np.stack([r["test"]["probability"].to_numpy() for r in mine]),
            "val_probs": np.stack([r["val"]["probability"].to_numpy() for r in mine]),
            "thresholds": np.array([r["evaluation"]["threshold"] for r in mine]),
            "rule": mine[0]["rule"]}


def seeds_of(variant: str, seeds) -> list:
    """The seeds a model's rows stand for: none of their own for an arm trained once."""
    return [] if params.row(variant).trained_once else list(seeds)


def delong_rows(labels, a: np.ndarray, b: np.ndarray, seeds) -> dict:
    """DeLong's test where it is valid: per seed, and for the ensemble of each model's
    seed-averaged predictions (its own AUROCs and difference, not the seed-mean's)."""
    ensemble = delong(labels, a.mean(0), b.mean(0))
    a, b = np.broadcast_arrays(a, b)  # an arm trained once: its one row against each seed's
    return {"ensemble": {k: ensemble[k] for k in ("auroc_a", "auroc_b", "difference", "p")},
            **by_seed([{k: d[k] for k in ("difference", "p")}
                       for d in (delong(labels, x, y) for x, y in zip(a, b))], seeds)}


def compare_input(scored: dict, text_input: str, labels, validation: dict | None, groups,
                  p: Params) -> tuple[dict, dict, dict]:
    """One text input's models and paired differences, and the construction each pair's AUROC
    difference is tested with (statistics.seed_mean_difference)."""
    c, seeds = p.compare, p.train.seeds
    models = {v: model_rows(scored, v, text_input, seeds) for v in params.arms(p)}
    stats = over_seeds(labels, models, params.pairs(p), c.bootstrap, c.seed, groups,
                       specificity=p.evaluate.specificity, validation=validation,
                       level=1 - c.alpha)
    summary = {v: {metric: {"mean": s["mean"], "sd": spread(s["sd"]), "low": s["low"],
                            "high": s["high"], **by_seed(s["per_seed"], seeds_of(v, seeds))}
                   for metric, s in stats["models"][v].items()} for v in models}
    for v, m in models.items():  # what noise alone gives a calibrated model with these scores
        floors = [calibrated_ece(row, seed=c.seed) for row in m["probs"]]
        summary[v]["ece_floor"] = {"mean": float(np.mean(floors)),
                                   **by_seed(floors, seeds_of(v, seeds))}
    differences, tested = {}, {}
    for pair in Comparison.of_input(text_input, p):
        name, key = pair.ascii_label, pair.key  # over_seeds' name, comparison.json's key
        s = stats["pairs"][name]
        differences[key] = {metric: {"mean": d["mean"], "low": d["low"], "high": d["high"],
                                     **by_seed(d["per_seed"], seeds)} for metric, d in s.items()}
        differences[key]["delong"] = delong_rows(labels, models[pair.a]["probs"],
                                                 models[pair.b]["probs"], seeds)
        tested[key] = seed_mean_difference(labels, models[pair.a]["probs"],
                                           models[pair.b]["probs"], groups)
    return summary, differences, tested


# --- the declared question -------------------------------------------------------------------

def answer(result: dict, tested: dict, p: Params) -> None:
    """Each AUROC difference's test, family-adjusted p, verdict and design, in `result`
    (`tested`: per text input and pair key, its statistics.seed_mean_difference)."""
    c = p.compare
    alpha, margin = c.alpha, c.margin
    fam = verdicts.family(c.primary, params.secondaries(c), c.primary_share, c.placebo)
    rows = {pair: result["differences"][i][pair.key]["auroc"]
            for i in result["differences"] for pair in Comparison.of_input(i, p)}
    for comparison, d in rows.items():
        member = comparison.name in fam
        level = fam.level(comparison.name) if member else None  # its share of alpha
        d.update(verdicts.t_test(tested[comparison.text_input][comparison.key], alpha, margin,
                                 level))
        d["role"], d["weight"] = fam.role(comparison.name), level
    members = {cmp.name: d for cmp, d in rows.items() if cmp.name in fam}
    adjusted = fam.adjust({k: d["p"] for k, d in members.items()})
    equivalent = fam.adjust({k: d["p_equivalence"] for k, d in members.items()})
    for comparison, d in rows.items():
        name = comparison.name
        d["p_adjusted"] = adjusted.get(name)
        d["p_equivalence_adjusted"] = equivalent.get(name)
        member = name in fam
        d["verdict"] = verdicts.verdict(adjusted[name] if member else d["p"],
                                        equivalent[name] if member else d["p_equivalence"],
                                        d["mean"], alpha)
        d["design"] = verdicts.design(tested[comparison.text_input][comparison.key],
                                      alpha * d["weight"] if member else alpha, alpha, margin)
    primary = Comparison.parse(c.primary)
    placebo = Comparison.parse(fam.placebo) if fam.placebo else None
    result["question"] = {
        "primary": primary.name, "placebo": fam.placebo, "family": list(fam.weights),
        "weights": fam.weights, "passes": fam.passes,
        "procedure": "graphical (weighted Holm" + (", the placebo right after the primary)"
                                                   if placebo else ")"),
        "equivalence": "the same graph, a family of its own",
        "test": "t on Satterthwaite's degrees of freedom: DeLong's test-study variance"
                + (", clustered by patient," if result["resampled"] == "patients" else "")
                + " + the between-seed variance / S",
        "alpha": alpha, "margin": margin,
        "answer": results.answer_sentences(primary, rows[primary], placebo,
                                           rows.get(placebo), alpha, margin,
                                           result["resampled"])}


# --- figures ------------------------------------------------------------------------------

def draw(result: dict, scored: dict, labels, histories: tuple, path: Path, p: Params) -> None:
    """forest.png, roc.png, reliability.png and training_curves.png in `path`; `histories`:
    training_histories' (per model label and seed, the epochs and the epoch kept)."""
    seeds, inputs = p.train.seeds, p.text.inputs
    spec = p.evaluate.specificity
    probs = {i: {v: model_rows(scored, v, i, seeds)["probs"] for v in params.arms(p)}
             for i in inputs}
    figures.forest(results.forest_rows(result, inputs, seeds), path / "forest.png",
                   margin=p.compare.margin)
    figures.roc_by_input(labels, probs, {i: {v: results.cell(result["models"][i][v]["auroc"],
                                                             "AUROC ") for v in probs[i]}
                                         for i in inputs},
                         path / "roc.png", specificity=spec,
                         at_specificity={i: {v: result["models"][i][v]
                                             ["sensitivity_at_specificity"]["mean"]
                                             for v in probs[i]} for i in inputs})
    figures.reliability(labels, probs, reliability_inputs(result, labels, probs),
                        path / "reliability.png")
    figures.training_curves(*histories, path / "training_curves.png")


def reliability_inputs(result: dict, labels, probs: dict) -> dict:
    """Per input and model: each seed's equal-mass bins, and the table's seed-mean ECE and
    Brier, so that the figure shows what the table reports."""
    out = {}
    for text_input, variants in probs.items():
        out[text_input] = {}
        for v, rows in variants.items():
            per_seed = [calibration(labels, row) for row in rows]
            m = result["models"][text_input][v]
            out[text_input][v] = {"ece": m["ece"]["mean"], "brier": m["brier"]["mean"],
                                  "binning": per_seed[0]["binning"],
                                  "bins": [{**b, "seed": s} for s, c in enumerate(per_seed)
                                           for b in c["bins"]]}
    return out
