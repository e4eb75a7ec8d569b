"""The TF-IDF baseline (cxrfusion/tfidf.py): fitted on the training reports alone, saved as plain
JSON, scored from that file to scikit-learn's own probabilities, deterministic."""
from __future__ import annotations

import numpy as np
import pytest

from cxrfusion.common import PipelineError
from cxrfusion.tfidf import Settings, fit, load, probabilities, save

NORMAL = ["No acute cardiopulmonary abnormality.", "Heart size normal. Lungs are clear.",
          "The lungs are clear. No pleural effusion.", "Normal chest.",
          "Normal heart size. Clear lungs."]
ABNORMAL = ["Cardiomegaly with pulmonary edema.", "Right lower lobe pneumonia.",
            "Large left pleural effusion.", "Enlarged heart. Edema.",
            "Pneumonia in the left lung base."]
REPORTS, LABELS = NORMAL + ABNORMAL, [0] * 5 + [1] * 5
SMALL = Settings(min_df=1)


def test_the_saved_model_scores_as_scikit_learn_does(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = fit(REPORTS, LABELS, SMALL)
    save(model, tmp_path / "tfidf.json")
    new = ["Clear lungs, normal heart.", "Edema and cardiomegaly.", "", "words never seen"]
    got = probabilities(load(tmp_path / "tfidf.json"), new)
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), max_features=20000, min_df=1),
                             LogisticRegression(C=1.0, max_iter=1000)).fit(REPORTS, LABELS)
    np.testing.assert_allclose(got, pipeline.predict_proba(new)[:, 1], rtol=0, atol=1e-12)
    assert got[1] > 0.5 > got[0]  # it learned the words
    # an unseen report is the intercept alone
    np.testing.assert_allclose(got[3], 1 / (1 + np.exp(-model["intercept"])), atol=1e-15)


def test_it_is_deterministic_and_reads_only_what_it_is_given():
    first, again = fit(REPORTS, LABELS, SMALL), fit(REPORTS, LABELS, SMALL)
    assert first == again
    assert set(first["vocabulary"]) >= {"cardiomegaly", "clear", "pleural effusion"}
    assert "xxxx" not in first["vocabulary"]
    # min_df: a term in fewer training reports is dropped
    assert "pneumonia" in fit(REPORTS, LABELS, Settings(min_df=2))["vocabulary"]
    assert "cardiomegaly" not in fit(REPORTS, LABELS, Settings(min_df=2))["vocabulary"]


def test_regularisation_shrinks_the_coefficients():
    loose, tight = fit(REPORTS, LABELS, Settings(min_df=1, c=10)), fit(
        REPORTS, LABELS, Settings(min_df=1, c=0.01))
    assert np.abs(tight["coef"]).max() < np.abs(loose["coef"]).max()


def test_bad_training_data_and_bad_files_are_refused(tmp_path):
    with pytest.raises(PipelineError, match="both labels"):
        fit(REPORTS, [1] * 10)
    with pytest.raises(PipelineError, match="no term"):
        fit(["", "", "a b"], [0, 1, 0], Settings(min_df=3))
    (tmp_path / "bad.json").write_text('{"settings": {}, "vocabulary": {"a": 0}, "idf": [], '
                                       '"coef": [1.0], "intercept": 0}')
    with pytest.raises(PipelineError, match=r"bad\.json: not a TF-IDF model this code wrote"):
        load(tmp_path / "bad.json")
