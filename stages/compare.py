"""Stage `compare`: does the report help the CNN? Fusion vs image-only vs text-only, over
training seeds, for each text input, answering the question params.yaml declares (`compare`).

Every run was trained on the same studies and scored on the same test studies, so the
differences are paired over studies. A model's number is the mean over its seeds
(train.seeds). Intervals come from one two-level bootstrap (cxrfusion/statistics.py,
over_seeds): each round redraws the test studies (patients, with all their studies, where
studies.csv names patients), each model's seeds and the validation studies on which every
run's threshold is chosen again. The AUROC differences are the inferential rows: each gets a
p-value that inverts its interval, Holm-adjusted over the declared family, and a verdict
(cxrfusion/verdicts.py); the other measures are descriptive. DeLong's test, per seed and for
the seed-averaged ensemble, is kept in comparison.json. The stage loads and checks the runs;
the comparison itself is cxrfusion/comparison.py.

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

from cxrfusion import comparison, formats, params, results
from cxrfusion.common import PipelineError, atomic_path, main, write_json
from cxrfusion.formats import STUDIES, Run, read_prepared
from cxrfusion.metrics import choose_threshold, study_predictions
from cxrfusion.params import Params

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


def training_record(path: Path):
    """A JSON file that `train` writes under models/ (history.json, model.json)."""
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro` (train) first.")
    return json.loads(path.read_text())


# --- the stage -----------------------------------------------------------------------------------

def training_histories(p: Params) -> tuple[dict, dict]:
    """Per model label and seed: the epochs train recorded (history.json) and the one it kept
    (model.json); the image model once, with the first text input; no arm trained once (it
    has no epochs)."""
    seeds, inputs = p.train.seeds, p.text.inputs
    networks = params.arms(p, params.NETWORKS)  # each on its encoders
    reading = [v for v in networks if params.row(v).reads_report]
    blind = [v for v in networks if v not in reading]  # once, with the first input
    histories, chosen = {}, {}
    for text_input in inputs:
        for v in reading + (blind if text_input == inputs[0] else []):
            label = Run.of(v, seeds[0], text_input).label
            folders = {s: Run.of(v, s, text_input).models for s in seeds}
            histories[label] = {s: training_record(f / "history.json")
                                for s, f in folders.items()}
            chosen[label] = {s: training_record(f / "model.json")["epoch"]
                             for s, f in folders.items()}
    return histories, chosen


# --- the stage: load, answer, draw, write -----------------------------------------------------

def compare(p: Params) -> dict:
    scored = {run: read_run(run) for run in formats.runs(p)}
    test, val = same_studies(scored, "test"), same_studies(scored, "val")
    same_thresholds(scored)
    labels, patients = test["label"].to_numpy(), patients_of(test["uid"])
    validation = ({"labels": val["label"].to_numpy(), "groups": patients_of(val["uid"])}
                  if p.compare.resample_validation else None)
    result = comparison.answer_question(scored, labels, len(val), validation, patients, p)
    with atomic_path(FIGURES) as tmp:
        tmp.mkdir()
        comparison.draw(result, scored, labels, training_histories(p), tmp, p)
    with atomic_path(TABLE) as tmp:
        tmp.write_text(results.table(result, p))
    write_json(OUT, result)
    write_json(SUMMARY, results.summary(result))
    log.info("%s", result["question"]["answer"])
    log.info("wrote %s, %s and %s/", TABLE, OUT, FIGURES)
    return result


if __name__ == "__main__":
    main(lambda: compare(params.load()))
