"""cxrfusion/model.py: the classifier's variants, sizes, input normalisation, backbone errors, \
saving."""
from __future__ import annotations

import copy
import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cxrfusion.common import PipelineError
from cxrfusion.model import (
    Classifier,
    create_backbone,
    freeze_backbone,
    load_model,
    normalise,
    trainable_parameters,
)

HEAD_768 = (768 * 256 + 256) + (256 * 2 + 2)


@pytest.fixture(scope="module")
def models() -> dict:
    """One untrained model per variant (text_dim 768, as with BioBERT), in eval mode."""
    torch.manual_seed(0)
    return {v: Classifier(v, 768, "efficientnet_b1").eval() for v in ("fusion", "image", "text")}


def _images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, generator=g)


def _inputs(model: Classifier, batch: int, size: int):
    image = normalise(_images(batch, size), *model.input_stats())
    text = torch.randn(batch, 768, generator=torch.Generator().manual_seed(1))
    return image, text


# --- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64])
def test_fusion_logits_shape(models, size):
    model = models["fusion"]
    image, text = _inputs(model, 2, size)
    with torch.no_grad():
        logits = model(image, text)
    assert logits.shape == (2, 2)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_fusion_reads_both_inputs(models):
    model = models["fusion"]
    image, text = _inputs(model, 3, 32)
    other = normalise(_images(3, 32, seed=5), *model.input_stats())
    with torch.no_grad():
        base = model(image, text)
        assert not torch.allclose(base, model(image, text + 1.0))
        # a random-init CNN in eval mode barely separates images: compare exactly
        assert not torch.equal(model.cnn(image), model.cnn(other))
        assert not torch.equal(base, model(other, text))


@pytest.mark.parametrize("variant", ["fusion", "image", "text"])
def test_head_runs_in_float32_under_bf16_autocast(models, variant):
    """Under autocast the CNN runs in bf16 but the concatenation and the head's matmuls do not
    (autocast would run nn.Linear in bf16 whatever its input's dtype)."""
    model = models[variant]
    image, text = _inputs(model, 2, 32)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (inputs[0].dtype, output.dtype)
        return hook

    hooks = [model.head[0].register_forward_hook(record("hidden")),
             model.head[3].register_forward_hook(record("logits"))]
    if model.cnn is not None:
        hooks.append(model.cnn.conv_stem.register_forward_hook(record("cnn")))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(image if model.uses_image else None, text if model.uses_text else None)
    finally:
        for hook in hooks:
            hook.remove()
    if model.cnn is not None:
        assert seen["cnn"][1] == torch.bfloat16  # the autocast is real: the CNN ran in bf16
    assert seen["hidden"] == (torch.float32, torch.float32)
    assert seen["logits"] == (torch.float32, torch.float32)
    assert logits.dtype == torch.float32


def test_image_variant_ignores_text(models):
    model = models["image"]
    assert model.uses_image and not model.uses_text
    assert model.head[0].in_features == model.cnn.num_features == 1280
    image, text = _inputs(model, 2, 40)
    with torch.no_grad():
        without = model(image, None)
        assert without.shape == (2, 2)
        assert torch.equal(without, model(image, text))


def test_text_variant_has_no_cnn(models):
    model = models["text"]
    assert model.cnn is None
    assert model.uses_text and not model.uses_image
    assert model.head[0].in_features == 768
    text = torch.randn(4, 768)
    with torch.no_grad():
        logits = model(None, text)
    assert logits.shape == (4, 2)
    assert torch.equal(logits, model.head(text))
    # no backbone: the ImageNet statistics are the default
    assert model.input_stats() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_input_stats_come_from_the_backbone(models):
    cfg = models["fusion"].cnn.pretrained_cfg
    assert models["fusion"].input_stats() == (tuple(cfg["mean"]), tuple(cfg["std"]))


# --- sizes --------------------------------------------------------------------------------------

def test_trainable_parameters_with_frozen_backbone(models):
    counts = {}
    for variant, model in models.items():
        frozen = copy.deepcopy(model)
        freeze_backbone(frozen)
        counts[variant] = trainable_parameters(frozen)
    assert counts["fusion"] == 525_058                    # the original's number (BioBERT, 768)
    assert counts["fusion"] == ((1280 + 768) * 256 + 256) + (256 * 2 + 2)
    assert counts["image"] == (1280 * 256 + 256) + (256 * 2 + 2)
    assert counts["text"] == HEAD_768
    # freezing leaves the model it was not called on untouched
    assert trainable_parameters(models["image"]) == 6_513_184 + counts["image"]


def test_unfrozen_backbone_size():
    backbone = create_backbone("efficientnet_b1", False)
    assert sum(p.numel() for p in backbone.parameters()) == 6_513_184
    assert trainable_parameters(backbone) == 6_513_184
    assert backbone.num_features == 1280


# --- normalise ----------------------------------------------------------------------------------

def test_normalise_by_hand():
    images = torch.tensor([[[0, 255], [128, 51]]], dtype=torch.uint8)  # (1, 2, 2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = normalise(images, mean, std)
    assert x.shape == (1, 3, 2, 2)
    assert x.dtype == torch.float32
    assert images.dtype == torch.uint8 and images[0, 0, 1] == 255  # the input is not modified
    # pixel (0, 1) = 255 -> 1.0; channel 0: (1 - 0.485) / 0.229
    assert x[0, 0, 0, 1].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    # pixel (0, 0) = 0, channel 2: -0.406 / 0.225
    assert x[0, 2, 0, 0].item() == pytest.approx(-0.406 / 0.225, rel=1e-6)
    # pixel (1, 1) = 51 -> 0.2, channel 1: (0.2 - 0.456) / 0.224
    assert x[0, 1, 1, 1].item() == pytest.approx((0.2 - 0.456) / 0.224, rel=1e-5)
    # undoing each channel's statistics gives the same grey image three times
    for c in range(3):
        assert torch.allclose(x[0, c] * std[c] + mean[c], images[0].float() / 255, atol=1e-6)


def test_normalise_three_identical_channels():
    images = _images(2, 8)
    x = normalise(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (2, 3, 8, 8)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert torch.allclose(x[:, 0], (images.float() / 255 - 0.5) / 0.25, atol=1e-6)
    assert x.min() >= -2 - 1e-6 and x.max() <= 2 + 1e-6


# --- create_backbone errors ---------------------------------------------------------------------

def test_missing_weights_file_is_a_pipeline_error(tmp_path):
    missing = tmp_path / "no_such_weights.safetensors"
    with pytest.raises(PipelineError) as err:
        create_backbone("efficientnet_b1", str(missing))
    assert "image.pretrained" in str(err.value)
    assert str(missing) in str(err.value)


def test_unknown_backbone_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="model.backbone='no_such_net_b9'"):
        create_backbone("no_such_net_b9", False)


def test_hub_failure_is_a_pipeline_error(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PipelineError) as err:
        create_backbone("efficientnet_b1", True)
    message = str(err.value)
    assert "image.pretrained" in message
    assert "OSError" in message and "couldn't connect" in message


def test_weights_file_is_loaded(tmp_path):
    """image.pretrained=<path>: the offline route to ImageNet weights loads that file."""
    from safetensors.torch import save_file

    torch.manual_seed(123)
    source = create_backbone("efficientnet_b1", False)
    path = tmp_path / "b1.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    torch.manual_seed(456)  # a different random init, overwritten by the file
    loaded = create_backbone("efficientnet_b1", str(path))
    expected, got = source.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# --- saving and loading -------------------------------------------------------------------------

def test_load_model_missing_folder(workdir):
    with pytest.raises(PipelineError, match="model.safetensors not found"):
        load_model(workdir / "models" / "fusion")


def test_saved_model_reloads(cached):
    from conftest import first_run

    from cxrfusion.dataset import load_splits
    from cxrfusion.scoring import score
    from cxrfusion.training import train

    p = cached
    p.train = replace(p.train, epochs=3, select="last")
    run = first_run("text", p)
    result = train(run, p)
    folder = Path("models/text/findings+impression/seed-0")

    # safetensors: an 8-byte little-endian header length, then a JSON header (no pickle)
    raw = (folder / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert {"head.0.weight", "head.0.bias", "head.3.weight", "head.3.bias"} <= header.keys()
    assert header["head.0.weight"]["shape"] == [256, 16]   # the demo encoder's 16 dims
    assert header["head.3.weight"]["dtype"] == "F32"

    model, config = load_model(folder)
    assert not model.training
    assert config["variant"] == "text" and config["text_dim"] == 16
    assert config["hidden"] == 256 and config["dropout"] == pytest.approx(0.3)
    assert config["epoch"] == result["chosen"] == 3 and config["select"] == "last"
    assert config["seed"] == 0 and config["text_input"] == "findings+impression"
    assert config["arguments"] == {"variant": "text", "text_dim": 16, "backbone": p.model.backbone,
                                   "hidden": 256, "dropout": 0.3, "fusion": p.model.fusion,
                                   "shared_dim": p.model.shared_dim}

    # the reloaded weights reproduce the validation loss logged for the kept epoch
    splits, _ = load_splits(p, False, run.text_input)
    probs, loss = score(model, splits["val"], 8)
    assert loss == pytest.approx(result["history"][-1]["val"]["loss"], rel=1e-6)

    # and loading is deterministic (dropout off, no random init left)
    again, _ = load_model(folder)
    probs_again, _ = score(again, splits["val"], 8)
    assert (probs == probs_again).all()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


# model.json as training.save_model wrote it before it saved the Classifier's `arguments`
OLD_KEYS = {"image_size": 32, "image_fit": "pad", "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "epoch": 2, "select": "best_val_loss", "seed": 0}


@pytest.mark.parametrize(("variant", "fusion"), [("fusion", "concat"), ("fusion", "gated"),
                                                 ("image", "projector"), ("text", "concat"),
                                                 ("fusion", None)])
def test_a_model_saved_without_its_arguments_still_loads(tmp_path, variant, fusion):
    """A models/<run>/ folder written before model.json held `arguments`, made by hand: its
    variant, sizes and head rebuild it (fusion None: saved before model.fusion, concat)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = Classifier(variant, 0 if variant == "image" else 12, "test_efficientnet",
                       hidden=8, dropout=0.1, fusion=fusion or "concat", shared_dim=6).eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    config = {**OLD_KEYS, "variant": variant, "text_dim": 0 if variant == "image" else 12,
              "backbone": None if variant == "text" else "test_efficientnet", "hidden": 8,
              "dropout": 0.1, "fusion": fusion, "shared_dim": 6 if fusion not in (None, "concat")
              else None, "text_input": None if variant == "image" else "findings+impression"}
    if fusion is None:  # saved before model.fusion: neither key
        del config["fusion"], config["shared_dim"]
    (tmp_path / "model.json").write_text(json.dumps(config))

    loaded, read = load_model(tmp_path)
    assert read == config and not loaded.training
    assert loaded.fusion == (fusion or "concat")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    image = normalise(_images(3, 32), *model.input_stats()) if variant != "text" else None
    text = torch.randn(3, 12) if variant != "image" else None
    with torch.no_grad():
        assert torch.equal(loaded(image, text), model(image, text))


# --- report vectors standardised (model.standardise_text) -----------------------------------------

def test_standardised_report_vectors_match_a_hand_computation(tmp_path):
    """The head reads (vector - training mean) / training sd, a constant dimension as 0; the
    scaling is part of the saved weights, so a reloaded model scores the same."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = Classifier("text", 3, "efficientnet_b1").eval()
    train = torch.tensor([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0], [5.0, 20.0, 5.0]])
    model.standardise_text(train)
    # population sd; constant: 1
    mean, sd = [3.0, 20.0, 5.0], [(8 / 3) ** 0.5, (200 / 3) ** 0.5, 1.0]
    assert model.text_mean.tolist() == pytest.approx(mean)
    assert model.text_scale.tolist() == pytest.approx(sd)
    new = torch.tensor([[2.0, 40.0, 7.0]])
    by_hand = torch.tensor([[(2 - 3) / sd[0], (40 - 20) / sd[1], (7 - 5) / sd[2]]])
    with torch.no_grad():
        assert torch.allclose(model(None, new), model.head(by_hand), atol=1e-6)
        save_file(model.state_dict(), tmp_path / "w.safetensors")
        reloaded = Classifier("text", 3, "efficientnet_b1").eval()
        reloaded.load_state_dict(load_file(tmp_path / "w.safetensors"))
        assert torch.equal(reloaded(None, new), model(None, new))
    assert {"text_mean", "text_scale"} <= set(load_file(tmp_path / "w.safetensors"))


@pytest.mark.parametrize("standardise", [True, False])
def test_training_fits_the_scaling_on_training_studies_once_each(standardise):
    """build() fits the scaling on the training split, one row a study (a study's images share
    its report vector: a study with more images must not weigh more); false keeps raw vectors."""
    import pandas as pd

    from cxrfusion.dataset import Split
    from cxrfusion.distributed import World
    from cxrfusion.formats import Run
    from cxrfusion.params import Params
    from cxrfusion.training import build

    rows = pd.DataFrame({"uid": [1, 1, 1, 2], "filename": list("abcd"), "view": "Frontal",
                         "label": [1, 1, 1, 0], "split": "train"})
    text = torch.tensor([[4.0, 1.0]] * 3 + [[0.0, 3.0]])
    p = Params()
    p.model.standardise_text = standardise
    train_set = Split(rows, None, text, torch.tensor(rows["label"]))
    model, _, _ = build(Run("text", 0, "indication"), p, train_set, World())
    if standardise:  # studies 1 and 2: mean (2, 2), sd (2, 1); per image it would be (3, 1.5)
        assert model.text_mean.tolist() == [2.0, 2.0] and model.text_scale.tolist() == [2.0, 1.0]
    else:
        assert model.text_mean.tolist() == [0.0, 0.0] and model.text_scale.tolist() == [1.0, 1.0]
