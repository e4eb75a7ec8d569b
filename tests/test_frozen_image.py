"""Frozen image encoders (stage embed_images) and the arms that read their vectors: the encoder
read as the hub's would be (a DINOv2 built here from a config, with its image processor), the
pooling by hand, the cache refused when another encoder made it, the parameters' rules."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import first_run, tiny

from cxrfusion import formats, image_encoder
from cxrfusion.common import PipelineError
from cxrfusion.demo_encoder import build_image
from cxrfusion.formats import DEMO_IMAGE_ENCODER, IMAGES, frozen_cache, read_frozen_cache
from cxrfusion.params import (
    PAIRS,
    VARIANTS,
    Comparison,
    Params,
    arms,
    built,
    pair_order,
    pairs,
    validate,
)

SETTINGS = {"revision": None, "pooling": "mean", "trust_remote_code": False}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit") / "vit"
    build_image(folder, image_size=32, patch_size=8, hidden_size=16, layers=1, heads=2, seed=0)
    return folder


def test_the_encoder_is_read_with_its_own_processor_and_pooled_as_declared(tiny_vit):
    encoder = image_encoder.load({"model": str(tiny_vit), **SETTINGS}, torch.device("cpu"))
    assert encoder.size == 32  # the processor's crop, not image.size
    assert encoder.mean == pytest.approx((0.485, 0.456, 0.406))
    assert encoder.prefix_tokens == 1 and encoder.fingerprint.startswith("sha256:")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(5)]
    by_mean = image_encoder.embed(iter(images), 5, encoder, "mean", 2, torch.device("cpu"), False)
    by_cls = image_encoder.embed(iter(images), 5, encoder, "cls", 3, torch.device("cpu"), False)
    assert by_mean.shape == by_cls.shape == (5, 16) and by_mean.dtype == np.float32
    # by hand: the model's last layer, gray copied to 3 channels, normalised by its mean and sd
    x = torch.from_numpy(np.stack(images)).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    x = (x - torch.tensor(encoder.mean).view(1, 3, 1, 1)) / torch.tensor(encoder.std).view(
        1, 3, 1, 1)
    with torch.no_grad():
        tokens = encoder.model(pixel_values=x).last_hidden_state
    assert tokens.shape[1] == 1 + (32 // 8) ** 2
    np.testing.assert_allclose(by_cls, tokens[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(by_mean, tokens[:, 1:].mean(1).numpy(), atol=1e-5)
    # the batch size changes no vector beyond rounding
    again = image_encoder.embed(iter(images), 5, encoder, "mean", 5, torch.device("cpu"), False)
    np.testing.assert_allclose(again, by_mean, atol=1e-5)


def test_pooling_skips_the_prefix_tokens_and_a_cnn_has_no_cls():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    assert torch.equal(image_encoder.pooled(tokens, "cls", 1), tokens[:, 0])
    assert torch.equal(image_encoder.pooled(tokens, "mean", 2), tokens[:, 2:].mean(1))
    feature_map = torch.ones(2, 5, 3, 3)
    assert image_encoder.pooled(feature_map, "mean", 0).shape == (2, 5)
    with pytest.raises(PipelineError, match="no CLS token"):
        image_encoder.pooled(feature_map, "cls", 0)


def test_a_missing_encoder_stops_with_how_to_get_it(tmp_path):
    with pytest.raises(PipelineError, match="huggingface-cli download"):
        image_encoder.load({"model": str(tmp_path / "absent"), **SETTINGS}, torch.device("cpu"))


@pytest.mark.parametrize("override, message", [
    ({"frozen_image": {"encoders": {"rad-dino": {"model": "microsoft/rad-dino", **SETTINGS}}}},
     "alias 'rad-dino'"),
    ({"frozen_image": {"encoders": {"dino": {"model": "m", "pooling": "mean"}}}},
     "give exactly model, revision"),
    ({"frozen_image": {"encoders": {"dino": {"model": "m", **SETTINGS, "pooling": "max"}}}},
     "use one of cls, mean"),
    ({"text": {"encoders": {"large": {"model": "m", **SETTINGS}}}}, "give exactly model, "
     "revision, pooling, prompt"),
    ({"frozen_image": {"read": "demo_vit"}}, "frozen_image.read was replaced"),
    # a declared comparison of an encoder the study does not train
    ({"compare": {"encoders": ["fusion_frozen@raddino-image_frozen@raddino/indication"]}},
     "names an arm on an encoder this study does not train"),
    ({"compare": {"encoders": ["fusion@large-fusion/indication"]}},
     "names an arm on an encoder this study does not train"),
    ({"explain": {"variant": "fusion@large"}}, "its encoder alias is not one of text.encoders"),
])
def test_the_encoders_are_checked_before_anything_runs(override, message):
    with pytest.raises(PipelineError, match=message):
        validate(tiny(override))


def test_the_frozen_arms_are_networks_with_their_declared_rows():
    assert VARIANTS["image_frozen"].frozen_image and not VARIANTS["image_frozen"].cnn
    assert VARIANTS["fusion_frozen"].reads_report and VARIANTS["fusion"].cnn
    assert ("fusion_frozen", "image_frozen") in PAIRS
    assert ("fusion_frozen@demo_vit-image_frozen@demo_vit/indication"
            in built(tiny()).compare.encoders)


def test_each_arm_multiplies_by_the_encoders_it_reads():
    """Fusion, its placebo and text-only once per text encoder (the default's plain names
    kept); the frozen arms once per image encoder, always named; the image model and TF-IDF
    once. The pairs: PAIRS on each encoder, then each arm against itself on the first."""
    p = built(tiny({"text": {"encoders": {"large": {"model": "m", **SETTINGS, "prompt": None}}},
                    "frozen_image": {"encoders": {"other": {"model": "m", **SETTINGS}}}}))
    assert arms(p) == ["fusion", "fusion@large", "image", "text", "text@large", "tfidf",
                       "shuffled", "shuffled@large", "image_frozen@demo_vit",
                       "image_frozen@other", "fusion_frozen@demo_vit", "fusion_frozen@other"]
    found = pairs(p)
    assert len(found) == len(set(found))
    for pair in [("fusion@large", "image"), ("fusion@large", "shuffled@large"),
                 ("text@large", "tfidf"), ("fusion_frozen@other", "image_frozen@other"),
                 ("fusion", "fusion_frozen@other"), ("fusion@large", "fusion"),
                 ("text@large", "text"), ("image_frozen@other", "image_frozen@demo_vit")]:
        assert pair in found
    assert ("shuffled@large", "shuffled") not in found  # the placebo is read against fusion
    # the tables' order: grouped by encoder (none, then each alias), PAIRS' order in each
    shown = sorted(Comparison.of_input("indication", p), key=pair_order)
    groups = [next((a for a in ("demo_vit", "large", "other") if a in c.name), "") for c in shown]
    assert groups == sorted(groups) and shown[0].summary_key == "fusion-image"
    assert [c.summary_key for c in shown if "large" in c.name][:2] == [
        "fusion@large-image", "fusion@large-text@large"]
    assert not any("@large" in a and "frozen" in b for a, b in found)  # frozen: default text
    assert Comparison.parse("fusion@large-fusion/indication").key == "fusion@large_minus_fusion"
    assert Comparison.from_key("fusion@large_minus_fusion", "x") == Comparison(
        "fusion@large", "fusion", "x")
    with pytest.raises(ValueError, match="not a comparison"):
        Comparison.parse("fusion@large-image_frozen@other/indication")
    runs = {run.path: run.stage for run in formats.runs(p) if run.seed in (0, None)}
    assert runs["fusion@large/indication/seed-0"] == "train_fusion_by@large-indication-0"
    assert runs["shuffled@large/indication/seed-0"] == "train_fusion_by@large-indication-0"
    assert runs["image_frozen@other/seed-0"] == "train_image_frozen@other"
    assert runs["fusion/indication/seed-0"] == "train_fusion@indication-0"  # as before
    assert formats.text_cache("indication", True, "large").name == "indication@large.shuffled.h5"


def test_another_text_and_image_encoder_train_their_arms_on_their_own_vectors(cached):
    """text.encoders' alias: its own cache, read by its own arms, recorded as its encoder's;
    a second frozen_image.encoders alias likewise (the demo encoders, read otherwise)."""
    from cxrfusion.formats import read_text_cache_attrs, text_cache
    from cxrfusion.model import load_model
    from cxrfusion.training import train
    from cxrfusion.tuning import tune
    from stages.embed_images import embed_images
    from stages.embed_text import embed_text
    from stages.evaluate import evaluate

    p = cached
    p.text.encoders = {"second": {"model": p.text.model, "revision": None, "pooling": "cls",
                                  "prompt": "Report:", "trust_remote_code": False}}
    p.frozen_image.encoders = {**p.frozen_image.encoders,
                               "second_vit": {"model": str(DEMO_IMAGE_ENCODER), **SETTINGS,
                                              "pooling": "cls"}}
    validate(p)
    text_input = p.text.inputs[0]
    embed_text(text_input, p, "second")
    embed_images("second_vit", p)
    attrs = read_text_cache_attrs(text_cache(text_input, alias="second"))
    assert attrs["pooling"] == "cls" and attrs["prompt"] == "Report:"
    default = read_text_cache_attrs(text_cache(text_input))
    assert default["pooling"] == p.text.pooling and default["fingerprint"] == attrs["fingerprint"]
    assert read_frozen_cache(frozen_cache("second_vit"))[2]["pooling"] == "cls"
    for variant in ("text@second", "image_frozen@second_vit"):
        run = first_run(variant, p)
        tune(run, p)
        train(run, p)
        model, config = load_model(run.models)
        assert 0 <= evaluate(run, p)["study"]["auroc"] <= 1
    assert config["image_encoder"]["alias"] == "second_vit"
    record = json.loads((first_run("text@second", p).models / "params.json").read_text())
    assert record["text"]["encoder"] == "second" and record["text"]["prompt"] == "Report:"
    assert record["text"]["vectors"].endswith(f"{text_input}@second.h5")
    with pytest.raises(PipelineError, match="not an alias of text.encoders"):
        embed_text(text_input, p, "absent")


def test_the_cache_holds_a_vector_for_every_image_every_arm_reads(cached):
    p = cached
    filenames, vectors, attrs = read_frozen_cache(frozen_cache("demo_vit"))
    import pandas as pd

    assert sorted(filenames) == sorted(pd.read_csv(IMAGES)["filename"])
    assert vectors.shape == (len(filenames), p.demo_image_encoder.hidden_size)
    assert np.isfinite(vectors).all() and vectors.std(0).min() > 0
    assert attrs["size"] == p.demo_image_encoder.image_size and attrs["fit"] == p.image.fit


def test_a_frozen_arm_trains_on_the_vectors_and_refuses_another_encoders_cache(cached):
    from cxrfusion.model import load_model
    from cxrfusion.training import train
    from stages.evaluate import evaluate

    p = cached
    for variant in ("image_frozen@demo_vit", "fusion_frozen@demo_vit"):
        run = first_run(variant, p)
        train(run, p)
        model, config = load_model(run.models)
        assert model.cnn is None and model.frozen
        assert config["image_encoder"]["alias"] == "demo_vit"
        assert config["arguments"]["image_dim"] == p.demo_image_encoder.hidden_size
        metrics = evaluate(run, p)
        assert 0 <= metrics["study"]["auroc"] <= 1
    # another encoder's vectors under the same alias: refused, not read as this one's
    with h5py.File(frozen_cache("demo_vit"), "r+") as f:
        f.attrs["fingerprint"] = "sha256:another"
    with pytest.raises(PipelineError, match="not made by the encoder the model was trained on"):
        evaluate(first_run("image_frozen@demo_vit", p), p)


def _documented(tmp_path, marker: str) -> Params:
    """docs/real-study.md's `dvc exp run` holding `marker`, applied to params.yaml by DVC's own
    parser of -S, then checked by every rule."""
    import shlex
    import shutil

    import yaml
    from conftest import ROOT
    from dvc.utils.hydra import apply_overrides

    blocks = (ROOT / "docs/real-study.md").read_text().split("```bash\n")[1:]
    block = next(b.split("```")[0] for b in blocks if marker in b)
    command = next(line for line in block.replace("\\\n", " ").splitlines()
                   if line.startswith("dvc exp run"))
    words = shlex.split(command)
    settings = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", settings)
    return built(validate(yaml.safe_load((tmp_path / "params.yaml").read_text())))


def test_the_documented_commands_add_encoders_that_pass_every_rule(tmp_path):
    p = _documented(tmp_path, "frozen_image.encoders.raddino")
    assert set(p.frozen_image.encoders) == {"raddino"}  # in place of the demo's
    assert p.frozen_image.encoders["raddino"]["model"] == "microsoft/rad-dino"
    assert "fusion_frozen@raddino-image_frozen@raddino/indication" in p.compare.encoders
    p = _documented(tmp_path, "text.encoders.biobert_large")
    assert list(p.text.encoders) == ["biobert_large"] and p.text.model == built(tiny()).text.model
    assert "fusion@biobert_large-fusion/indication" in p.compare.encoders


def test_explain_refuses_a_frozen_arm_with_the_reason():
    with pytest.raises(PipelineError, match="a frozen arm has none"):
        validate(tiny({"explain": {"variant": "image_frozen"}}))


def _stages(folder) -> dict:
    """Each stage of the pipeline in `folder` as DVC resolves it: its command, its file deps,
    outs, and the values of the parameters it reads."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(folder)) as repo:
        out = {}
        for stage in repo.index.stages:
            values = {}
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    values.update(dep.read_params())
            out[stage.addressing.rpartition(":")[2]] = (
                stage.cmd, sorted(str(d.def_path) for d in stage.deps
                                  if not isinstance(d, ParamsDependency)),
                sorted(str(o.def_path) for o in stage.outs), values)
        return out


@pytest.mark.parametrize("section, alias, settings, kinds", [
    ("frozen_image", "other", {"model": "microsoft/rad-dino", **SETTINGS},
     {"embed_images", "tune_image_frozen", "tune_fusion_frozen", "train_image_frozen",
      "train_fusion_frozen"}),
    ("text", "other", {"model": "dmis-lab/biobert-large-cased-v1.1", **SETTINGS, "prompt": None},
     {"embed_text_by", "shuffle_reports_by", "tune_fusion_by", "tune_text_by", "train_fusion_by",
      "train_text_by"}),
])
def test_adding_an_encoder_trains_its_arms_and_reruns_nothing_else(tmp_path, section, alias,
                                                                    settings, kinds):
    """Another entry in frozen_image.encoders (text.encoders) is new stages only, those of the
    arms that read it, one per text input and seed where the arm has them; every other stage
    reads what it read (DVC reruns a stage when its command, deps or params' values change)."""
    import shutil

    import yaml
    from conftest import ROOT
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    before = _stages(tmp_path)
    p[section]["encoders"][alias] = settings
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    added = _stages(tmp_path)
    new = set(added) - set(before)
    assert {name.partition("@")[0] for name in new} == kinds
    assert all(name.partition("@")[2].startswith(f"{alias}") for name in new)
    assert {name for name in before if added[name] != before[name]} == set()
    runs = formats.runs(built(p))
    assert {run.stage for run in runs if alias in run.variant} <= new  # each new run's stage
    assert len(new) == len({run.stage for run in runs if alias in run.variant}) + (
        # embedding, the placebo's reports and tuning: per input, or once an image encoder
        4 * len(p["text"]["inputs"]) if section == "text" else 2 + len(p["text"]["inputs"]))


@pytest.mark.parametrize("name, pooling, width", [("test_vit", "cls", 64),
                                                  ("test_vit", "mean", 64),
                                                  ("test_efficientnet", "mean", None)])
def test_a_timm_encoder_is_read_at_its_pretrained_input(monkeypatch, name, pooling, width):
    """timm:<name>: its pretrained config's input side, mean and sd; a ViT's tokens pooled as
    declared past its prefix tokens, a CNN's feature map averaged. The weights are timm's random
    ones here (no hub): the download is the only step the test leaves out."""
    import timm

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model",
                        lambda model, pretrained, num_classes: real(model, pretrained=False,
                                                                    num_classes=num_classes))
    encoder = image_encoder.load({"model": f"timm:{name}", **SETTINGS}, torch.device("cpu"))
    cfg = encoder.model.pretrained_cfg
    assert encoder.size == cfg["input_size"][-1] and encoder.mean == tuple(cfg["mean"])
    assert encoder.fingerprint.startswith(f"timm:{name}:")
    images = [np.full((encoder.size, encoder.size), 100 + 20 * k, np.uint8) for k in range(3)]
    vectors = image_encoder.embed(iter(images), 3, encoder, pooling, 2, torch.device("cpu"),
                                  False)
    assert vectors.shape == (3, width or encoder.model.num_features)
    x = image_encoder.pixels(np.stack(images), encoder, torch.device("cpu"))
    with torch.no_grad():
        features = encoder.model.forward_features(x)
    expected = (features.mean((2, 3)) if features.dim() == 4 else
                features[:, 0] if pooling == "cls" else features[:, 1:].mean(1))
    np.testing.assert_allclose(vectors, expected.numpy(), atol=1e-5)


def test_images_are_decoded_in_order_and_at_most_two_windows_ahead():
    from concurrent.futures import ThreadPoolExecutor

    from stages.embed_images import decoded

    started = []

    def decode(path):
        started.append(path)
        return path * 10

    with ThreadPoolExecutor(2) as pool:
        out = decoded(pool, decode, list(range(10)), window=3)
        assert next(out) == 0
        assert max(started) < 6  # the first two windows, no more
        assert [0, *out] == [k * 10 for k in range(10)]


def test_a_frozen_arm_trains_every_seed_in_one_stage(params):
    from cxrfusion.formats import Run, network_runs

    assert Run.of("image_frozen@demo_vit", 1, "indication").stage == \
        "train_image_frozen@demo_vit"
    assert Run.of("fusion_frozen@demo_vit", 1, "indication").stage == \
        "train_fusion_frozen@demo_vit-indication"
    assert Run.of("fusion", 1, "indication").stage == "train_fusion@indication-1"
    every = network_runs(["fusion_frozen@demo_vit", "all", "indication"], params)
    assert every == [Run("fusion_frozen@demo_vit", s, "indication") for s in params.train.seeds]
    assert network_runs(["image_frozen@demo_vit", "1"], params) == [
        Run("image_frozen@demo_vit", 1)]
    with pytest.raises(PipelineError, match="seed 'al' is not one of train.seeds"):
        network_runs(["image_frozen@demo_vit", "al"], params)
    with pytest.raises(PipelineError, match="must be an alias of frozen_image.encoders"):
        network_runs(["image_frozen", "1"], params)  # an image encoder is always named
    with pytest.raises(PipelineError, match="must be an alias of text.encoders"):
        network_runs(["fusion@absent", "1", "indication"], params)
