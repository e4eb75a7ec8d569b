"""Stage `compare`: does the report help the CNN? Fusion vs image-only vs text-only.

All three were trained on the same studies and are scored on the same test studies, so the
differences are paired: the bootstrap resamples test studies and scores both models on each
resample. Each model's own interval uses the same resamples. Where studies.csv names patients
(mimic_cxr, split by patient) it resamples patients, each with all of their test studies: one
patient's studies are not independent. Writes metrics/comparison.json and the figures under
metrics/figures/.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfusion import figures, params
from cxrfusion.common import PipelineError, atomic_path, main, write_json
from cxrfusion.formats import STUDIES, metrics_dir, model_dir, read_prepared
from cxrfusion.metrics import (bootstrap_interval, classification_metrics, paired_bootstrap,
                            study_predictions)
from cxrfusion.params import VARIANTS

log = logging.getLogger("compare")

PAIRS = (("fusion", "image"), ("fusion", "text"))
OUT = Path("metrics/comparison.json")
FIGURES = Path("metrics/figures")


def bounds(interval: dict) -> dict:
    """[low, high] as named keys: `dvc metrics show/diff` list named numbers, not lists."""
    low, high = interval["ci95"]
    return {"low": low, "high": high}


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


def compare(p: dict) -> dict:
    e = p["evaluate"]
    studies = {v: study_predictions(pd.read_csv(metrics_dir(v) / "predictions.csv"))
               for v in VARIANTS}
    uids = studies["fusion"]["uid"]
    if not all(df["uid"].equals(uids) for df in studies.values()):
        raise PipelineError("the variants' predictions cover different test studies: rerun "
                            "`dvc repro` so that all three use the same data/prepared split.")
    labels = studies["fusion"]["label"]
    if labels.nunique() < 2:
        raise PipelineError(f"every test study in {metrics_dir('fusion') / 'predictions.csv'} has "
                            f"label {labels.iloc[0]}: AUROC and its intervals need both classes; "
                            "use a larger split.test or more studies.")
    patients = patients_of(uids, metrics_dir("fusion") / "predictions.csv")
    if patients is None:
        resampled = {"resampled": "studies", "resampled_units": len(uids)}
    else:
        resampled = {"resampled": "patients", "resampled_units": len(np.unique(patients))}
        log.info("the intervals resample the %d test patients, each with all of their studies "
                 "(%d in all), not single studies", resampled["resampled_units"], len(uids))
    result = {"test_studies": len(uids), **resampled, "variants": {}, "differences": {}}
    for v, df in studies.items():
        m = classification_metrics(df["label"], df["probability"], e["threshold"])
        # each model's own 95 % interval, on the same resampled studies as the differences
        m["ci95"] = {metric: bounds(bootstrap_interval(labels, df["probability"], metric,
                                                       e["bootstrap"], e["seed"], e["threshold"],
                                                       patients))
                     for metric in ("auroc", "f1")}
        result["variants"][v] = m
    for a, b in PAIRS:
        diff = result["differences"][f"{a}_minus_{b}"] = {}
        for metric in ("auroc", "f1"):
            d = paired_bootstrap(labels, studies[a]["probability"], studies[b]["probability"],
                                 metric, e["bootstrap"], e["seed"], e["threshold"], patients)
            diff[metric] = {**d, "ci95": bounds(d)}

    histories = {v: json.loads((model_dir(v) / "history.json").read_text()) for v in VARIANTS}
    chosen = {v: json.loads((model_dir(v) / "model.json").read_text())["epoch"] for v in VARIANTS}
    table = [["model", "AUROC [95 % CI]", "F1 [95 % CI]", "accuracy", "precision", "recall",
              "epoch kept"]]
    for v in VARIANTS:
        m = result["variants"][v]
        table.append([v] + [f"{m[k]:.3f} [{m['ci95'][k]['low']:.3f}, {m['ci95'][k]['high']:.3f}]"
                            for k in ("auroc", "f1")]
                     + [f"{m[k]:.3f}" for k in ("accuracy", "precision", "recall")] + [str(chosen[v])])
    for name, diff in result["differences"].items():
        row = [name.replace("_minus_", " - ")]
        for k in ("auroc", "f1"):
            d = diff[k]
            row.append(f"{d['difference']:+.3f} [{d['ci95']['low']:+.3f}, {d['ci95']['high']:+.3f}]")
        table.append(row + [""] * 4)

    with atomic_path(FIGURES) as tmp:
        tmp.mkdir()
        for v in VARIANTS:
            figures.training_curves(v, histories[v], chosen[v], tmp / f"training_{v}.png")
        figures.comparison(histories, table, tmp / "model_comparison.png")
        figures.roc(studies, {v: result["variants"][v]["ci95"]["auroc"] for v in VARIANTS},
                    tmp / "roc.png")
        figures.intervals(result, tmp / "intervals.png")
        figures.confusion_matrices({v: result["variants"][v]["confusion"] for v in VARIANTS},
                                   tmp / "confusion.png")
    write_json(OUT, result)
    for v, m in result["variants"].items():
        log.info("%s: AUROC %.3f [%.3f, %.3f], F1 %.3f [%.3f, %.3f]", v, m["auroc"],
                 *m["ci95"]["auroc"].values(), m["f1"], *m["ci95"]["f1"].values())
    for name, diff in result["differences"].items():
        log.info("%s: AUROC %+.3f [%+.3f, %+.3f], F1 %+.3f [%+.3f, %+.3f]", name,
                 diff["auroc"]["difference"], *diff["auroc"]["ci95"].values(),
                 diff["f1"]["difference"], *diff["f1"]["ci95"].values())
    return result


if __name__ == "__main__":
    main(lambda: compare(params.load()))
