"""Stage `compare`: does the report help the CNN? Fusion vs image-only vs text-only, over
training seeds, for each text input.

Every run was trained on the same studies and scored on the same test studies, so the
differences are paired over studies. The numbers for a variant are means over its seeds
(train.seeds). Their 95 % intervals come from a two-level bootstrap (cxrfusion/statistics.py):
each round resamples the test studies (patients, each with all of their studies, where
studies.csv names patients) and, for each model, its seeds; so an interval covers both which
test studies were drawn and how far training runs vary. DeLong's test adds a p-value for each
paired AUROC difference, per seed and for the seed-averaged predictions.

Writes metrics/comparison.json (what `dvc metrics show/diff` list), metrics/comparison.md (the
results table) and metrics/figures/ (forest plot, ROC curves, reliability, training curves).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfusion import figures, params
from cxrfusion.common import PipelineError, atomic_path, main, write_json
from cxrfusion.formats import STUDIES, Run, read_prepared
from cxrfusion.metrics import calibration, study_predictions
from cxrfusion.statistics import delong, over_seeds

log = logging.getLogger("compare")

PAIRS = (("fusion", "image"), ("fusion", "text"), ("text", "image"))
METRICS = {"auroc": "AUROC", "auprc": "AUPRC", "f1": "F1",
           "sensitivity_at_specificity": "Sensitivity at {specificity:.0%} specificity"}
OUT = Path("metrics/comparison.json")
TABLE = Path("metrics/comparison.md")
FIGURES = Path("metrics/figures")


def patients_of(uids: pd.Series, predictions: Path) -> np.ndarray | None:
    """The patient of each test study (in the order of `uids`) when studies.csv names patients,
    else None (each study is its own unit)."""
    studies = read_prepared()[0].set_index("uid")
    unknown = ~uids.isin(studies.index)
    if unknown.any():
        raise PipelineError(f"{predictions} scores test studies that {STUDIES} does not hold "
                            f"(uids {uids[unknown].tolist()[:10]}): the predictions come from "
                            "another `prepare`; rerun `dvc repro` so that both match.")
    return studies.loc[uids, "patient"].to_numpy() if "patient" in studies.columns else None


def read_run(run: Run) -> tuple[pd.DataFrame, dict]:
    """A run's test studies (uid, label, probability) and what `evaluate` wrote for it."""
    predictions, test_json = run.predictions, run.test_metrics
    for path in (predictions, test_json):
        if not path.exists():
            raise PipelineError(f"{path} not found: run `dvc repro` (evaluate) first.")
    return study_predictions(pd.read_csv(predictions)), json.loads(test_json.read_text())


def trained(path: Path):
    """A JSON file that `train` writes under models/ (history.json, model.json)."""
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro` (train) first.")
    return json.loads(path.read_text())


def spread(sd) -> float | None:
    """A standard deviation over seeds; None (JSON null) with one seed, where it has none: a
    NaN would make comparison.json unreadable to strict JSON readers."""
    return None if sd is None or not np.isfinite(sd) else float(sd)


def pair_name(a: str, b: str) -> str:
    return f"{a}_minus_{b}"


def by_seed(values, seeds) -> dict:
    """Per-seed numbers as named keys (`dvc metrics` list named numbers, not lists)."""
    return {f"seed-{s}": v for s, v in zip(seeds, values)}


def compare(p: dict) -> dict:
    e, seeds, inputs = p["evaluate"], p["train"]["seeds"], p["text"]["inputs"]
    runs = params.runs(p)
    scored = {run: read_run(run) for run in runs}
    first = runs[0]
    uids, labels = scored[first][0]["uid"], scored[first][0]["label"].to_numpy()
    for run, (df, _) in scored.items():
        if not df["uid"].equals(uids):
            raise PipelineError(f"{run.predictions} scores other test studies "
                                f"than {first.predictions}: rerun `dvc repro` so "
                                "that every run uses the same data/prepared split.")
    if len(np.unique(labels)) < 2:
        raise PipelineError(f"every test study in {first.predictions} has label "
                            f"{labels[0]}: AUROC and its intervals need both classes; use a larger "
                            "split.test or more studies.")
    abnormal = int((labels == 1).sum())
    if min(abnormal, len(labels) - abnormal) < 2:  # DeLong's test needs two of each
        raise PipelineError(f"{first.predictions} holds {abnormal} abnormal and "
                            f"{len(labels) - abnormal} normal test studies: DeLong's test needs "
                            "two of each or more; use a larger split.test or more studies.")
    patients = patients_of(uids, first.predictions)
    units = ({"resampled": "studies", "resampled_units": len(uids)} if patients is None else
             {"resampled": "patients", "resampled_units": len(np.unique(patients))})

    def model(variant: str, text_input: str | None) -> dict:
        mine = [scored[Run.of(variant, s, text_input)] for s in seeds]
        return {"probs": np.stack([df["probability"].to_numpy() for df, _ in mine]),
                "operating": np.array([t["threshold"] for _, t in mine]),
                "at_specificity": np.array([t["at_specificity"]["threshold"] for _, t in mine]),
                "evaluations": [t for _, t in mine]}

    result = {"test_studies": len(uids), **units, "seeds": len(seeds),
              "threshold": e["threshold"], "specificity": e["specificity"],
              "bootstrap": {"resamples": e["bootstrap"], "seed": e["seed"]},
              "models": {}, "differences": {}}
    probs, reliability, histories, chosen = {}, {}, {}, {}
    for text_input in inputs:
        models = {v: model(v, text_input) for v in ("fusion", "image", "text")}
        stats = over_seeds(labels, {v: {k: m[k] for k in ("probs", "operating", "at_specificity")}
                                    for v, m in models.items()},
                           list(PAIRS), e["bootstrap"], e["seed"], patients)
        result["models"][text_input] = {}
        for v, m in models.items():
            summary = {metric: {"mean": s["mean"], "sd": spread(s["sd"]), "low": s["low"],
                                "high": s["high"], **by_seed(s["per_seed"], seeds)}
                       for metric, s in stats["models"][v].items()}
            for k in ("brier", "ece"):  # calibration of each run, then over seeds
                values = [t["study"][k] for t in m["evaluations"]]
                summary[k] = {"mean": float(np.mean(values)),
                              "sd": spread(np.std(values, ddof=1) if len(values) > 1 else None),
                              **by_seed(values, seeds)}
            result["models"][text_input][v] = summary
        result["differences"][text_input] = {}
        for a, b in PAIRS:
            s = stats["pairs"][f"{a} - {b}"]
            diff = {metric: {"mean": d["mean"], "low": d["low"], "high": d["high"],
                             "excludes_zero": bool(d["low"] > 0 or d["high"] < 0),
                             **by_seed(d["per_seed"], seeds)} for metric, d in s.items()}
            pa, pb = models[a]["probs"], models[b]["probs"]
            diff["delong_p"] = {"seed_averaged": delong(labels, pa.mean(0), pb.mean(0))["p"],
                                **by_seed([delong(labels, x, y)["p"] for x, y in zip(pa, pb)], seeds)}
            result["differences"][text_input][pair_name(a, b)] = diff
        probs[text_input] = {v: m["probs"] for v, m in models.items()}
        reliability[text_input] = {
            v: calibration(np.tile(labels, len(seeds)), m["probs"].ravel())  # pooled over seeds
            for v, m in models.items()}
        for v in ("fusion", "text") + (("image",) if text_input == inputs[0] else ()):
            label = Run.of(v, seeds[0], text_input).label
            histories[label] = {s: trained(Run.of(v, s, text_input).models / "history.json")
                                for s in seeds}
            chosen[label] = {s: trained(Run.of(v, s, text_input).models / "model.json")["epoch"]
                             for s in seeds}

    with atomic_path(FIGURES) as tmp:
        tmp.mkdir()
        figures.forest(forest_rows(result, inputs, seeds), tmp / "forest.png")
        figures.roc_by_input(labels, probs, {i: {v: cell(result["models"][i][v]["auroc"], "AUROC ")
                                                 for v in probs[i]} for i in inputs},
                             tmp / "roc.png")
        figures.reliability(labels, probs, reliability, tmp / "reliability.png")
        figures.training_curves(histories, chosen, tmp / "training_curves.png")
    with atomic_path(TABLE) as tmp:
        tmp.write_text(table(result, inputs, p))
    write_json(OUT, result)
    for text_input in inputs:
        for name, diff in result["differences"][text_input].items():
            log.info("%s, %s: AUROC %+.3f [%+.3f, %+.3f], F1 %+.3f [%+.3f, %+.3f], DeLong p %.3g",
                     text_input, name.replace("_minus_", " - "), diff["auroc"]["mean"],
                     diff["auroc"]["low"], diff["auroc"]["high"], diff["f1"]["mean"],
                     diff["f1"]["low"], diff["f1"]["high"], diff["delong_p"]["seed_averaged"])
    log.info("wrote %s, %s and %s/", TABLE, OUT, FIGURES)
    return result


def forest_rows(result: dict, inputs: list[str], seeds: list[int]) -> dict:
    """The differences as the forest plot reads them: per input, pair and metric."""
    rows = {}
    for text_input in inputs:
        rows[text_input] = {}
        for a, b in PAIRS:
            d = result["differences"][text_input][pair_name(a, b)]
            rows[text_input][f"{a} - {b}"] = {
                m: {**d[m], "per_seed": [d[m][f"seed-{s}"] for s in seeds]} for m in METRICS}
    return rows


def cell(s: dict, prefix: str = "", signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    sd = f" ± {s['sd']:.3f}" if s.get("sd") is not None else ""
    return (f"{prefix}{f.format(s['mean'])}{sd} [{f.format(s['low'])}, {f.format(s['high'])}]")


def table(result: dict, inputs: list[str], p: dict) -> str:
    """The results as a paper prints them, in markdown: README.md shows this file."""
    e = p["evaluate"]
    names = {k: v.format(specificity=e["specificity"]) for k, v in METRICS.items()}
    rule = e["threshold"] if isinstance(e["threshold"], str) else f"fixed at {e['threshold']}"
    lines = [
        f"Test studies: {result['test_studies']}; seeds per model: {result['seeds']} "
        f"({', '.join(map(str, p['train']['seeds']))}). Each cell: mean ± standard deviation "
        "over seeds [95 % interval: bootstrap over test "
        f"{result['resampled']} and seeds, {e['bootstrap']} resamples]. F1 at the threshold "
        f"chosen on validation ({rule}); sensitivity at the threshold reaching "
        f"{e['specificity']:.0%} specificity on validation. Brier and ECE: mean ± sd over seeds.",
        "",
        "| text input | model | " + " | ".join(names.values()) + " | Brier | ECE |",
        "| --- | --- |" + " --- |" * (len(names) + 2),
    ]
    for i, text_input in enumerate(inputs):
        for v in (("image",) if i == 0 else ()) + ("text", "fusion"):
            m = result["models"][text_input][v]
            row = ["— (reads no report)" if v == "image" else text_input,
                   "image only" if v == "image" else "text only" if v == "text" else "fusion"]
            row += [cell(m[k]) for k in METRICS]
            row += [f"{m[k]['mean']:.3f}" + (f" ± {m[k]['sd']:.3f}" if m[k]["sd"] is not None
                                             else "") for k in ("brier", "ece")]  # as cell()
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Paired differences (mean over seeds [95 % interval]); DeLong p: paired AUROC "
              "difference of the seed-averaged predictions (per seed in metrics/comparison.json).",
              "", "| text input | difference | " + " | ".join(names.values()) + " | DeLong p |",
              "| --- | --- |" + " --- |" * (len(names) + 1)]
    for text_input in inputs:
        for name, d in result["differences"][text_input].items():
            row = [text_input, name.replace("_minus_", " − ")]
            row += [cell(d[k], signed=True) for k in METRICS]
            row.append(f"{d['delong_p']['seed_averaged']:.3g}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(lambda: compare(params.load()))
