"""cxrfusion/predict.py and stages/explain.py on tiny models trained in-process.

One module-scoped project (conftest's `frozen_project`: the recipe of the `cached` fixture,
built once instead of once per test, which would cost ~10 s a test) with one run of each
variant trained and evaluated (seed 0; findings+impression for the two that read a report).
The models use timm's `test_efficientnet` (100 k parameters, random and frozen: only the head
trains, in a second) at 64 px: at 32 px the last convolutional block is 1 x 1 and a Grad-CAM
heatmap could only be constant. Prediction and Grad-CAM run the same code for any backbone.
"""
from __future__ import annotations

import copy
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, frozen_project
from PIL import Image

from cxrfusion.common import PipelineError
from cxrfusion.formats import Run, read_text_cache_attrs, text_cache
from cxrfusion.metrics import study_predictions

VARIANTS = ("fusion", "image", "text", "fusion_frozen@demo_vit")  # on the frozen image encoder
INPUT = "findings+impression"
FIELDS = ["findings", "impression"]  # the fields of INPUT
RUNS = {"fusion": Run("fusion", 0, INPUT), "image": Run("image", 0), "text": Run("text", 0, INPUT),
        "fusion_frozen@demo_vit": Run("fusion_frozen@demo_vit", 0, INPUT)}
# e.g. models/fusion/findings+impression/seed-0
MODEL = {v: str(run.models) for v, run in RUNS.items()}
RAW_IMAGES = Path("data/raw/images/images_normalized")
# Exact? Not always, on the CPU: a row's logits depend in their last bit on the size of the
# batch it is computed in (measured with torch 2.14 on this CPU: the head's Linear layers give
# other last bits at batch sizes 1-3, 5-7, 9-11, ... than at 8 or 40; the CNN at any batch size
# that is not a multiple of 8), and embed_text pads each batch of reports to its longest one,
# so a report embedded alone differs in the last bit from its cached vector for about half of
# them. `evaluate` scores the test images in batches of train.batch_size; predict scores one
# study (or a CSV) in its own batches and embeds its report alone. Measured: a CSV of the whole
# test split (evaluate's rows, order and batch size) reproduced predictions.csv exactly; one
# study at a time, 1 study in 11 differed by one float32 ulp (3e-8 to 6e-8). Exact equality
# would need every image and report scored alone in the pipeline too (slow on a GPU), hence a
# tolerance, far above one ulp and far below anything that matters.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("project")
    return folder, frozen_project(folder, RUNS.values())


@pytest.fixture
def p(project, monkeypatch) -> dict:
    folder, params = project
    monkeypatch.chdir(folder)
    return copy.deepcopy(params)  # a fresh copy per test


def _test_rows() -> pd.DataFrame:
    """The test images with their study's report fields, from the raw files."""
    images = pd.read_csv("data/prepared/images.csv")
    reports = pd.read_csv("data/raw/indiana_reports.csv", dtype=str, keep_default_na=False)
    reports["uid"] = reports["uid"].astype(int)
    test = images[images["split"] == "test"].merge(reports[["uid", *FIELDS]], on="uid")
    return test.assign(path=[str(RAW_IMAGES / f) for f in test["filename"]])


def _evaluated(variant: str) -> pd.DataFrame:
    return study_predictions(pd.read_csv(RUNS[variant].predictions)).set_index("uid")


def _threshold(variant: str) -> float:
    """The threshold evaluate chose (on validation) for the variant's run."""
    return json.loads((RUNS[variant].test_metrics).read_text())["threshold"]


def _cli(argv):
    from cxrfusion.predict import cli
    return cli([str(a) for a in argv])


# --- predict --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_predict_one_study_matches_evaluate(p, variant, capsys):
    rows = _test_rows()
    uid = rows.groupby("uid").size().idxmax()  # a study with several images: the mean matters
    study = rows[rows["uid"] == uid]
    assert len(study) > 1
    argv = ["--model", MODEL[variant], "--uid", uid]
    for path in study["path"]:
        argv += ["--image", path]
    for field in FIELDS:
        argv += [f"--{field}", study[field].iloc[0]]
    scores = RUNS[variant].test_metrics
    saved = scores.read_text()
    # another threshold in test.json than evaluate chose: the one test.json holds must win
    scores.write_text(json.dumps({**json.loads(saved), "threshold": 0.37}))
    try:
        out = _cli(argv)
    finally:
        scores.write_text(saved)
    expected = _evaluated(variant).loc[uid, "probability"]
    assert len(out) == 1
    assert out["probability"].iloc[0] == pytest.approx(expected, abs=TOLERANCE)
    assert out["threshold"].iloc[0] == 0.37
    assert out["label"].iloc[0] == int(out["probability"].iloc[0] >= 0.37)
    assert out["prediction"].iloc[0] == ("abnormal" if out["label"].iloc[0] else "normal")
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(printed.columns) == ["uid", "n_images", "probability", "label", "prediction",
                                     "threshold"]
    assert printed["probability"].iloc[0] == out["probability"].iloc[0]  # printed in full


@pytest.mark.parametrize("variant", VARIANTS)
def test_predict_csv_of_the_test_set_matches_evaluate(p, variant):
    rows = _test_rows()
    table = rows[["uid", "path", *FIELDS]].rename(columns={"path": "filename"})
    if variant == "fusion":  # the report as one joined column instead of its fields
        from cxrfusion.studies import join_text
        table = table.assign(text=table.apply(join_text, axis=1, fields=FIELDS)).drop(
            columns=FIELDS)
    table.to_csv("new_studies.csv", index=False)
    _cli(["--model", MODEL[variant], "--csv", "new_studies.csv", "--out", "out.csv"])
    out = pd.read_csv("out.csv").set_index("uid")
    expected = _evaluated(variant)
    assert sorted(out.index) == sorted(expected.index)
    diff = (out["probability"] - expected.loc[out.index, "probability"]).abs()
    assert diff.max() <= TOLERANCE
    assert (out["threshold"] == _threshold(variant)).all()  # evaluate's, from test.json
    if variant != "text":
        assert (out["n_images"] == rows.groupby("uid").size().loc[out.index]).all()


def test_predict_errors(p):
    rows = _test_rows()
    image = rows["path"].iloc[0]
    fusion, image_model, text = MODEL["fusion"], MODEL["image"], MODEL["text"]
    with pytest.raises(PipelineError, match=r"fusion model in models/fusion/findings\+impression/"
                                            r"seed-0 reads its report "
                                            r"\(--text, or --findings / --impression\)"):
        _cli(["--model", fusion, "--image", image])
    with pytest.raises(PipelineError, match=r"reads its images \(--image PATH, repeatable\)"):
        _cli(["--model", fusion, "--text", "The lungs are clear."])
    with pytest.raises(PipelineError, match="reads its images .* and its report"):
        _cli(["--model", fusion])
    with pytest.raises(PipelineError, match=r"image model in models/image/seed-0 reads its images"):
        _cli(["--model", image_model, "--text", "The lungs are clear."])
    with pytest.raises(PipelineError, match=r"text model in models/text/findings\+impression/"
                                            r"seed-0 reads its report"):
        _cli(["--model", text, "--image", image])

    Path("broken.png").write_bytes(b"not a png")
    with pytest.raises(PipelineError, match=r"cannot read image broken\.png: it is empty, "
                                            "truncated or not an image"):
        _cli(["--model", image_model, "--image", image, "--image", "broken.png"])
    with pytest.raises(PipelineError, match=r"image absent\.png not found"):
        _cli(["--model", image_model, "--image", "absent.png"])
    with pytest.raises(PipelineError,
                       match=r"model folder models/nothing not found: train it first"):
        _cli(["--model", "models/nothing", "--text", "x"])

    pd.DataFrame({"uid": [1], "findings": ["x"]}).to_csv("partial.csv", index=False)
    with pytest.raises(PipelineError, match=r"partial\.csv: missing column\(s\) filename, text "
                                            r"\(or impression\) for the fusion model"):
        _cli(["--model", fusion, "--csv", "partial.csv"])
    pd.DataFrame({"uid": [1]}).to_csv("uids.csv", index=False)
    with pytest.raises(PipelineError, match=r"missing column\(s\) filename for the image model"):
        _cli(["--model", image_model, "--csv", "uids.csv"])
    with pytest.raises(PipelineError,
                       match=r"missing column\(s\) text \(or findings, impression\)"):
        _cli(["--model", text, "--csv", "uids.csv"])


@pytest.mark.parametrize("setting", ["image.fit", "text.lowercase"])
def test_a_model_saved_before_a_setting_was_recorded_is_refused_alike(p, setting):
    """One rule for evaluate, explain and the prediction CLI (saved_model.saved_settings): a
    model whose params.json lacks a setting that reading its inputs needs is refused, with the
    command that retrains it; nothing falls back to a guess."""
    from stages.evaluate import evaluate
    from stages.explain import explain

    saved = RUNS["fusion"].models / "params.json"
    original = saved.read_text()
    older = json.loads(original)
    section, key = setting.split(".")
    del older[section][key]
    message = (f"{saved} has no {setting}: the model was trained before the pipeline recorded "
               "it; retrain it with `dvc repro`")
    try:
        saved.write_text(json.dumps(older))
        for reads_the_model in (lambda: evaluate(RUNS["fusion"], p), lambda: explain(p),
                                lambda: _cli(["--model", MODEL["fusion"], "--image",
                                              _test_rows()["path"].iloc[0], "--text", "x"])):
            with pytest.raises(PipelineError, match=re.escape(message)):
                reads_the_model()
    finally:
        saved.write_text(original)


def test_predict_defaults_to_the_first_fusion_run(p):
    from cxrfusion.predict import parser

    assert parser().parse_args([]).model == MODEL["fusion"]


def test_predict_exits_1_with_the_message(p, capsys):
    from cxrfusion.common import main
    from cxrfusion.predict import cli

    with pytest.raises(SystemExit) as exit_:
        main(lambda: cli(["--model", MODEL["fusion"], "--text", "No acute disease."]))
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert f"ERROR pipeline: the fusion model in {MODEL['fusion']} reads its images" in err
    assert "Traceback" not in err


def _model_with_encoder(variant: str, name: str, hidden: int, seed: int) -> str:
    """A copy of the variant's run whose params name another (tiny, random) encoder."""
    from cxrfusion.demo_encoder import build
    from cxrfusion.formats import read_prepared
    from cxrfusion.studies import join_text

    studies, _ = read_prepared()
    train = studies[studies["split"] == "train"]
    build(train.apply(join_text, axis=1, fields=FIELDS).tolist(), Path("models") / name,
          TINY["demo_encoder"]["vocab_size"], hidden, 1, 2, seed)
    copy = Path("models") / f"{variant}_{name}"
    shutil.copytree(MODEL[variant], copy)
    params = json.loads((copy / "params.json").read_text())
    params["text"]["model"] = f"models/{name}"
    (copy / "params.json").write_text(json.dumps(params))
    return str(copy)


def test_predict_refuses_another_encoder(p):
    # a copy has no evaluation of its own (metrics/text_encoder8/ does not exist): --threshold
    other_size = _model_with_encoder("text", "encoder8", hidden=8, seed=0)
    with pytest.raises(PipelineError, match=r"the text encoder models/encoder8 gives "
                                            r"8-dimensional report vectors but the model in "
                                            r"models/text_encoder8 was trained on 16-dimensional"):
        _cli(["--model", other_size, "--text", "The lungs are clear.", "--threshold", "0.5"])
    # same size, other weights: only the fingerprint recorded in model.json tells
    other_weights = _model_with_encoder("text", "encoder16", hidden=16, seed=1)
    recorded = json.loads((RUNS["text"].models / "model.json").read_text())["text_fingerprint"]
    assert recorded == read_text_cache_attrs(text_cache(INPUT))["fingerprint"]
    with pytest.raises(PipelineError, match=r"the text encoder models/encoder16 \(fingerprint "
                                            r"sha256:\w+\) is not the one whose vectors the "
                                            r"model in models/text_encoder16 was trained on "
                                            r"\(fingerprint sha256:\w+, from "
                                            r"models/text_encoder16/model\.json\)"):
        _cli(["--model", other_weights, "--text", "The lungs are clear.", "--threshold", "0.5"])


# --- explain --------------------------------------------------------------------------------------

def _test_split(p):
    from cxrfusion.dataset import load_splits
    # both inputs whatever the model reads; the reports of INPUT
    return load_splits(p, True, INPUT)[0]["test"]


def test_grad_cam_heatmap(p):
    from cxrfusion.explain import grad_cam
    from cxrfusion.model import load_model, normalise

    model, config = load_model(RUNS["fusion"].models)
    test = _test_split(p)
    x = normalise(test.images[:4], model.pixel_mean, model.pixel_std)
    with torch.no_grad():  # the split Grad-CAM differentiates (features, then classify) is the
        #                    backbone's own forward: timm's forward_features + forward_head
        text = (test.text[:4] - model.text_mean) / model.text_scale  # model.standardise_text
        assert torch.equal(model(x, test.text[:4]), model.head(torch.cat([model.cnn(x), text], 1)))
    cams = []
    for row in range(3):
        for target in (None, 0, 1):  # None: the more probable class
            cam, probability = grad_cam(model, test.images[row], test.text[row], target)
            assert cam.shape == (64, 64) == tuple(test.images[row].shape)
            assert cam.shape == (config["image_size"],) * 2
            assert cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1
            assert 0 < probability < 1
            # scaled to a maximum of 1, or all 0 when no region speaks for the class (ReLU)
            assert cam.max() == 1.0 or not cam.any()
            cams.append(cam)
    assert any(cam.max() > cam.min() for cam in cams)  # not constant

    # the same map computed independently: hook the last block inside a full forward pass
    image, text = test.images[:1], test.text[:1]
    seen = {}
    hook = model.cnn.bn2.register_forward_hook(lambda module, args, out: seen.update(a=out))
    try:
        logits = model(normalise(image, model.pixel_mean, model.pixel_std), text)
    finally:
        hook.remove()
    activations = seen["a"]
    (gradients,) = torch.autograd.grad(logits[0, 1] - logits[0, 0], activations)
    by_hand = torch.relu((gradients.mean((2, 3), keepdim=True) * activations).sum(1, keepdim=True))
    by_hand = torch.nn.functional.interpolate(by_hand, size=(64, 64), mode="bilinear",
                                              align_corners=False)[0, 0].detach()
    cam, _ = grad_cam(model, test.images[0], test.text[0], target=1)
    assert by_hand.max() > 0 and by_hand.min() < by_hand.max()  # a map worth comparing
    by_hand = by_hand / by_hand.max()
    np.testing.assert_allclose(cam, by_hand.numpy(), atol=1e-5)


def _unmoved(change: dict) -> None:
    for level in ("image", "study"):
        assert change[level]["mean_change"] == 0 and change[level]["mean_abs_change"] == 0
        assert change[level]["flip_fraction"] == 0


def test_reliance_of_single_input_models(p):
    from cxrfusion.explain import modality_reliance, reference_normal
    from cxrfusion.model import load_model

    test = _test_split(p)
    uid, vector = reference_normal(p, INPUT)
    studies = pd.read_csv("data/prepared/studies.csv")
    assert studies.set_index("uid").loc[uid, ["split", "label"]].tolist() == ["train", 0]
    normal = torch.from_numpy(vector)

    text_model, _ = load_model(RUNS["text"].models)
    result, _ = modality_reliance(text_model, test, normal, 0.5, 8)
    _unmoved(result["image_blank"])  # the text model reads no image
    assert result["text_to_normal"]["image"]["mean_abs_change"] > 0
    assert result["text_to_normal"]["study"]["n"] == test.rows["uid"].nunique()
    assert result["text_to_normal"]["image"]["n"] == len(test)

    image_model, _ = load_model(RUNS["image"].models)
    result, _ = modality_reliance(image_model, test, normal, 0.5, 8)
    _unmoved(result["text_to_normal"])  # the image model reads no report
    assert result["image_blank"]["image"]["mean_abs_change"] > 0


def test_explain_stage_writes_its_outputs(p):
    from cxrfusion.explain import OUTCOMES
    from stages.explain import explain

    assert p.explain.model_seed is None and p.explain.text_input is None
    result = explain(p)  # the first seed and text input: the fusion run of RUNS
    saved = json.loads(Path("metrics/explain.json").read_text())
    assert saved == result
    assert set(saved) == {"variant", "seed", "text_input", "model", "threshold", "test",
                          "reference_normal_uid", "heatmaps", "feature_map", "text_to_normal",
                          "image_blank"}
    threshold = _threshold("fusion")  # what evaluate chose on validation, not a default
    assert saved["variant"] == "fusion" and saved["threshold"] == threshold
    assert saved["seed"] == 0 and saved["text_input"] == INPUT and saved["model"] == MODEL["fusion"]
    assert saved["feature_map"] == [2, 2]
    for name in ("text_to_normal", "image_blank"):
        assert set(saved[name]) == {"image", "study"}
        for level, n in (("image", saved["test"]["images"]), ("study", saved["test"]["studies"])):
            change = saved[name][level]
            assert set(change) == {"n", "mean_change", "mean_abs_change", "flip_fraction"}
            assert change["n"] == n and 0 <= change["flip_fraction"] <= 1
            assert abs(change["mean_change"]) <= change["mean_abs_change"] <= 1

    # the selection: per outcome min(per_outcome, studies with that outcome), as evaluate scored
    studies = _evaluated("fusion")
    called, actual = studies["probability"] >= threshold, studies["label"] == 1
    counts = {"true_positive": (actual & called).sum(), "true_negative": (~actual & ~called).sum(),
              "false_positive": (~actual & called).sum(),
              "false_negative": (actual & ~called).sum()}
    shown = pd.read_csv("metrics/explain/heatmaps.csv")
    expected_files = []
    for outcome in OUTCOMES:
        k = min(2, counts[outcome])
        expected_files += [f"{outcome}_{i}.png" for i in range(1, k + 1)]
        assert (shown["outcome"] == outcome).sum() == k
    assert shown["file"].tolist() == expected_files and saved["heatmaps"] == len(expected_files)
    assert shown["uid"].is_unique
    evaluated = pd.read_csv(RUNS["fusion"].predictions).set_index("filename")
    assert (shown["probability"].to_numpy()
            == evaluated.loc[shown["filename"], "probability"].to_numpy()).all()
    files = sorted(f.name for f in Path("metrics/explain").iterdir())
    assert files == sorted(expected_files + ["grid.png", "heatmaps.csv"])
    for name in expected_files + ["grid.png"]:
        with Image.open(Path("metrics/explain") / name) as image:
            image.load()
            assert image.format == "PNG" and image.width > 300 and image.height > 200

    from cxrfusion.params import validate

    p.explain.variant = "text"  # no image branch to explain: refused before any work
    with pytest.raises(PipelineError, match=r"explain\.variant='text' is not allowed: use one of "
                                            "fusion, image"):
        validate(p)
