"""The study's options beyond the original (issue 18): fusion heads (model.fusion), a CNN
learning rate of its own (train.lr_backbone), augmentation in training (train.augment) and an
image size that follows the backbone (image.size auto). Each default must leave the original
untouched, byte for byte."""
from __future__ import annotations

import copy
import math
from dataclasses import fields, replace

import pytest
import torch
import torch.nn as nn
from conftest import built_project, first_run, interrupt_training_at

import cxrfusion.training as train_module
from cxrfusion import checkpoint, params
from cxrfusion.common import PipelineError
from cxrfusion.model import Classifier, load_model, model_config
from cxrfusion.params import as_dict, recipe, validate
from cxrfusion.training import adam, scheduler

BACKBONE = "test_efficientnet"  # timm's 100 k-parameter EfficientNet: builds in milliseconds
TEXT = 24                       # report-vector width


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(q.numel() for q in module.parameters())


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def head(n_in: int, hidden: int = 256) -> int:
    return linear(n_in, hidden) + linear(hidden, 2)


def projected(n_in: int, d: int) -> int:
    return linear(n_in, d) + 2 * d  # Linear, then LayerNorm's weight and bias


@pytest.fixture(scope="module")
def width() -> int:
    return Classifier("image", 0, BACKBONE).cnn.num_features


# --- fusion heads ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["concat", "projector", "gated"])
@pytest.mark.parametrize("variant", ["fusion", "image", "text"])
def test_parameter_counts_by_hand(variant, fusion, width):
    d = 32
    model = Classifier(variant, TEXT, BACKBONE, fusion=fusion, shared_dim=d)
    image, text = variant in ("fusion", "image"), variant in ("fusion", "text")
    if fusion == "concat":
        expected = head(width * image + TEXT * text)
    else:
        expected = projected(width, d) * image + projected(TEXT, d) * text
        gated = fusion == "gated" and image and text
        expected += linear(2 * d, d) + head(d) if gated else head(d * (image + text))
    assert count(model) - count(model.cnn) == expected
    # the one-modality models read it through the same projector as fusion does
    if fusion != "concat" and variant != "fusion":
        assert not hasattr(model, "gate")


def test_concat_is_the_original_head(width):
    """The default builds exactly the original's parts: no projector, no gate, the same keys."""
    model = Classifier("fusion", TEXT, BACKBONE)
    keys = {k for k in model.state_dict() if not k.startswith("cnn.")}
    assert keys == {"head.0.weight", "head.0.bias", "head.3.weight", "head.3.bias",
                    "text_mean", "text_scale"}
    assert model.head[0].in_features == width + TEXT


def test_gated_fusion_weighs_report_and_image_by_a_gate():
    torch.manual_seed(0)
    model = Classifier("fusion", TEXT, BACKBONE, fusion="gated", shared_dim=16).eval()
    image = torch.randn(5, 3, 32, 32)
    text = torch.randn(5, TEXT)
    with torch.no_grad():
        logits, weight = model(image, text, report_weight=True)
        assert torch.equal(logits, model(image, text))
        pi = model.image_projector(model.cnn(image))
        pt = model.text_projector(text)
        z = torch.sigmoid(model.gate(torch.cat([pi, pt], 1)))
        assert torch.allclose(logits, model.head(z * pi + (1 - z) * pt), atol=1e-6)
        assert torch.allclose(weight, (1 - z).mean(1), atol=1e-7)
    assert weight.shape == (5,) and ((0 < weight) & (weight < 1)).all()
    assert weight.std() > 0, "a per-study gate, not one constant"
    with pytest.raises(ValueError, match="no gate"):
        Classifier("fusion", TEXT, BACKBONE, fusion="projector")(image, text, report_weight=True)


@pytest.mark.parametrize("fusion", ["projector", "gated"])
def test_fusion_heads_save_and_load(tmp_path, fusion):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = Classifier("fusion", TEXT, BACKBONE, fusion=fusion, shared_dim=16).eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    config = model_config(model, TEXT, BACKBONE, 32, image_fit="pad")
    assert (config["fusion"], config["shared_dim"]) == (fusion, 16)
    (tmp_path / "model.json").write_text(__import__("json").dumps(config))
    loaded, _ = load_model(tmp_path)
    image, text = torch.randn(3, 3, 32, 32), torch.randn(3, TEXT)
    with torch.no_grad():
        assert torch.equal(loaded(image, text), model(image, text))


# --- a learning rate for the CNN ------------------------------------------------------------------

def test_one_learning_rate_by_default_in_the_original_order():
    model = Classifier("fusion", TEXT, BACKBONE)
    optimizer = adam(model, 0.003, None)
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == 0.003
    assert ([id(q) for q in optimizer.param_groups[0]["params"]]
            == [id(q) for q in model.parameters()])


def test_backbone_learning_rate_is_its_own_group():
    model = Classifier("fusion", TEXT, BACKBONE, fusion="gated", shared_dim=8)
    optimizer = adam(model, 0.003, 1e-4)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == 1e-4 and groups["head"]["lr"] == 0.003
    assert {id(q) for q in groups["backbone"]["params"]} == {id(q) for q in model.cnn.parameters()}
    rest = {id(q) for q in model.parameters()} - {id(q) for q in model.cnn.parameters()}
    assert {id(q) for q in groups["head"]["params"]} == rest  # head, projectors and gate
    model.cnn.requires_grad_(False)  # model.freeze_backbone: nothing of the CNN to optimise
    assert [g["name"] for g in adam(model, 0.003, 1e-4).param_groups] == ["head"]
    # the text model has no CNN: one learning rate
    assert len(adam(Classifier("text", TEXT, BACKBONE), 0.003, 1e-4).param_groups) == 1


def _weights(run) -> bytes:
    return (run.models / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny project's data and caches, built once for the training tests below, which
    train with timm's 100 k-parameter EfficientNet (fine-tuned: the backbone's learning rate
    has something to act on) for seconds, not minutes."""
    folder = tmp_path_factory.mktemp("options")
    return folder, built_project(folder, {"model": {"backbone": BACKBONE}, "train": {"epochs": 1}})


@pytest.fixture
def project(built, monkeypatch) -> params.Params:
    """A fresh copy of the built project's parameters, in its folder (each test trains the
    runs it reads)."""
    folder, p = built
    monkeypatch.chdir(folder)
    return copy.deepcopy(p)


def _changed(p, section: str, **values):
    """A copy of the parameters `p` with `values` in `section`."""
    changed = copy.deepcopy(p)
    setattr(changed, section, replace(getattr(p, section), **values))
    return changed


def test_defaults_train_the_same_weights_as_the_options_switched_off(project):
    """Two groups at the same rate, and augmentation that moves nothing, train byte for byte the
    weights of the defaults: neither changes the order of the updates or draws from the
    shuffling and dropout streams. A real backbone rate and real augmentation change them."""
    cached = project
    run = first_run("fusion", cached)
    train_module.train(run, cached)
    default = _weights(run)

    train_module.train(run, _changed(cached, "train", lr_backbone=cached.train.lr))
    assert _weights(run) == default
    train_module.train(run, _changed(cached, "train", lr_backbone=1e-5))
    assert _weights(run) != default

    still = _changed(cached, "augment", **{f.name: 0.0 for f in fields(cached.augment)})
    train_module.train(run, _changed(still, "train", augment="affine+jitter"))
    assert _weights(run) == default
    train_module.train(run, _changed(cached, "train", augment="affine"))
    assert _weights(run) != default


def test_augmented_and_two_rate_training_resumes_to_the_same_weights(project, monkeypatch):
    """The checkpoint keeps the augmentation's random stream, both learning-rate groups and,
    under train.recipe study, AdamW's state and the schedule's."""
    cached = project
    cached.train = replace(cached.train, epochs=2, select="last", augment="affine+jitter",
                           lr_backbone=3e-4, recipe="study")
    run = first_run("fusion", cached)
    train_module.train(run, cached)
    expected = _weights(run)

    real_epoch = interrupt_training_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(run, cached)
    state = torch.load(checkpoint.path(run), weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [3e-4, 0.003]
    assert "augment" in state["random"][0]
    assert state["schedule"]["last_epoch"] == 1  # one epoch done: the warmup's
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    train_module.train(run, cached)
    assert _weights(run) == expected


# --- the gate's weights for the test studies ------------------------------------------------------

def test_evaluate_saves_the_gate_weight_of_every_test_image(project):
    import pandas as pd

    from stages.evaluate import evaluate

    cached = project
    cached.model = replace(cached.model, fusion="gated", shared_dim=16)
    run = first_run("fusion", cached)
    train_module.train(run, cached)
    result = evaluate(run, cached)
    images = pd.read_csv(run.predictions)
    assert images["report_weight"].between(0, 1).all() and images["report_weight"].notna().all()
    studies = images.groupby("uid")["report_weight"].mean()
    assert result["report_weight"]["studies"]["mean"] == pytest.approx(studies.mean())
    abnormal = images.groupby("uid")["label"].first() == 1
    assert result["report_weight"]["abnormal"]["mean"] == pytest.approx(studies[abnormal].mean())
    # no gate, no column
    image_run = first_run("image", cached)
    train_module.train(image_run, cached)
    assert "report_weight" not in evaluate(image_run, cached)
    assert "report_weight" not in pd.read_csv(image_run.predictions)


# --- image.size auto ------------------------------------------------------------------------------

def test_image_size_auto_follows_the_backbone():
    p = params.defaults()
    p["image"]["size"] = "auto"
    assert params.resolve(p)["image"]["size"] == 106  # tinynet_e.in1k's default input
    p["model"]["backbone"] = "efficientnet_b1.ra4_e3600_r240_in1k"
    assert params.resolve(p)["image"]["size"] == 240
    assert p["image"]["size"] == "auto", "resolve returns new parameters"
    p["model"]["backbone"] = "tf_efficientnet_b7.ns_jft_in1k"
    assert params.resolve(p)["image"]["size"] == 600
    p["model"]["backbone"] = "efficientnet_b1.no_such_tag"
    with pytest.raises(PipelineError, match="image.size=auto"):
        params.resolve(p)


def test_params_yaml_auto_is_resolved_when_loaded(tmp_path):
    import yaml

    p = params.defaults()
    p["image"]["size"] = "auto"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert params.load(tmp_path / "params.yaml").image.size == 106


@pytest.mark.parametrize("dotted, value", [
    ("image.size", "big"), ("image.size", 20), ("image.size", 48.5),
    ("model.fusion", "sum"), ("model.shared_dim", 0), ("train.lr_backbone", 0),
    ("train.lr_backbone", "small"), ("train.augment", "random"), ("augment.rotation", -5),
    ("augment.translate", 0.5), ("augment.scale", 1.0), ("augment.flip", 1.5),
    ("augment.contrast", -0.1)])
def test_bad_option_values_are_refused_by_name(dotted, value):
    p = params.defaults()
    section, key = dotted.split(".")
    p[section][key] = value
    with pytest.raises(PipelineError, match=rf"parameter {dotted}="):
        params.validate(p)


# --- train.recipe ----------------------------------------------------------------------------

def test_a_recipe_fills_the_options_left_null(params):
    t = params.train
    assert t.recipe == "original" and t.optimizer is None and t.augment is None
    assert recipe(t, False) == {"optimizer": "adam", "weight_decay": 0.0,
                                "schedule": "constant", "warmup_epochs": 0, "augment": "none",
                                "lr_backbone": None}
    study = replace(t, recipe="study")
    assert recipe(study, False) == {"optimizer": "adamw", "weight_decay": 0.05,
                                    "schedule": "cosine", "warmup_epochs": 1,
                                    "augment": "affine", "lr_backbone": None}  # no pretrained CNN
    assert recipe(study, True)["lr_backbone"] == pytest.approx(t.lr / 10)
    # an option set wins over the recipe
    assert recipe(replace(study, augment="none", weight_decay=0.0, lr_backbone=1e-4),
                  True) == {**recipe(study, True), "augment": "none", "weight_decay": 0.0,
                            "lr_backbone": 1e-4}


def test_the_study_schedule_warms_up_then_decays(params):
    params.train = replace(params.train, recipe="study", epochs=5)
    model = Classifier("text", TEXT, BACKBONE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    schedule = scheduler(optimizer, params)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # (no gradients: nothing moves) before the schedule's step, as torch asks
        schedule.step()
    # warmup: epoch 1 at 1/2; then half a cosine over the 4 epochs left: 1, 0.854, 0.5, 0.146
    assert rates == pytest.approx([0.005, 0.01, 0.01 * (1 + math.cos(math.pi / 4)) / 2, 0.005,
                                   0.01 * (1 + math.cos(3 * math.pi / 4)) / 2])
    params.train = replace(params.train, recipe="original")
    assert scheduler(optimizer, params) is None  # a constant rate: no scheduler at all


def test_a_warmup_as_long_as_training_is_refused(params):
    raw = as_dict(params)
    raw["train"].update(recipe="study", epochs=1)
    with pytest.raises(PipelineError, match=r"train.warmup_epochs=None .*fewer warmup epochs "
                                            r"than train.epochs=1 \(train.recipe=study"):
        validate(raw)
