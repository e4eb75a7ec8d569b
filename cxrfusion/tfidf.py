"""The classical baseline for the report (issue 38, item 4): TF-IDF over the words of the
training studies' reports, then a logistic regression. Does the encoder read more than the
words? For a three-word indication a bag of words may match any encoder.

Deterministic (one fit gives one model, whatever the seed) and saved as plain JSON, the
vocabulary, the IDF weights and the coefficients, never as a pickle (loading a pickle runs
code). `probabilities` scores new reports from that file alone, and equals scikit-learn's own
`predict_proba` of the fitted pipeline (tests/test_tfidf.py).

Not yet an arm of the pipeline: the stage, its tuning entry and its rows in the family follow.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxrfusion.common import PipelineError, atomic_path


@dataclass(frozen=True)
class Settings:
    """How the words are counted and how hard the regression is held back."""
    c: float = 1.0            # inverse regularisation of the logistic regression (L2)
    max_features: int = 20000  # the most frequent terms of the training reports kept
    ngrams: int = 2           # words and word pairs (1: words alone)
    min_df: int = 2           # a term in fewer training reports is dropped
    lowercase: bool = True    # a bag of words reads "Heart" as "heart"


def _vectorizer(s: Settings, vocabulary: dict | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(lowercase=s.lowercase, ngram_range=(1, s.ngrams),
                           max_features=s.max_features, min_df=s.min_df,
                           vocabulary=vocabulary, dtype=np.float64)


def fit(reports: list[str], labels, s: Settings = Settings()) -> dict:
    """The model fitted on the training studies' reports (one a study) and labels (0/1): a
    plain dict, what `save` writes. Refuses reports whose terms all fall under min_df, and a
    single label (nothing to learn)."""
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
    regression = LogisticRegression(C=s.c, max_iter=1000).fit(x, labels)
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
