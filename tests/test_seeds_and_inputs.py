"""Every variant once per training seed (train.seeds), fusion and text once per text input
(text.inputs): the runs the parameters ask for, the report fields each input reads, the
thresholds evaluate chooses on validation studies only, what a seed changes, and which run
predict and explain use."""
from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, first_run, frozen_project

from cxrfusion import params as params_mod
from cxrfusion.common import PipelineError
from cxrfusion.formats import Run, read_text_cache, record, run_of, runs, text_cache
from cxrfusion.params import Params, as_dict, fields_of, validate

FI, IND = "findings+impression", "indication"


# --- the runs the parameters ask for -------------------------------------------------------------

VIT, FROZEN = "image_frozen@demo_vit", "fusion_frozen@demo_vit"  # the demo's frozen encoder


def test_runs_are_every_variant_per_seed_and_input(params):
    assert params.train.seeds == [0, 1] and params.text.inputs == [FI, IND]
    assert runs(params) == [
        Run("fusion", 0, FI), Run("fusion", 1, FI), Run("fusion", 0, IND), Run("fusion", 1, IND),
        Run("image", 0), Run("image", 1),  # the image model reads no report: once per seed
        Run("text", 0, FI), Run("text", 1, FI), Run("text", 0, IND), Run("text", 1, IND),
        Run("tfidf", None, FI), Run("tfidf", None, IND),  # deterministic: once per input
        Run("shuffled", 0, FI), Run("shuffled", 1, FI), Run("shuffled", 0, IND),
        Run("shuffled", 1, IND),
        Run(VIT, 0), Run(VIT, 1),  # the frozen image encoder's vectors, named by its alias
        Run(FROZEN, 0, FI), Run(FROZEN, 1, FI), Run(FROZEN, 0, IND), Run(FROZEN, 1, IND)]
    assert runs(params, variants=("image",)) == [Run("image", 0), Run("image", 1)]
    params.train.seeds = [3]
    params.text.inputs = [IND]
    assert runs(params) == [Run("fusion", 3, IND), Run("image", 3), Run("text", 3, IND),
                            Run("tfidf", None, IND), Run("shuffled", 3, IND),
                            Run(VIT, 3), Run(FROZEN, 3, IND)]


def test_a_run_names_its_folders_and_stage():
    fusion, image = Run("fusion", 0, FI), Run("image", 2)
    assert fusion.path == "fusion/findings+impression/seed-0" and image.path == "image/seed-2"
    assert fusion.models == Path("models/fusion/findings+impression/seed-0")
    assert fusion.test_metrics == Path("metrics/test/fusion/findings+impression/seed-0.json")
    assert fusion.predictions == Path("metrics/predictions/fusion/findings+impression/seed-0.csv")
    assert fusion.curve("roc") == Path("metrics/curves/roc/fusion/findings+impression/seed-0.csv")
    assert fusion.train_log == Path("metrics/train/fusion/findings+impression/seed-0")
    assert image.models == Path("models/image/seed-2")
    assert image.test_metrics == Path("metrics/test/image/seed-2.json")
    # the names dvc.yaml's matrix stages give them: train_fusion@findings+impression-0,
    # train_image@2
    assert fusion.key == "findings+impression-0" and image.key == "2"
    assert fusion.label == "fusion · findings+impression" and image.label == "image"
    # an arm trained once: one run whatever the seed, named without one
    once = Run.of("tfidf", 1, IND)
    assert once == Run.of("tfidf", 0, IND) == Run("tfidf", None, IND)
    assert once.path == "tfidf/indication" and once.key == IND
    assert once.stage == "train_tfidf@indication"
    assert once.models == Path("models/tfidf/indication")
    every = runs(params_mod.built(params_mod.defaults()))
    assert len({r.path for r in every}) == len(every)


def test_run_of_parses_a_stages_arguments(params):
    assert run_of(["fusion", "1", FI], params) == Run("fusion", 1, FI)
    assert run_of(["text", "0", IND], params) == Run("text", 0, IND)
    assert run_of(["image", "1"], params) == Run("image", 1)
    assert run_of(["tfidf", IND], params) == Run("tfidf", None, IND)  # no seed: trained once


@pytest.mark.parametrize("argv, message", [
    (["image", "2"], r"seed '2' is not one of train.seeds=\[0, 1\]: add it to train.seeds"),
    (["image", "-1"], r"seed '-1' is not one of train.seeds"),
    (["fusion", "one", FI], r"seed 'one' is not one of train.seeds"),
    (["fusion", "0", "impression"], r"text input 'impression' is not one of "
                                    r"text.inputs=\['findings\+impression', 'indication'\]"),
    (["text", "0", "findings+impression+indication"], r"is not one of text.inputs"),
    (["image", "0", IND], r"a model that reads no report \(image and image_frozen\) takes no "
                          r"text input.*got \['image', '0', 'indication'\]"),
    (["fusion", "0"], r"fusion, text, shuffled and fusion_frozen need one; got \['fusion', '0'\]"),
    (["text", "1"], r"fusion, text, shuffled and fusion_frozen need one"),
    ([], r"arguments: <fusion\|image\|text\|tfidf\|shuffled\|image_frozen\|fusion_frozen> "
         r"<seed> \[<text input>"),
    (["fusion"], r"arguments: <fusion\|image\|text\|tfidf\|shuffled\|image_frozen\|fusion_frozen> "
                 r"<seed>"),
    (["tfidf", "0", IND], r"or tfidf <text input> \(trained once, no seed\); got"),
    (["tfidf", "impression"], r"text input 'impression' is not one of text.inputs"),
    (["fusion", "0", FI, "extra"], r"arguments: "),
    (["both", "0"], r"variant='both' is not allowed"),
])
def test_run_of_refuses_what_no_comparison_reads(params, argv, message):
    with pytest.raises(PipelineError, match=message):
        run_of(argv, params)


def test_record_names_the_run_without_touching_the_parameters(params):
    """params.json's record of a run: its seed and text input beside the parameters."""
    original = copy.deepcopy(params)
    resolved = record(params, Run("text", 1, IND))
    assert resolved["train"]["seed"] == 1 and resolved["train"]["seeds"] == [0, 1]
    assert resolved["text"]["input"] == IND and resolved["text"]["fields"] == ["indication"]
    assert resolved["run"] == {"variant": "text", "seed": 1, "text_input": IND}
    sections = as_dict(params)
    for section in set(sections) - {"train", "text"}:
        assert resolved[section] == sections[section], section
    # the train section as set, with the recipe's values where an option was null
    assert {k: v for k, v in resolved["train"].items() if k != "seed"} == {
        **sections["train"], **params_mod.recipe(params.train, params.image.pretrained)}

    fusion = record(params, Run("fusion", 0, FI))
    assert fusion["train"]["seed"] == 0 and fusion["text"]["fields"] == ["findings", "impression"]
    image = record(params, Run("image", 1))
    assert image["train"]["seed"] == 1 and "input" not in image["text"]
    assert image["run"] == {"variant": "image", "seed": 1, "text_input": None}
    resolved["train"]["lr"] = 1.0  # the copies share nothing the caller holds
    resolved["text"]["pooling"] = "cls"
    assert params == original  # not mutated: no train.seed, text.input, text.fields or run
    sections = as_dict(params)
    assert "seed" not in sections["train"] and "input" not in sections["text"]
    assert "run" not in sections

    assert fields_of(FI) == ["findings", "impression"] and fields_of(IND) == ["indication"]
    assert fields_of("comparison+impression") == ["comparison", "impression"]
    assert params == original


# --- parameters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("old, value, replacement", [
    ("text.fields", ["findings", "impression"], "text.inputs"),
    ("train.seed", 0, "train.seeds"),
    ("report.subgroups", ["view"], "study_report.subgroups"),  # the section renamed
])
def test_a_replaced_parameter_is_refused_by_name(params, old, value, replacement):
    section, key = old.split(".")
    p = as_dict(params)  # a params.yaml that still names the old option
    p.setdefault(section, {})[key] = value
    with pytest.raises(PipelineError, match=rf"parameter {re.escape(old)} was replaced by "
                                            rf"{re.escape(replacement)}.*replace {re.escape(old)}"):
        validate(p)


def test_a_params_yaml_of_the_single_run_pipeline_is_refused(tmp_path):
    """params.yaml before train.seeds and text.inputs: text.fields and train.seed in place of
    them. It is refused, naming the parameter that replaces the old one."""
    old = yaml.safe_load((ROOT / "params.yaml").read_text())
    old["text"].pop("inputs")
    old["text"]["fields"] = ["findings", "impression"]
    old["train"].pop("seeds")
    old["train"]["seed"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(PipelineError, match=r"text\.fields was replaced by text\.inputs"):
        params_mod.load(tmp_path / "params.yaml")
    old["text"]["inputs"] = [FI]  # text updated, train not yet
    old["text"].pop("fields")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(PipelineError, match=r"train\.seeds"):
        params_mod.load(tmp_path / "params.yaml")


@pytest.mark.parametrize("value", [
    [], "findings+impression", ["findings+summary"], ["indication", "indication"],
    ["findings+findings"], [""], [1], ["Findings"], ["findings+"], None,
])
def test_bad_text_inputs_are_refused(params, value):
    params.text.inputs = value
    with pytest.raises(PipelineError, match=r"parameter text\.inputs=.* is not allowed: use a "
                                            r"non-empty list of field sets"):
        validate(params)


@pytest.mark.parametrize("value", [[], [0, 0], [0, -1], [0, 1.5], [True], "0", 0, None])
def test_bad_train_seeds_are_refused(params, value):
    params.train.seeds = value
    with pytest.raises(PipelineError, match=r"parameter train\.seeds="):
        validate(params)


def test_explain_picks_a_run_the_parameters_train(params):
    params.explain = replace(params.explain, model_seed=1, text_input=IND)
    validate(params)
    params.explain.model_seed = 2  # train.seeds: [0, 1]
    with pytest.raises(PipelineError, match=r"explain\.model_seed=2 is not allowed: use null or "
                                            r"one of train\.seeds=\[0, 1\]"):
        validate(params)
    params.explain = replace(params.explain, model_seed=None, text_input="impression")
    with pytest.raises(PipelineError, match=r"explain\.text_input='impression' is not allowed: "
                                            r"use null or one of text\.inputs"):
        validate(params)


def test_explained_run(params):
    from stages.explain import explained_run

    assert explained_run(params) == Run("fusion", 0, FI)  # null: the first seed and input
    params.explain = replace(params.explain, model_seed=1, text_input=IND)
    assert explained_run(params) == Run("fusion", 1, IND)
    params.explain.variant = "image"  # no text input: the image model reads no report
    assert explained_run(params) == Run("image", 1)


# --- prepare and embed_text: the report fields of each input -----------------------------------

@pytest.mark.parametrize("inputs, columns", [
    (["impression", "findings+indication"], ["indication", "findings", "impression"]),
    (["findings+impression"], ["findings", "impression"]),
    (["comparison"], ["comparison"]),
    (["indication", "impression+findings"], ["indication", "findings", "impression"]),
])
def test_prepare_writes_one_column_per_field_of_the_inputs(tmp_path, params, inputs, columns):
    from test_prepare import basic_raw, write_raw

    from cxrfusion.formats import STUDY_COLUMNS
    from stages.prepare import prepare

    params.split = replace(params.split, min_studies=0, min_per_label=0)
    params.text.inputs = inputs
    reports, projections = basic_raw(tmp_path)
    reports[0].update(findings="  Clear lungs. ", comparison="Prior film.")
    raw = write_raw(tmp_path / "raw", reports, projections)
    rep = prepare(params, raw=raw, out=tmp_path / "prepared")
    studies = pd.read_csv(tmp_path / "prepared" / "studies.csv", keep_default_na=False, dtype=str)
    assert list(studies.columns) == STUDY_COLUMNS + columns  # the union, once each, no `text`
    first = studies.set_index("uid").loc["1"]
    expected = {"indication": "Cough.", "comparison": "Prior film.", "findings": "Clear lungs.",
                "impression": "No acute disease."}
    assert {c: first[c] for c in columns} == {c: expected[c] for c in columns}  # stripped
    assert set(rep["studies_with_empty_text"]) == set(inputs)
    assert "text_fields" not in rep


def test_embed_text_refuses_studies_prepared_for_other_inputs(prepared):
    """studies.csv without the indication column (prepared for findings+impression alone):
    the indication cache cannot be made from it."""
    from stages import demo_encoder, embed_text
    from stages.prepare import prepare

    only = copy.deepcopy(prepared)
    only.text.inputs = [FI]
    prepare(only)
    demo_encoder.demo_encoder(prepared)
    with pytest.raises(PipelineError, match=r"studies.csv has no report field indication: it was "
                                            r"prepared for other text.inputs; rerun `dvc repro "
                                            r"prepare`"):
        embed_text.embed_text(IND, prepared)
    assert not text_cache(IND).exists()
    with pytest.raises(PipelineError, match=r"text input 'impression' is not one of text.inputs"):
        embed_text.embed_text("impression", prepared)  # not asked for: no cache no run reads


def _vectors(text_input: str) -> tuple[np.ndarray, np.ndarray, dict]:
    return read_text_cache(text_cache(text_input))


def test_embed_text_for_indication_reads_the_indication_only(cached):
    from cxrfusion.formats import STUDIES
    from cxrfusion.studies import join_text
    from cxrfusion.text_encoder import embed, load_encoder
    from stages import embed_text

    uids, indication, attrs = _vectors(IND)
    fi_uids, findings, fi_attrs = _vectors(FI)
    assert attrs["fields"] == "indication" and fi_attrs["fields"] == "findings,impression"
    assert uids.tolist() == fi_uids.tolist()
    assert indication.shape == findings.shape
    # two readings of the report: a study's vectors differ (the demo's indications are a few
    # phrases, its findings and impressions others)
    differ = np.abs(indication - findings).max(axis=1) > 1e-3
    assert differ.all()

    # each indication vector is the encoder's reading of that study's indication alone
    studies = pd.read_csv(STUDIES, keep_default_na=False, dtype=str)
    t = cached.text
    cpu = torch.device("cpu")
    tokenizer, model = load_encoder(t.model, t.revision, cpu)
    for k in (0, 1, len(studies) - 1):
        alone = embed([studies.loc[k, "indication"]], tokenizer, model, t.pooling,
                      t.max_length, 1, cpu, progress=False)
        np.testing.assert_allclose(indication[k], alone[0], atol=1e-5)
        both = embed([join_text(studies.loc[k], ["findings", "impression"])], tokenizer, model,
                     t.pooling, t.max_length, 1, cpu, progress=False)
        np.testing.assert_allclose(findings[k], both[0], atol=1e-5)

    # another findings (and impression), the same indication: the same indication vector
    k = int(np.flatnonzero(studies["indication"] != "")[0])
    studies.loc[k, "findings"] = "Massive cardiomegaly with bilateral pleural effusions."
    studies.loc[k, "impression"] = "Congestive heart failure."
    studies.to_csv(STUDIES, index=False)
    for text_input in (FI, IND):
        embed_text.embed_text(text_input, cached)
    _, indication_after, _ = _vectors(IND)
    _, findings_after, _ = _vectors(FI)
    np.testing.assert_array_equal(indication_after, indication)  # every study, bit for bit
    assert np.abs(findings_after[k] - findings[k]).max() > 1e-3  # the other input did change


# --- evaluate: thresholds from the validation studies only -------------------------------------

def _direct_study_predictions(run: Run, p: Params) -> dict[str, pd.DataFrame]:
    """The saved model's study predictions on validation and test, computed here (not by
    evaluate): the caches read as the model was trained, scored in evaluate's batch size."""
    from cxrfusion.dataset import load_splits
    from cxrfusion.metrics import study_predictions
    from cxrfusion.model import load_model, reads
    from cxrfusion.saved_model import trained_settings
    from cxrfusion.scoring import score

    model, _ = load_model(run.models)
    splits = load_splits(trained_settings(run.models, p), reads(run.variant)[0], run.text_input,
                         names=("val", "test"))[0]
    out = {}
    for name, split in splits.items():
        probs, _ = score(model, split, p.train.batch_size, p.train.amp)
        out[name] = study_predictions(split.rows[["uid", "filename", "label"]].assign(
            probability=probs.astype("float64")))
    return out


@pytest.fixture
def trained(cached):
    """One text run (fast), trained; its study predictions on validation and test."""
    run = first_run("text", cached)
    from cxrfusion.training import train

    train(run, cached)
    return run, cached, _direct_study_predictions(run, cached)


def _test_json(run: Run) -> dict:
    return json.loads((run.test_metrics).read_text())


@pytest.mark.parametrize("rule", ["youden", "max_f1"])
def test_evaluate_chooses_its_threshold_on_validation_studies(trained, rule):
    from cxrfusion.metrics import choose_threshold
    from stages.evaluate import evaluate

    run, p, direct = trained
    p.evaluate.threshold = rule
    on = {s: choose_threshold(direct[s]["label"], direct[s]["probability"], rule)
          for s in ("val", "test")}
    # the premise: chosen on the test studies, the threshold would be another one
    assert abs(on["val"] - on["test"]) > 1e-6, on
    result = evaluate(run, p)
    saved = _test_json(run)
    assert saved["threshold_rule"] == rule and saved["threshold"] == result["threshold"]
    assert saved["threshold"] == pytest.approx(on["val"], abs=1e-9)
    assert saved["threshold"] != pytest.approx(on["test"], abs=1e-6)
    assert saved["val_studies"] == len(direct["val"])
    assert saved["study"]["n"] == len(direct["test"])


def test_test_predictions_never_move_the_threshold(trained, monkeypatch):
    """evaluate scores the validation studies, then the test studies: whatever the test
    predictions are, the thresholds are those of the validation predictions; other validation
    predictions move them."""
    from stages import evaluate as evaluate_mod

    run, p, _ = trained
    before = evaluate_mod.evaluate(run, p)
    scored = pd.read_csv(run.predictions)["probability"].to_numpy()
    real_score = evaluate_mod.image_probabilities

    def separated(df, high, low):  # every image of an abnormal study `high`, of a normal `low`
        return df.assign(probability=np.where(df["label"] == 1, high, low))

    def test_changed(model, split, params):  # the test predictions turned upside down
        df = real_score(model, split, params)
        test = (split.rows["split"] == "test").all()
        return df.assign(probability=1 - df["probability"]) if test else df

    monkeypatch.setattr(evaluate_mod, "image_probabilities", test_changed)
    after = evaluate_mod.evaluate(run, p)
    # the test scores changed (evaluate wrote the turned ones) ...
    np.testing.assert_allclose(pd.read_csv(run.predictions)["probability"],
                               1 - scored, atol=1e-12)
    assert after["study"]["auroc"] == pytest.approx(1 - before["study"]["auroc"])
    assert after["study"]["confusion"] != before["study"]["confusion"]
    # ... the thresholds did not
    assert after["threshold"] == before["threshold"]

    def val_changed(model, split, params):
        df = real_score(model, split, params)
        return separated(df, 0.8, 0.2) if (split.rows["split"] == "val").all() else df

    monkeypatch.setattr(evaluate_mod, "image_probabilities", val_changed)
    moved = evaluate_mod.evaluate(run, p)
    # validation studies separated at 0.8 / 0.2: youden's threshold lies halfway, 0.5
    assert moved["threshold"] == 0.5 != before["threshold"]
    assert moved["study"]["auroc"] == before["study"]["auroc"]  # the same test scores
    assert _test_json(run)["threshold"] == 0.5


def test_a_fixed_threshold_is_used_as_it_is(trained):
    from stages.evaluate import evaluate

    run, p, direct = trained
    p.evaluate.threshold = 0.42
    evaluate(run, p)
    saved = _test_json(run)
    assert saved["threshold"] == 0.42 and saved["threshold_rule"] == "fixed"
    test = direct["test"]
    called = (test["probability"] >= 0.42).astype(int)
    confusion = pd.read_csv(run.curve("confusion"))
    assert confusion["predicted"].tolist() == called.tolist()
    assert saved["study"]["recall"] == pytest.approx(
        ((called == 1) & (test["label"] == 1)).sum() / (test["label"] == 1).sum())


@pytest.mark.parametrize("target", [0.9, 0.6])
def test_sensitivity_at_the_fixed_specificity_is_read_off_the_test_roc(trained, target):
    from sklearn.metrics import roc_curve

    from cxrfusion.metrics import choose_threshold, study_predictions
    from stages.evaluate import evaluate

    run, p, direct = trained
    p.evaluate.specificity = target
    evaluate(run, p)
    at = _test_json(run)["sensitivity_at_specificity"]
    assert at["specificity"] == target
    test = direct["test"]
    fpr, tpr, _ = roc_curve(test["label"], test["probability"], drop_intermediate=False)
    x = 1 - target  # threshold-free: on the test ROC, linear between its points
    on = np.isclose(fpr, x, atol=1e-12)
    if on.any():
        expected = tpr[on].max()
    else:
        a, b = np.flatnonzero(fpr < x)[-1], np.flatnonzero(fpr > x)[0]
        expected = tpr[a] + (tpr[b] - tpr[a]) * (x - fpr[a]) / (fpr[b] - fpr[a])
    assert at["sensitivity"] == pytest.approx(expected, abs=1e-12)
    # the validation predictions are saved, and they give the threshold evaluate chose
    val = study_predictions(pd.read_csv(run.validation))
    assert val["uid"].tolist() == direct["val"]["uid"].tolist()
    np.testing.assert_allclose(val["probability"], direct["val"]["probability"], atol=1e-12)
    assert choose_threshold(val["label"], val["probability"], "youden") == (
        _test_json(run)["threshold"])


# --- seeds ---------------------------------------------------------------------------------------

def test_two_seeds_train_two_models_and_a_seed_trains_the_same_model_again(cached):
    from safetensors.torch import load_file

    from cxrfusion.training import train
    from stages.evaluate import evaluate

    cached.train.epochs = 1
    zero, one = first_run("image", cached, seed=0), first_run("image", cached, seed=1)
    for run in (zero, one):
        train(run, cached)
        evaluate(run, cached)
    # side by side: each seed its own model and evaluation
    assert sorted(p.name for p in Path("models/image").iterdir()) == ["seed-0", "seed-1"]
    for run in (zero, one):
        assert json.loads((run.models / "model.json").read_text())["seed"] == run.seed
        assert json.loads((run.models / "params.json").read_text())["train"]["seed"] == run.seed
        assert _test_json(run)["run"]["seed"] == run.seed
    a, b = load_file(zero.models / "model.safetensors"), load_file(one.models / "model.safetensors")
    assert a.keys() == b.keys()
    assert not all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # another initialisation
    assert not np.array_equal(a["head.0.weight"].numpy(), b["head.0.weight"].numpy())
    p0 = pd.read_csv(zero.predictions)
    p1 = pd.read_csv(one.predictions)
    assert p0["filename"].tolist() == p1["filename"].tolist()  # the same test images
    assert not np.allclose(p0["probability"], p1["probability"], atol=1e-6)

    weights = (zero.models / "model.safetensors").read_bytes()
    predictions = (zero.predictions).read_bytes()
    scores = (zero.test_metrics).read_bytes()
    train(zero, cached)  # seed 0 again: the same weights, predictions and metrics
    evaluate(zero, cached)
    assert (zero.models / "model.safetensors").read_bytes() == weights
    assert (zero.predictions).read_bytes() == predictions
    assert (zero.test_metrics).read_bytes() == scores


def test_compare_reads_every_run_over_seeds_and_inputs(evaluated):
    """compare in-process on every run of two seeds and two text inputs: the numbers of each
    model are means over its seeds, each seed's its run's own (the checks of the end-to-end
    test, tests/test_pipeline.py, on outputs made without DVC)."""
    from test_pipeline import FIGURES, _check_comparison

    from stages.compare import compare

    result = compare(evaluated)
    comparison = _check_comparison(Path("."), as_dict(evaluated))
    assert comparison == json.loads(json.dumps(result))
    assert sorted(p.name for p in Path("metrics/figures").iterdir()) == FIGURES
    assert Path("metrics/comparison.md").read_text().startswith("**Primary question**")


# --- predict and explain: the chosen seed's run and its threshold -------------------------------

TWO_SEEDS = (Run("fusion", 0, FI), Run("fusion", 1, FI))
THRESHOLDS = {0: 0.31, 1: 0.62}  # written into each run's test.json: told apart at a glance


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two fusion runs (seeds 0 and 1 of findings+impression), trained and evaluated, their
    test.json thresholds set apart."""
    folder = tmp_path_factory.mktemp("two_seeds")
    p = frozen_project(folder, TWO_SEEDS)
    for run in TWO_SEEDS:
        path = folder / run.test_metrics
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "threshold": THRESHOLDS[run.seed]}))
    return folder, p


@pytest.fixture
def two(two_seeds, monkeypatch) -> Params:
    folder, p = two_seeds
    monkeypatch.chdir(folder)
    return copy.deepcopy(p)


def _evaluated(run: Run) -> pd.DataFrame:
    from cxrfusion.metrics import study_predictions

    return study_predictions(pd.read_csv(run.predictions)).set_index("uid")


def _test_csv() -> str:
    """The test images with their reports, as predict --csv reads them."""
    images = pd.read_csv("data/prepared/images.csv")
    studies = pd.read_csv("data/prepared/studies.csv", keep_default_na=False, dtype={"uid": int})
    test = images[images["split"] == "test"].merge(studies[["uid", "findings", "impression"]],
                                                   on="uid")
    test["filename"] = [f"data/raw/images/images_normalized/{f}" for f in test["filename"]]
    test[["uid", "filename", "findings", "impression"]].to_csv("test_studies.csv", index=False)
    return "test_studies.csv"


def test_predict_uses_the_named_runs_threshold(two):
    from cxrfusion.predict import cli

    csv = _test_csv()
    out = {}
    for run in TWO_SEEDS:
        out[run.seed] = cli(["--model", str(run.models), "--csv", csv, "--out", f"{run.seed}.csv"])
        assert (out[run.seed]["threshold"] == THRESHOLDS[run.seed]).all()
        labels = (out[run.seed]["probability"] >= THRESHOLDS[run.seed]).astype(int)
        assert out[run.seed]["label"].tolist() == labels.tolist()
        expected = _evaluated(run).loc[out[run.seed]["uid"].astype(int), "probability"].to_numpy()
        np.testing.assert_allclose(out[run.seed]["probability"], expected, atol=1e-6)
    # two models, not one read twice
    assert not np.allclose(out[0]["probability"], out[1]["probability"], atol=1e-6)


def test_a_model_outside_models_has_no_threshold_of_its_own(two, tmp_path):
    from cxrfusion.predict import cli

    copy_ = tmp_path / "elsewhere"
    shutil.copytree(TWO_SEEDS[1].models, copy_)
    csv = _test_csv()
    assert two.evaluate.threshold == "youden"  # a rule, applied on validation studies
    with pytest.raises(PipelineError, match=r"has no evaluation \(it is not under models/\): its "
                                            r"threshold is chosen by evaluate.threshold=youden"
                                            r".*--threshold"):
        cli(["--model", str(copy_), "--csv", csv])
    assert (cli(["--model", str(copy_), "--csv", csv, "--threshold", "0.4"])["threshold"]
            == 0.4).all()
    saved = json.loads((copy_ / "params.json").read_text())
    saved["evaluate"]["threshold"] = 0.45  # trained with a fixed threshold: that one
    (copy_ / "params.json").write_text(json.dumps(saved))
    assert (cli(["--model", str(copy_), "--csv", csv])["threshold"] == 0.45).all()


@pytest.mark.parametrize("model_seed", [1, None])
def test_explain_explains_the_chosen_seeds_run_at_its_threshold(two, model_seed):
    from stages.explain import explain

    two.explain.model_seed = model_seed
    validate(two)
    run = TWO_SEEDS[1] if model_seed == 1 else TWO_SEEDS[0]  # null: the first of train.seeds
    result = explain(two)
    assert result == json.loads(Path("metrics/explain.json").read_text())
    assert result["model"] == str(run.models) == (
        f"models/fusion/findings+impression/seed-{run.seed}")
    assert result["seed"] == run.seed and result["text_input"] == FI
    assert result["threshold"] == THRESHOLDS[run.seed]
    # its heatmaps show that run's predictions, at that run's threshold
    shown = pd.read_csv("metrics/explain/heatmaps.csv")
    evaluated = pd.read_csv(run.predictions).set_index("filename")
    np.testing.assert_array_equal(shown["probability"].to_numpy(),
                                  evaluated.loc[shown["filename"], "probability"].to_numpy())
    called = shown["study_probability"] >= THRESHOLDS[run.seed]
    assert (called == shown["outcome"].isin(["true_positive", "false_positive"])).all()
    other = TWO_SEEDS[0] if run is TWO_SEEDS[1] else TWO_SEEDS[1]
    others = pd.read_csv(other.predictions).set_index("filename")
    assert not np.allclose(shown["probability"], others.loc[shown["filename"], "probability"],
                           atol=1e-6)
