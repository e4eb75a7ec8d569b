"""Frozen image encoders (stage embed_images) and the arms that read their vectors: the encoder
read as the hub's would be (a DINOv2 built here from a config, with its image processor), the
pooling by hand, the cache refused when another encoder made it, the parameters' rules."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import first_run, tiny

from cxrfusion import image_encoder
from cxrfusion.common import PipelineError
from cxrfusion.demo_encoder import build_image
from cxrfusion.formats import IMAGES, frozen_cache, read_frozen_cache
from cxrfusion.params import PAIRS, VARIANTS, built, validate

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


@pytest.mark.parametrize("encoders, read, message", [
    ({"rad-dino": {"model": "microsoft/rad-dino", **SETTINGS}}, "rad-dino", "alias 'rad-dino'"),
    ({"dino": {"model": "m", "pooling": "mean"}}, "dino", "give exactly model, revision"),
    ({"dino": {"model": "m", **SETTINGS, "pooling": "max"}}, "dino", "use one of cls, mean"),
    ({"dino": {"model": "m", **SETTINGS}}, "raddino", "frozen_image.read"),
])
def test_the_encoders_are_checked_before_anything_runs(encoders, read, message):
    p = tiny({"frozen_image": {"encoders": encoders, "read": read}})
    with pytest.raises(PipelineError, match=message):
        validate(p)


def test_the_frozen_arms_are_networks_with_their_declared_rows():
    assert VARIANTS["image_frozen"].frozen_image and not VARIANTS["image_frozen"].cnn
    assert VARIANTS["fusion_frozen"].reads_report and VARIANTS["fusion"].cnn
    assert ("fusion_frozen", "image_frozen") in PAIRS
    assert "fusion_frozen-image_frozen/indication" in built(tiny()).compare.secondary


def test_the_cache_holds_a_vector_for_every_image_every_arm_reads(cached):
    p = cached
    filenames, vectors, attrs = read_frozen_cache(frozen_cache(p.frozen_image.read))
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
    for variant in ("image_frozen", "fusion_frozen"):
        run = first_run(variant, p)
        train(run, p)
        model, config = load_model(run.models)
        assert model.cnn is None and model.frozen
        assert config["image_encoder"]["alias"] == p.frozen_image.read
        assert config["arguments"]["image_dim"] == p.demo_image_encoder.hidden_size
        metrics = evaluate(run, p)
        assert 0 <= metrics["study"]["auroc"] <= 1
    # another encoder's vectors under the same alias: refused, not read as this one's
    with h5py.File(frozen_cache(p.frozen_image.read), "r+") as f:
        f.attrs["fingerprint"] = "sha256:another"
    with pytest.raises(PipelineError, match="not made by the encoder the model was trained on"):
        evaluate(first_run("image_frozen", p), p)


def test_the_documented_command_adds_an_encoder_that_passes_every_rule(tmp_path):
    """docs/real-study.md's `dvc exp run` for RAD-DINO, applied by DVC's own parser of -S."""
    import shlex
    import shutil

    import yaml
    from conftest import ROOT
    from dvc.utils.hydra import apply_overrides

    blocks = (ROOT / "docs/real-study.md").read_text().split("```bash\n")[1:]
    block = next(b.split("```")[0] for b in blocks if "frozen_image.read=" in b)
    command = next(line for line in block.replace("\\\n", " ").splitlines()
                   if line.startswith("dvc exp run"))
    words = shlex.split(command)
    settings = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", settings)
    p = built(validate(yaml.safe_load((tmp_path / "params.yaml").read_text())))
    assert p.frozen_image.read == "raddino"
    assert set(p.frozen_image.encoders) == {"demo_vit", "raddino"}  # added, none replaced
    assert p.frozen_image.encoders["raddino"]["model"] == "microsoft/rad-dino"


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


def test_adding_an_encoder_embeds_it_and_reruns_nothing_else(tmp_path):
    """Another entry in frozen_image.encoders is one new stage, embed_images@<alias>, and every
    other stage reads what it read; `read` changed to it reruns the frozen arms only."""
    import shutil

    import yaml
    from conftest import ROOT
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    before = _stages(tmp_path)
    p["frozen_image"]["encoders"]["other"] = {"model": "microsoft/rad-dino", **SETTINGS}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    added = _stages(tmp_path)
    assert set(added) - set(before) == {"embed_images@other"}
    assert {name for name in before if added[name] != before[name]} == set()
    p["frozen_image"]["read"] = "other"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    read = _stages(tmp_path)
    changed = {name.partition("@")[0] for name in before if read[name] != before[name]}
    assert changed == {"tune_image_frozen", "tune_fusion_frozen", "train_image_frozen",
                       "train_fusion_frozen"}


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

    assert Run.of("image_frozen", 1, "indication").stage == "train_image_frozen"
    assert Run.of("fusion_frozen", 1, "indication").stage == "train_fusion_frozen@indication"
    assert Run.of("fusion", 1, "indication").stage == "train_fusion@indication-1"
    every = network_runs(["fusion_frozen", "all", "indication"], params)
    assert every == [Run("fusion_frozen", s, "indication") for s in params.train.seeds]
    assert network_runs(["image_frozen", "1"], params) == [Run("image_frozen", 1)]
    with pytest.raises(PipelineError, match="seed 'al' is not one of train.seeds"):
        network_runs(["image_frozen", "al"], params)
