"""The TF-IDF baseline (cxrfusion/tfidf.py): fitted on the training reports alone, saved as plain
JSON, scored from that file to scikit-learn's own probabilities, deterministic."""
from __future__ import annotations

import re

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


# --- the arm: one run a text input, fitted on the training studies, chosen on validation ------

def test_one_run_against_several_seeds_is_each_seeds_partner():
    """A model trained once (one row) against a model of S seeds: the same as its row
    repeated S times, so only the other model's seeds vary (the seed part is theirs alone),
    in the tested row and in the bootstrap."""
    from cxrfusion.statistics import over_seeds, seed_mean_difference

    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.5).astype(int)
    y[:2] = (0, 1)
    seeds = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.2, (3, 60)))))
    once = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, (1, 60)))))
    alone, repeated = (seed_mean_difference(y, seeds, b) for b in (once, np.repeat(once, 3, 0)))
    assert alone == repeated
    assert alone["seeds"] == 3 and alone["sd_seeds"] == pytest.approx(
        np.std([seed_mean_difference(y, row, once)["mean"] for row in seeds], ddof=1))
    models = {"text": {"probs": seeds, "thresholds": np.full(3, 0.5)},
              "tfidf": {"probs": once, "thresholds": np.full(1, 0.5)}}
    stats = over_seeds(y, models, [("text", "tfidf")], 200, 0)
    assert len(stats["models"]["tfidf"]["auroc"]["per_seed"]) == 1
    assert np.isnan(stats["models"]["tfidf"]["auroc"]["sd"])  # no spread: compare writes null
    pair = stats["pairs"]["text - tfidf"]["auroc"]
    assert pair["per_seed"] == pytest.approx(
        [v - stats["models"]["tfidf"]["auroc"]["mean"]
         for v in stats["models"]["text"]["auroc"]["per_seed"]], abs=1e-15)


def test_the_arm_is_fitted_on_the_training_studies_and_chosen_on_validation(cached, params):
    """stage train_tfidf: each candidate fitted on the training studies' reports alone (no term
    of a validation or test report that no training report has), scored on the validation
    images as a hand computation scores them, the best kept; evaluate then gives every image
    of a study its report's probability, and predict serves the saved model the same way."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from cxrfusion import formats, tfidf
    from cxrfusion.formats import Run
    from cxrfusion.predict import cli
    from cxrfusion.studies import join_text
    from stages.evaluate import evaluate

    params.tune.candidates = [{"train.lr": 0.003}, {"train.lr": 0.001}]  # the networks'
    params.tune.tfidf = [{"tfidf.c": 0.01, "tfidf.min_df": 1},
                         {"tfidf.c": 100.0, "tfidf.min_df": 1}]
    run = Run.of("tfidf", params.train.seeds[1], "findings+impression")
    assert run.path == "tfidf/findings+impression"  # one run, whatever the seed
    studies, images = formats.read_prepared(["findings", "impression"])
    unseen = studies["split"] != "train"  # a word only validation and test reports hold
    studies.loc[unseen, "findings"] = studies.loc[unseen, "findings"] + " Zebrastripes."
    studies.to_csv(formats.STUDIES, index=False)
    tfidf.train(run, params)

    fields = ["findings", "impression"]
    text = {u: join_text(r, fields) for u, r in studies.set_index("uid").iterrows()}
    train = studies.loc[studies["split"] == "train", "uid"]
    val = images.loc[images["split"] == "val"]
    choice = json_of(run.choice)
    assert choice["seed"] is None and [c["setting"] for c in choice["candidates"]] == (
        params.tune.tfidf)
    # by hand, with scikit-learn: the terms and IDF of the training studies (one a study),
    # the regression on their images (one row an image), the validation images scored
    train_images = images.loc[images["split"] == "train"]
    terms = TfidfVectorizer(ngram_range=(1, 2), max_features=20000, min_df=1).fit(
        [text[u] for u in train])
    hand = {}
    for row in choice["candidates"]:
        regression = LogisticRegression(C=row["setting"]["tfidf.c"], max_iter=1000).fit(
            terms.transform([text[u] for u in train_images["uid"]]), train_images["label"])
        hand[row["candidate"]] = regression.predict_proba(
            terms.transform([text[u] for u in val["uid"]]))[:, 1]
        assert row["val_auroc"] == pytest.approx(roc_auc_score(val["label"], hand[
            row["candidate"]]), abs=1e-9)
        assert row["epoch"] is None
    best = max(range(2), key=lambda k: choice["candidates"][k]["val_auroc"])
    assert choice["chosen"] == best and choice["setting"] == params.tune.tfidf[best]

    model = tfidf.load(run.models / tfidf.MODEL)
    assert model["settings"]["c"] == params.tune.tfidf[best]["tfidf.c"]
    np.testing.assert_allclose(tfidf.probabilities(model, [text[u] for u in val["uid"]]),
                               hand[best], rtol=0, atol=1e-5)
    words = {w for u in train for w in re.findall(r"(?u)\b\w\w+\b", text[u].lower())}
    assert all(set(term.split()) <= words for term in model["vocabulary"])
    assert "zebrastripes" not in words and not any("zebrastripes" in t for t in model[
        "vocabulary"])
    recorded = json_of(run.models / "params.json")
    assert recorded["tfidf"]["c"] == model["settings"]["c"] and recorded["run"]["seed"] is None

    result = evaluate(run, params)
    scored = pd_read(run.predictions)
    assert set(scored["uid"]) == set(studies.loc[studies["split"] == "test", "uid"])
    per_study = scored.groupby("uid")["probability"]
    assert (per_study.nunique() == 1).all()  # every image of a study: its report's
    expected = tfidf.probabilities(model, [text[u] for u in per_study.first().index])
    np.testing.assert_allclose(per_study.first().to_numpy(), expected, rtol=0, atol=1e-15)
    assert result["run"] == {"variant": "tfidf", "seed": None, "text_input": run.text_input}

    uid = int(per_study.first().index[0])
    served = cli(["--model", str(run.models), "--text", text[uid], "--uid", str(uid)])
    assert served["probability"].iloc[0] == pytest.approx(expected[0], abs=1e-15)
    assert served["threshold"].iloc[0] == result["threshold"]  # evaluate's, from validation


@pytest.mark.parametrize("stage", ["train", "tune"])
def test_the_network_stages_refuse_the_arm_trained_once(params, monkeypatch, stage):
    import importlib

    monkeypatch.setattr("cxrfusion.params.load", lambda: params)
    module = importlib.import_module(f"stages.{stage}")
    run = getattr(module, f"{stage}_stage")
    with pytest.raises(PipelineError, match="tfidf is not a network: stage train_tfidf fits and "
                                            "tunes it"):
        run(["tfidf", "indication"])


def json_of(path):
    import json

    return json.loads(path.read_text())


def pd_read(path):
    import pandas as pd

    return pd.read_csv(path)
