"""Stage `evaluate`: score every trained run on the test studies, once, at thresholds chosen
on validation studies.

    python -m stages.evaluate                            # every run of train.seeds x text.inputs
    python -m stages.evaluate fusion 0 findings+impression   # one run (e.g. while developing)

One stage and one process for all runs: scoring takes about a second a run, the imports of
torch and timm about 5 s a process, so a new seed re-scores every run for less than it would
cost to start one process per run (training, which takes minutes, stays one stage a run).

The model scores the validation studies first; `evaluate.threshold` (a probability, or the
rule youden | max_f1 applied to these validation predictions) fixes the operating point. Only
then are the test studies scored, and nothing about them feeds back into the threshold. The
sensitivity at `evaluate.specificity` needs no threshold: it is read off the test ROC.

Writes, per run (e.g. <run> = fusion/findings+impression/seed-0):
  metrics/test/<run>.json         the threshold and how it was chosen, the test metrics at it
                                  (`study`: a study's probability is the mean over its images;
                                  `image`: one prediction per image, as the original), the
                                  sensitivity at the fixed specificity, calibration (Brier, ECE
                                  over equal-mass bins)
  metrics/predictions/<run>.csv   test images: uid, filename, label, probability (and, for
                                  gated fusion, report_weight: the gate's weight of the report)
  metrics/validation/<run>.csv    validation images: uid, filename, label, probability (the
                                  threshold's source: `compare` chooses it again on resamples)
  metrics/curves/{roc,pr,confusion}/<run>.csv   the test studies' curves for `dvc plots`
"""
from __future__ import annotations

import logging
import sys

import pandas as pd
from tqdm import tqdm

from cxrfusion import formats, params, tfidf
from cxrfusion.common import PipelineError, atomic_path, main, resolve_device, write_json
from cxrfusion.dataset import run_splits
from cxrfusion.formats import Run
from cxrfusion.metrics import (
    calibration,
    choose_threshold,
    classification_metrics,
    pr_curve,
    roc_curve,
    sensitivity_at_specificity,
    study_predictions,
)
from cxrfusion.model import WEIGHTS, load_model
from cxrfusion.params import Params
from cxrfusion.saved_model import trained_settings
from cxrfusion.scoring import report_weights, score

log = logging.getLogger("evaluate")


def write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)  # full precision: compare recomputes metrics from it


def image_probabilities(model, split, p: Params) -> pd.DataFrame:
    """Per image: uid, filename, label and the probability of abnormal."""
    probs, _ = score(model, split, p.train.batch_size, p.train.amp)
    return split.rows[["uid", "filename", "label"]].assign(probability=probs.astype("float64"))


def gate_summary(images: pd.DataFrame) -> dict:
    """The weight a gated fusion model gives the report, over the test studies (a study's: the
    mean over its images): overall and by label, so a reader sees whether the report counts
    for more in abnormal studies."""
    studies = images.groupby("uid").agg(label=("label", "first"), w=("report_weight", "mean"))

    def summary(w):
        return {"mean": float(w.mean()), "sd": float(w.std(ddof=0)),
                "min": float(w.min()), "max": float(w.max())}
    return {"studies": summary(studies["w"]),
            **{name: summary(studies.loc[studies["label"] == label, "w"])
               for name, label in (("abnormal", 1), ("normal", 0))
               if (studies["label"] == label).any()}}


def operating_point(val: pd.DataFrame, e: dict) -> dict:
    """The threshold, from the validation studies only."""
    rule = e.threshold
    return {"threshold": choose_threshold(val["label"], val["probability"], rule),
            "threshold_rule": rule if isinstance(rule, str) else "fixed"}


def scored_images(run: Run, p: Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validation and test images' probabilities of `run`'s model, read with the settings
    it was trained with (and, for gated fusion, each test image's report_weight)."""
    trained = trained_settings(run.models, p)
    if params.row(run.variant).trained_once:  # the TF-IDF baseline reads the words
        scored = tfidf.scored(run, trained, ("val", "test"))
        return scored["val"], scored["test"]
    device = resolve_device(p.train.device)
    model, config = load_model(run.models, device)
    splits = run_splits(trained, run, names=("val", "test"),
                        encoder=config.get("image_encoder"))[0]
    val_images = image_probabilities(model, splits["val"].to(device), p)
    test = splits["test"].to(device)
    images = image_probabilities(model, test, p)
    if model.fusion == "gated" and model.uses_image and model.uses_text:
        images["report_weight"] = report_weights(model, test, p.train.batch_size,
                                                 p.train.amp).astype("float64")
    return val_images, images


def evaluate(run: Run, p: Params) -> dict:
    val_images, images = scored_images(run, p)  # the test studies, once
    val = study_predictions(val_images)
    chosen = operating_point(val, p.evaluate)
    studies = study_predictions(images)
    threshold, specificity = chosen["threshold"], p.evaluate.specificity
    result = {
        "run": run.record,
        "threshold": threshold, "threshold_rule": chosen["threshold_rule"],
        "study": {**classification_metrics(studies["label"], studies["probability"], threshold,
                                           f"{run.path} test studies"),
                  **{k: v for k, v in calibration(studies["label"], studies["probability"]).items()
                     if k in ("brier", "ece", "binning")}},
        "image": classification_metrics(images["label"], images["probability"], threshold,
                                        f"{run.path} test images"),
        "sensitivity_at_specificity": {  # threshold-free: read off the test ROC
            "specificity": specificity,
            "sensitivity": sensitivity_at_specificity(studies["label"], studies["probability"],
                                                      specificity)},
        "val_studies": len(val),
    }
    if "report_weight" in images:
        result["report_weight"] = gate_summary(images)

    write_csv(images, run.predictions)
    write_csv(val_images, run.validation)
    fpr, tpr, _ = roc_curve(studies["label"], studies["probability"])
    write_csv(pd.DataFrame({"fpr": fpr, "tpr": tpr}), run.curve("roc"))
    recall, precision, _ = pr_curve(studies["label"], studies["probability"])
    write_csv(pd.DataFrame({"recall": recall, "precision": precision}), run.curve("pr"))
    write_csv(pd.DataFrame({"actual": studies["label"],
                            "predicted": (studies["probability"] >= threshold).astype(int)}),
              run.curve("confusion"))
    write_json(run.test_metrics, result)
    s = result["study"]
    log.info("%s test (%d studies), threshold %.3f (%s, from %d validation studies): auroc %.3f; "
             "at the threshold sensitivity %.3f specificity %.3f f1 %.3f; sensitivity %.3f at "
             "specificity %.2f (test ROC)", run.path, s["n"], threshold, chosen["threshold_rule"],
             len(val), s["auroc"], s["recall"], s["specificity"], s["f1"],
             result["sensitivity_at_specificity"]["sensitivity"], specificity)
    return result


def saved_as(run: Run) -> str:
    """The file a trained run's folder holds: its weights, or the TF-IDF model."""
    return tfidf.MODEL if params.row(run.variant).trained_once else WEIGHTS


def evaluate_all(argv: list[str], p: Params) -> list[dict]:
    runs = [formats.run_of(argv, p)] if argv else formats.runs(p)
    untrained = [str(run.models) for run in runs if not (run.models / saved_as(run)).exists()]
    if untrained:  # before scoring any: a half-scored set of runs compares nothing
        raise PipelineError(f"no trained model in {', '.join(untrained)}: train them with "
                            "`dvc repro` (the train_* stages) first.")
    return [evaluate(run, p) for run in tqdm(runs, desc="evaluate", unit="run", leave=False)]


if __name__ == "__main__":
    main(lambda: evaluate_all(sys.argv[1:], params.load()))
