"""Stage `compare`: does the report help the CNN? Fusion vs image-only vs text-only, over
training seeds, for each text input, answering the question params.yaml declares (`compare`).

Every run was trained on the same studies and scored on the same test studies, so the
differences are paired over studies. A model's number is the mean over its seeds
(train.seeds). Intervals come from one two-level bootstrap (cxrfusion/statistics.py,
over_seeds): each round redraws the test studies (patients, with all their studies, where
studies.csv names patients), each model's seeds and the validation studies on which every
run's threshold is chosen again. The AUROC differences are the inferential rows: each gets a
p-value that inverts its interval, Holm-adjusted over the declared family, and a verdict
(cxrfusion/inference.py); the other measures are descriptive. DeLong's test, per seed and for
the seed-averaged ensemble, is kept in comparison.json.

Writes metrics/comparison.json (everything), metrics/summary.json (the headline `dvc exp show`
and `dvc metrics diff` list: each model's AUROC, each AUROC difference and its verdict),
metrics/comparison.md (the results, as README.md shows them; cxrfusion/results.py) and
metrics/figures/ (forest plot, ROC curves, reliability, training curves).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfusion import figures, inference, params, results
from cxrfusion.common import PipelineError, atomic_path, main, write_json
from cxrfusion.formats import STUDIES, Run, read_prepared
from cxrfusion.params import PAIRS, Comparison
from cxrfusion.metrics import (calibrated_ece, calibration, choose_threshold, ece_bins,
                               study_predictions)
from cxrfusion.statistics import delong, over_seeds

log = logging.getLogger("compare")

OUT = Path("metrics/comparison.json")
SUMMARY = Path("metrics/summary.json")  # the headline: the one file dvc.yaml declares a metric
TABLE = Path("metrics/comparison.md")
FIGURES = Path("metrics/figures")


# --- 1. load every run ----------------------------------------------------------------------

def read_run(run: Run) -> dict:
    """A run's test and validation studies (uid, label, probability), what `evaluate` wrote
    for it, and the rule that chose its threshold."""
    for path in (run.predictions, run.validation, run.test_metrics):
        if not path.exists():
            raise PipelineError(f"{path} not found: run `dvc repro` (evaluate) first.")
    evaluation = json.loads(run.test_metrics.read_text())
    rule = evaluation["threshold_rule"]
    return {"test": study_predictions(pd.read_csv(run.predictions)),
            "val": study_predictions(pd.read_csv(run.validation)), "evaluation": evaluation,
            "rule": evaluation["threshold"] if rule == "fixed" else rule}


def same_thresholds(scored: dict) -> None:
    """Each run's threshold, chosen again from its validation predictions, is evaluate's: the
    bootstrap re-chooses it by the same rule."""
    for run, r in scored.items():
        if choose_threshold(r["val"]["label"], r["val"]["probability"],
                            r["rule"]) != r["evaluation"]["threshold"]:
            raise PipelineError(f"{run.validation} does not give the threshold of "
                                f"{run.test_metrics}: both must come from one `evaluate`; "
                                "rerun `dvc repro`.")


def same_studies(scored: dict, split: str) -> pd.DataFrame:
    """The studies (uid, label) every run scored on `split`, checked to be one set."""
    first = next(iter(scored))
    studies = scored[first][split][["uid", "label"]]
    for run, s in scored.items():
        if not s[split]["uid"].equals(studies["uid"]):
            raise PipelineError(f"{run.path} scores other {split} studies than {first.path}: "
                                "rerun `dvc repro` so that every run uses the same split.")
    labels = studies["label"].to_numpy()
    abnormal = int((labels == 1).sum())
    if min(abnormal, len(labels) - abnormal) < 2:  # AUROC, DeLong and thresholds need both
        raise PipelineError(f"the {split} studies hold {abnormal} abnormal and "
                            f"{len(labels) - abnormal} normal: the comparison needs two of each "
                            f"or more; use a larger split.{split} or more studies.")
    return studies


def patients_of(uids: pd.Series) -> np.ndarray | None:
    """The patient of each study (in the order of `uids`) when studies.csv names patients,
    else None (each study is its own unit)."""
    studies = read_prepared()[0].set_index("uid")
    unknown = ~uids.isin(studies.index)
    if unknown.any():
        raise PipelineError(f"the predictions score studies that {STUDIES} does not hold "
                            f"(uids {uids[unknown].tolist()[:10]}): they come from another "
                            "`prepare`; rerun `dvc repro` so that both match.")
    return studies.loc[uids, "patient"].to_numpy() if "patient" in studies.columns else None


def trained(path: Path):
    """A JSON file that `train` writes under models/ (history.json, model.json)."""
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro` (train) first.")
    return json.loads(path.read_text())


# --- 2. compare, per text input -----------------------------------------------------------------

def spread(sd) -> float | None:
    """A standard deviation over seeds; None (JSON null) with one seed, where it has none: a
    NaN would make comparison.json unreadable to strict JSON readers."""
    return None if sd is None or not np.isfinite(sd) else float(sd)


def by_seed(values, seeds) -> dict:
    """Per-seed numbers as named keys (`dvc metrics` list named numbers, not lists)."""
    return {f"seed-{s}": v for s, v in zip(seeds, values)}


def model_rows(scored: dict, variant: str, text_input: str, seeds) -> dict:
    """over_seeds' input for one model: its seed rows of test and validation probabilities."""
    mine = [scored[Run.of(variant, s, text_input)] for s in seeds]
    return {"probs": np.stack([r["test"]["probability"].to_numpy() for r in mine]),
            "val_probs": np.stack([r["val"]["probability"].to_numpy() for r in mine]),
            "thresholds": np.array([r["evaluation"]["threshold"] for r in mine]),
            "rule": mine[0]["rule"]}


def delong_rows(labels, a: np.ndarray, b: np.ndarray, seeds) -> dict:
    """DeLong's test where it is valid: per seed, and for the ensemble of each model's
    seed-averaged predictions (its own AUROCs and difference, not the seed-mean's)."""
    ensemble = delong(labels, a.mean(0), b.mean(0))
    return {"ensemble": {k: ensemble[k] for k in ("auroc_a", "auroc_b", "difference", "p")},
            **by_seed([{k: d[k] for k in ("difference", "p")}
                       for d in (delong(labels, x, y) for x, y in zip(a, b))], seeds)}


def compare_input(scored: dict, text_input: str, labels, validation: dict | None, groups,
                  p: dict) -> tuple[dict, dict, dict]:
    """One text input's models and paired differences, and the bootstrap rounds of each
    pair's AUROC difference (all, and with every seed kept)."""
    c, seeds = p["compare"], p["train"]["seeds"]
    models = {v: model_rows(scored, v, text_input, seeds) for v in ("fusion", "image", "text")}
    stats = over_seeds(labels, models, list(PAIRS), c["bootstrap"], c["seed"], groups,
                       specificity=p["evaluate"]["specificity"], validation=validation,
                       level=1 - c["alpha"])
    summary = {v: {metric: {"mean": s["mean"], "sd": spread(s["sd"]), "low": s["low"],
                            "high": s["high"], **by_seed(s["per_seed"], seeds)}
                   for metric, s in stats["models"][v].items()} for v in models}
    for v, m in models.items():  # what noise alone gives a calibrated model with these scores
        floors = [calibrated_ece(row, seed=c["seed"]) for row in m["probs"]]
        summary[v]["ece_floor"] = {"mean": float(np.mean(floors)), **by_seed(floors, seeds)}
    differences, rounds = {}, {}
    for a, b in PAIRS:
        s = stats["pairs"][f"{a} - {b}"]
        key = Comparison(a, b, text_input).key
        differences[key] = {metric: {"mean": d["mean"], "low": d["low"], "high": d["high"],
                                     **by_seed(d["per_seed"], seeds)} for metric, d in s.items()}
        differences[key]["delong"] = delong_rows(labels, models[a]["probs"],
                                                 models[b]["probs"], seeds)
        rounds[key] = (stats["rounds"][f"{a} - {b}"]["auroc"],
                       stats["study_rounds"][f"{a} - {b}"]["auroc"], s["auroc"]["per_seed"])
    return summary, differences, rounds


# --- 3. the declared question -------------------------------------------------------------------

def answer(result: dict, rounds: dict, p: dict) -> None:
    """Each AUROC difference's test, family-adjusted p, verdict and design, in `result`."""
    c = p["compare"]
    alpha, margin = c["alpha"], c["margin"]
    roles = params.family(c["primary"], c["secondary"])
    rows = {Comparison(a, b, i): result["differences"][i][f"{a}_minus_{b}"]["auroc"]
            for i in result["differences"] for a, b in PAIRS}
    for comparison, d in rows.items():
        d.update(inference.unadjusted(rounds[comparison.text_input][comparison.key][0], alpha,
                                      margin))
        d["role"] = roles.get(comparison.name, "exploratory")
    adjusted = inference.holm({cmp.name: d["p"] for cmp, d in rows.items() if cmp.name in roles})
    for comparison, d in rows.items():
        _, study_rounds, per_seed = rounds[comparison.text_input][comparison.key]
        member = comparison.name in roles
        d["p_adjusted"] = adjusted.get(comparison.name)
        d["verdict"] = inference.verdict(d["p_adjusted"] if member else d["p"],
                                         d["p_equivalence"], d["low"], d["high"], alpha)
        d["design"] = inference.design(study_rounds, per_seed, result["resampled_units"],
                                       alpha / len(roles) if member else alpha, alpha, margin)
    primary = Comparison.parse(c["primary"])
    result["question"] = {
        "primary": primary.name, "family": list(roles), "adjustment": "holm", "alpha": alpha,
        "margin": margin,
        "answer": results.sentence(primary, rows[primary], alpha, margin, result["resampled"])}


# --- 4. figures ------------------------------------------------------------------------------

def draw(result: dict, scored: dict, labels, p: dict, path: Path) -> None:
    seeds, inputs = p["train"]["seeds"], p["text"]["inputs"]
    spec = p["evaluate"]["specificity"]
    probs = {i: {v: model_rows(scored, v, i, seeds)["probs"] for v in ("fusion", "image", "text")}
             for i in inputs}
    figures.forest(results.forest_rows(result, inputs, seeds), path / "forest.png",
                   margin=p["compare"]["margin"])
    figures.roc_by_input(labels, probs, {i: {v: results.cell(result["models"][i][v]["auroc"],
                                                             "AUROC ") for v in probs[i]}
                                         for i in inputs},
                         path / "roc.png", specificity=spec,
                         at_specificity={i: {v: result["models"][i][v]
                                             ["sensitivity_at_specificity"]["mean"]
                                             for v in probs[i]} for i in inputs})
    figures.reliability(labels, probs, reliability_inputs(result, labels, probs),
                        path / "reliability.png")
    histories, chosen = {}, {}
    for text_input in inputs:
        for v in ("fusion", "text") + (("image",) if text_input == inputs[0] else ()):
            label = Run.of(v, seeds[0], text_input).label
            histories[label] = {s: trained(Run.of(v, s, text_input).models / "history.json")
                                for s in seeds}
            chosen[label] = {s: trained(Run.of(v, s, text_input).models / "model.json")["epoch"]
                             for s in seeds}
    figures.training_curves(histories, chosen, path / "training_curves.png")


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


# --- the stage -----------------------------------------------------------------------------------

def compare(p: dict) -> dict:
    c, seeds, inputs = p["compare"], p["train"]["seeds"], p["text"]["inputs"]
    scored = {run: read_run(run) for run in params.runs(p)}
    test, val = same_studies(scored, "test"), same_studies(scored, "val")
    same_thresholds(scored)
    labels = test["label"].to_numpy()
    patients = patients_of(test["uid"])
    validation = ({"labels": val["label"].to_numpy(), "groups": patients_of(val["uid"])}
                  if c["resample_validation"] else None)
    result = {"test_studies": len(labels), "validation_studies": len(val),
              **({"resampled": "studies", "resampled_units": len(labels)} if patients is None
                 else {"resampled": "patients", "resampled_units": len(np.unique(patients))}),
              "seeds": len(seeds), "threshold": p["evaluate"]["threshold"],
              "specificity": p["evaluate"]["specificity"],
              "bootstrap": {"resamples": c["bootstrap"], "seed": c["seed"],
                            "validation_resampled": c["resample_validation"],
                            "level": 1 - c["alpha"]},
              "ece_bins": ece_bins(len(labels)),  # equal-mass
              "models": {}, "differences": {}}
    rounds = {}
    for text_input in inputs:
        result["models"][text_input], result["differences"][text_input], rounds[text_input] = (
            compare_input(scored, text_input, labels, validation, patients, p))
    answer(result, rounds, p)

    with atomic_path(FIGURES) as tmp:
        tmp.mkdir()
        draw(result, scored, labels, p, tmp)
    with atomic_path(TABLE) as tmp:
        tmp.write_text(results.table(result, p))
    write_json(OUT, result)
    write_json(SUMMARY, results.summary(result))
    log.info("%s", result["question"]["answer"])
    log.info("wrote %s, %s and %s/", TABLE, OUT, FIGURES)
    return result


if __name__ == "__main__":
    main(lambda: compare(params.load()))
