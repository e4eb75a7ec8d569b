"""Stage `evaluate`: score one trained variant on the test studies, once.

    python -m stages.evaluate fusion

Writes metrics/<variant>/predictions.csv (uid, filename, label, probability: one row per
image), test.json (keys `image`: one prediction per image, as the original; `study`: a study's
probability is the mean over its images) and roc.csv, pr.csv, confusion.csv for `dvc plots`.
"""
from __future__ import annotations

import logging
import sys

import pandas as pd
from sklearn import metrics as skm

from cxrfusion import params
from cxrfusion.common import atomic_path, main, resolve_device, write_json
from cxrfusion.dataset import load_splits
from cxrfusion.formats import metrics_dir, model_dir
from cxrfusion.metrics import classification_metrics, study_predictions
from cxrfusion.model import load_model, reads
from cxrfusion.scoring import predict, trained_settings

log = logging.getLogger("evaluate")


def write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)  # full precision: compare recomputes metrics from it


def evaluate(variant: str, p: dict) -> dict:
    device = resolve_device(p["train"]["device"])
    model, _ = load_model(model_dir(variant), device)
    trained = trained_settings(model_dir(variant), p)
    test = load_splits(trained, *reads(variant), names=("test",))[0]["test"].to(device)
    probs, _ = predict(model, test, p["train"]["batch_size"], p["train"]["amp"])
    images = test.rows[["uid", "filename", "label"]].assign(probability=probs.astype("float64"))
    studies = study_predictions(images)
    threshold = p["evaluate"]["threshold"]
    result = {"image": classification_metrics(images["label"], images["probability"], threshold,
                                              f"{variant} test images"),
              "study": classification_metrics(studies["label"], studies["probability"], threshold,
                                              f"{variant} test studies"),
              "threshold": threshold}

    out = metrics_dir(variant)
    write_csv(images, out / "predictions.csv")
    fpr, tpr, _ = skm.roc_curve(studies["label"], studies["probability"])
    write_csv(pd.DataFrame({"fpr": fpr, "tpr": tpr}), out / "roc.csv")
    precision, recall, _ = skm.precision_recall_curve(studies["label"], studies["probability"])
    write_csv(pd.DataFrame({"recall": recall, "precision": precision}), out / "pr.csv")
    write_csv(pd.DataFrame({"actual": studies["label"],
                            "predicted": (studies["probability"] >= threshold).astype(int)}),
              out / "confusion.csv")
    write_json(out / "test.json", result)
    s = result["study"]
    log.info("%s test (%d studies): auroc %.3f f1 %.3f accuracy %.3f", variant, s["n"],
             s["auroc"], s["f1"], s["accuracy"])
    return result


if __name__ == "__main__":
    main(lambda: evaluate(params.check_variant(sys.argv[1] if len(sys.argv) > 1 else ""), params.load()))
