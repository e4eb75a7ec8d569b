"""The classical baseline for the report (stage `train_tfidf`): TF-IDF over the words of the
training studies' reports, then a logistic regression. Does the frozen encoder read more than
the words? For a three-word indication a bag of words may match any encoder.

Deterministic (one fit gives one model, whatever the seed), so the arm is trained once a text
input (params.VARIANTS' `trained_once`), and saved as plain JSON, the vocabulary, the IDF weights
and the coefficients, never as a pickle (loading a pickle runs code). `probabilities` scores
new reports from that file alone, and equals scikit-learn's own `predict_proba` of the fitted
pipeline (tests/test_tfidf.py).

`train` fits it on the rows the networks are trained on: the vocabulary and IDF weights on the
training studies' reports, one a study (a term's document frequency counts studies), and the
regression on their images, each a copy of its study's report (a study of k images weighs k
times, as in the networks' loss); each candidate of tune.tfidf is scored on the validation
images as training scores a network's (AUROC, cross-entropy) and chosen by tune.criterion; the
test studies are never read. `scored` gives evaluate each image's probability, its study's.
Unlike the encoder (text.max_length tokens) it reads every word of the report.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfusion import choosing, formats, params
from cxrfusion.common import PipelineError, atomic_path, write_json
from cxrfusion.formats import Run
from cxrfusion.params import Params
from cxrfusion.params import Tfidf as Settings  # c, max_features, ngrams, min_df, lowercase

log = logging.getLogger(__name__)
MODEL = "tfidf.json"  # models/tfidf/<input>/: the fitted model, beside params.json


def _vectorizer(s: Settings, vocabulary: dict | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    # whole numbers: scikit-learn reads a float min_df (1.0) as a share of the reports
    return TfidfVectorizer(lowercase=s.lowercase, ngram_range=(1, int(s.ngrams)),
                           max_features=int(s.max_features), min_df=int(s.min_df),
                           vocabulary=vocabulary, dtype=np.float64)


def fit(reports: list[str], labels, s: Settings = Settings(), weights=None) -> dict:
    """The model fitted on the training studies' reports (one a study) and labels (0/1), each
    study weighing `weights` in the regression (its images; None: 1 each): a plain dict, what
    `save` writes. Refuses reports whose terms all fall under min_df, and a single label
    (nothing to learn)."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=int)
    if len(set(labels.tolist())) < 2:
        raise PipelineError("the TF-IDF model needs training studies of both labels.")
    vectorizer = _vectorizer(s)
    try:
        x = vectorizer.fit_transform(reports)
    except ValueError as err:  # "empty vocabulary"
        raise PipelineError(f"the training reports leave the TF-IDF model no term ({err}): "
                            "lower its min_df, or use a text input with more words.") from None
    regression = LogisticRegression(C=s.c, max_iter=1000).fit(x, labels, sample_weight=weights)
    vocabulary = {term: int(i) for term, i in sorted(vectorizer.vocabulary_.items())}
    return {"settings": asdict(s), "vocabulary": vocabulary,
            "idf": vectorizer.idf_.tolist(), "coef": regression.coef_[0].tolist(),
            "intercept": float(regression.intercept_[0])}


def probabilities(model: dict, reports: list[str]) -> np.ndarray:
    """P(abnormal) of each report, from the saved model alone: the training vocabulary's
    counts, times its IDF weights, each row L2-normalised (scikit-learn's TF-IDF), then the
    logistic regression."""
    s = Settings(**model["settings"])
    vectorizer = _vectorizer(s, model["vocabulary"])
    vectorizer.idf_ = np.asarray(model["idf"], dtype=np.float64)
    x = vectorizer.transform(reports)
    logits = x @ np.asarray(model["coef"], dtype=np.float64) + model["intercept"]
    return 1.0 / (1.0 + np.exp(-logits))


def save(model: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(model, sort_keys=True) + "\n")


def load(path: Path) -> dict:
    try:
        model = json.loads(Path(path).read_text())
        Settings(**model["settings"])
        if not (len(model["idf"]) == len(model["coef"]) == len(model["vocabulary"])):
            raise ValueError("vocabulary, idf and coef differ in length")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"{path}: not a TF-IDF model this code wrote ({err}); train it "
                            "again with `dvc repro`.") from None
    return model


# --- the arm: trained on the pipeline's studies, scored by evaluate -----------------------------

def reports(run: Run, p: Params, names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Per split of `names`: the images every arm is fed (dataset.load_splits' rows: uid,
    filename, view, label, split), each with its study's report in `run`'s text input."""
    from cxrfusion.dataset import load_splits
    from cxrfusion.studies import join_text

    fields = params.fields_of(run.text_input)
    studies, _ = formats.read_prepared(fields)
    text = pd.Series([join_text(row, fields) for _, row in studies.iterrows()],
                     index=studies["uid"].to_numpy())
    splits, _ = load_splits(p, False, None, names)
    return {name: split.rows.assign(report=text[split.rows["uid"]].to_numpy())
            for name, split in splits.items()}


def _one_per_study(rows: pd.DataFrame) -> pd.DataFrame:
    """One row a study, and its images: `images`."""
    return rows.drop_duplicates("uid").assign(
        images=rows.groupby("uid").size().reindex(rows["uid"].drop_duplicates()).to_numpy())


def validation_scores(model: dict, val: pd.DataFrame) -> dict:
    """AUROC and cross-entropy over the validation images, as training scores a network's."""
    from cxrfusion.metrics import auroc

    y = val["label"].to_numpy(np.int64)
    prob = np.clip(probabilities(model, val["report"].tolist()), 1e-12, 1 - 1e-12)
    loss = float(-np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob)))
    return {"val_auroc": auroc(y, prob), "val_loss": loss}


def train(run: Run, p: Params) -> dict:
    """Fit `run` (tfidf on one text input) on the training studies, each candidate of
    tune.tfidf first, chosen on the validation images; write models/<run>/ (tfidf.json,
    params.json) and its choice (metrics/tuning/<arm>/choice.json, as tune writes a network
    arm's)."""
    rows = reports(run, p, ("train", "val"))
    train_studies = _one_per_study(rows["train"])
    settings = params.candidates(p, run.variant)
    fitted, scores = [], []
    for k, setting in enumerate(settings or [{}]):
        s = params.with_setting(p, setting).tfidf
        fitted.append(fit(train_studies["report"].tolist(), train_studies["label"], s,
                          weights=train_studies["images"].to_numpy(np.float64)))
        row = {"candidate": k, "setting": setting, "epoch": None,
               **validation_scores(fitted[-1], rows["val"])}
        scores.append(choosing.scored(row, p.tune.criterion, run.arm) if settings else row)
    choice = choosing.choice(run.arm, None, p.tune.criterion, scores if settings else [])
    k = choice["chosen"] or 0
    p = params.with_setting(p, choice["setting"])
    with atomic_path(run.models) as tmp:
        tmp.mkdir()
        save(fitted[k], tmp / MODEL)
        write_json(tmp / "params.json", formats.record(p, run))
    write_json(run.choice, choice)
    log.info("%s: %d training studies, %d terms; validation images AUROC %.4f, loss %.4f%s",
             run.path, len(train_studies), len(fitted[k]["vocabulary"]),
             scores[k]["val_auroc"], scores[k]["val_loss"],
             f" (candidate {k} of {len(settings)} chosen)" if settings else "")
    return {"model": fitted[k], "choice": choice}


def scored(run: Run, p: Params, names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Per split of `names`: each image's uid, filename, label and probability of abnormal,
    its study's (the model reads the report alone), from models/<run>/tfidf.json."""
    model = load(run.models / MODEL)
    out = {}
    for name, rows in reports(run, p, names).items():
        studies = _one_per_study(rows)
        prob = pd.Series(probabilities(model, studies["report"].tolist()),
                         index=studies["uid"].to_numpy())
        out[name] = rows[["uid", "filename", "label"]].assign(
            probability=prob[rows["uid"]].to_numpy().astype("float64"))
    return out
