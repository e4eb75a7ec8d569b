"""The feature caches: features/text/<input>.h5 (frozen encoder, pooling, truncation) and
features/images.h5 (decoding, grayscale, resize, bad files)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrfusion import formats
from cxrfusion.common import PipelineError
from cxrfusion.formats import read_image_cache, read_text_cache, write_text_cache

CPU = torch.device("cpu")


# --- the text cache format --------------------------------------------------------------------

ATTRS = {"model": "models/demo_encoder", "pooling": "mean", "max_length": 512,
         "fields": "findings,impression", "revision": "None", "dim": 4}


def test_text_cache_round_trip(tmp_path):
    uids = np.array([7, 3, 12])
    vectors = np.random.default_rng(0).normal(size=(3, 4))
    path = tmp_path / "features" / "text" / "findings+impression.h5"
    write_text_cache(path, uids, vectors, ATTRS)
    got_uids, got_vectors, attrs = read_text_cache(path, expect=ATTRS)
    assert got_uids.dtype == np.int64 and got_uids.tolist() == [7, 3, 12]
    assert got_vectors.dtype == np.float32
    np.testing.assert_array_equal(got_vectors, vectors.astype(np.float32))
    assert attrs == ATTRS
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


def test_one_text_cache_per_input():
    assert formats.text_cache("findings+impression") == Path("features/text/findings+impression.h5")
    assert formats.text_cache("indication") == Path("features/text/indication.h5")
    assert not hasattr(formats, "TEXT_H5")  # the one shared cache is gone


@pytest.mark.parametrize("key, value", [("pooling", "cls"), ("max_length", 128),
                                        ("model", "dmis-lab/biobert-base-cased-v1.1"),
                                        ("fields", "indication")])
def test_text_cache_with_other_attributes_is_refused(tmp_path, key, value):
    path = tmp_path / "text.h5"
    write_text_cache(path, [1, 2], np.ones((2, 4)), ATTRS)
    with pytest.raises(PipelineError) as err:
        read_text_cache(path, expect={**ATTRS, key: value})
    message = str(err.value)
    assert key in message and str(path) in message
    assert repr(value) in message and repr(ATTRS[key]) in message


def test_text_cache_missing_file_and_length_mismatch(tmp_path):
    with pytest.raises(PipelineError, match="embed_text"):
        read_text_cache(tmp_path / "absent.h5")
    with pytest.raises(ValueError):
        write_text_cache(tmp_path / "t.h5", [1, 2, 3], np.ones((2, 4)), {})
    assert not (tmp_path / "t.h5").exists()


# --- the caches the stages build (the tiny demo) ----------------------------------------------

def test_cached_features_match_the_prepared_tables(cached):
    from cxrfusion.formats import text_cache_attrs as cache_attrs
    from cxrfusion.imaging import load_xray
    from cxrfusion.params import fields_of
    from cxrfusion.studies import join_text
    from cxrfusion.text_encoder import embed, load_encoder

    studies, images = formats.read_prepared()
    tokenizer, model = None, None

    # text/<input>.h5: one vector per study, in the order of studies.csv, each the study's
    # text of that input (its fields joined) alone
    assert cached.text.inputs == ["findings+impression", "indication"]
    assert sorted(p.name for p in formats.TEXT_DIR.iterdir()) == [  # and the placebo's
        "findings+impression.h5", "findings+impression.shuffled.h5", "indication.h5",
        "indication.shuffled.h5"]
    t = cached.text
    for text_input in t.inputs:
        fields = fields_of(text_input)
        uids, vectors, attrs = read_text_cache(formats.text_cache(text_input),
                                               expect=cache_attrs(t, fields))
        assert attrs["fields"] == ",".join(fields_of(text_input))
        assert uids.tolist() == studies["uid"].tolist()
        assert vectors.shape == (len(studies), cached.demo_encoder.hidden_size)
        assert attrs["dim"] == vectors.shape[1] and attrs["pooling"] == t.pooling
        assert np.isfinite(vectors).all()
        if tokenizer is None:
            tokenizer, model = load_encoder(t.model, t.revision, CPU)
        texts = studies.apply(join_text, axis=1, fields=fields)
        for i, text in enumerate(texts):
            alone = embed([text], tokenizer, model, t.pooling, t.max_length, 1, CPU,
                          progress=False)
            np.testing.assert_allclose(vectors[i], alone[0], atol=1e-5,
                                       err_msg=f"{text_input}, row {i}")
        # not one vector for all (the demo's indications are a few sentences, often repeated)
        assert len({v.tobytes() for v in vectors}) > (len(vectors) // 2 if text_input !=
                                                      "indication" else 5)

    # images.h5: one image per row of images.csv, in that order, at image.size
    size = cached.image.size
    fit = cached.image.fit
    names, pixels = read_image_cache(formats.IMAGES_H5, expect={"size": size, "fit": fit})
    assert names.tolist() == images["filename"].tolist()
    assert pixels.shape == (len(images), size, size) and pixels.dtype == np.uint8
    raw = formats.RAW / formats.IMAGES_SUBDIR
    for k in (0, len(images) // 2, len(images) - 1):
        np.testing.assert_array_equal(pixels[k], load_xray(raw / names[k], size, fit))
    report = json.loads(formats.IMAGES_COUNTS.read_text())
    assert report == {"cached": len(images), "skipped": 0, "skipped_files": [],
                      "skipped_images": []}


# --- pooling and truncation on a tiny encoder -------------------------------------------------

TEXTS = ["Normal.",
         "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
         "Cardiomegaly. XXXX opacity in the right lung base.",
         ""]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from cxrfusion.demo_encoder import build
    from cxrfusion.text_encoder import load_encoder

    folder = tmp_path_factory.mktemp("enc") / "demo_encoder"
    corpus = TEXTS * 3 + ["No pneumothorax or pleural effusion.", "Heart size is enlarged.",
                          "Patchy airspace opacity, XXXX pneumonia."]
    build(corpus, folder, vocab_size=120, hidden_size=16, layers=1, heads=2, seed=0)
    return load_encoder(str(folder), None, CPU)


def _unpadded(tokenizer, model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state[0]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_matches_a_hand_computation(encoder, pooling):
    from cxrfusion.text_encoder import embed

    tokenizer, model = encoder
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert len({len(i) for i in ids}) == len(TEXTS)  # different lengths: the batch is padded
    got = embed(TEXTS, tokenizer, model, pooling, 512, batch_size=8, device=CPU, progress=False)
    assert got.shape == (len(TEXTS), 16) and got.dtype == np.float32
    for k, text_ids in enumerate(ids):
        hidden = _unpadded(tokenizer, model, text_ids)
        want = hidden[0] if pooling == "cls" else hidden.mean(0)
        np.testing.assert_allclose(got[k], want.numpy(), atol=1e-5, err_msg=TEXTS[k])


def test_mean_pooling_ignores_padding(encoder):
    """The same text alone and in a batch padded to a longer one gives the same vector, and
    that differs from an average that counts the padding."""
    from cxrfusion.text_encoder import embed, pool

    tokenizer, model = encoder
    alone = embed([TEXTS[0]], tokenizer, model, "mean", 512, 1, CPU, progress=False)
    batched = embed(TEXTS, tokenizer, model, "mean", 512, 8, CPU, progress=False)
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    naive = hidden[0].mean(0).numpy()
    assert np.abs(naive - alone[0]).max() > 1e-3
    np.testing.assert_allclose(pool(hidden, batch["attention_mask"], "mean")[0].numpy(),
                               alone[0], atol=1e-5)


def test_pool_on_known_numbers():
    from cxrfusion.text_encoder import pool

    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(pool(hidden, mask, "cls").numpy(), [[0, 1], [6, 7]])
    np.testing.assert_allclose(pool(hidden, mask, "mean").numpy(), [[1, 2], [8, 9]])


def test_embed_keeps_input_order(encoder):
    from cxrfusion.text_encoder import embed

    tokenizer, model = encoder
    forward = embed(TEXTS, tokenizer, model, "mean", 512, 2, CPU, progress=False)
    backward = embed(TEXTS[::-1], tokenizer, model, "mean", 512, 2, CPU, progress=False)
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)


LONG = " ".join(["The heart is normal in size and the lungs are clear without effusion."] * 80)


def test_long_report_is_truncated(encoder):
    from cxrfusion.text_encoder import embed

    tokenizer, model = encoder
    assert len(LONG.split()) > 1000
    body = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert len(body) > 1000
    full = embed([LONG], tokenizer, model, "mean", 512, 4, CPU, progress=False)
    assert full.shape == (1, 16) and np.isfinite(full).all()

    for pooling in ("cls", "mean"):
        got = embed([LONG], tokenizer, model, pooling, 16, 4, CPU, progress=False)
        ids = [tokenizer.cls_token_id] + body[:14] + [tokenizer.sep_token_id]  # 16 tokens
        hidden = _unpadded(tokenizer, model, ids)
        want = hidden[0] if pooling == "cls" else hidden.mean(0)
        np.testing.assert_allclose(got[0], want.numpy(), atol=1e-5)
    # the cut is really at 16 tokens: 32 tokens read more of the report
    at32 = embed([LONG], tokenizer, model, "mean", 32, 4, CPU, progress=False)
    assert np.abs(at32 - embed([LONG], tokenizer, model, "mean", 16, 4, CPU,
                               progress=False)).max() > 1e-4


# --- the encoder must load or say how to fix it -----------------------------------------------

@pytest.mark.parametrize("name", ["NOWHERE/missing_encoder", "models/no_such_encoder",
                                  "no-such-org/no-such-model", "not a hub id"])
def test_load_encoder_failure_says_how_to_fix(tmp_path, name):
    from cxrfusion.text_encoder import load_encoder

    name = name.replace("NOWHERE", str(tmp_path))
    with pytest.raises(PipelineError) as err:
        load_encoder(name, None, CPU)
    message = str(err.value)
    assert "text.model" in message and repr(name) in message
    assert "models/demo_encoder" in message and "huggingface-cli download" in message


def test_load_encoder_empty_folder(tmp_path):
    from cxrfusion.text_encoder import load_encoder

    (tmp_path / "empty_encoder").mkdir()
    with pytest.raises(PipelineError, match="text.model"):
        load_encoder(str(tmp_path / "empty_encoder"), None, CPU)


# --- decoding X-rays --------------------------------------------------------------------------

def gray(h=37, w=29, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def reference(path, size) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L"
        return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("size", [16, 32, 64])
def test_load_xray_is_a_bilinear_resize(tmp_path, size):
    from cxrfusion.imaging import load_xray

    Image.fromarray(gray()).save(tmp_path / "x.png")
    got = load_xray(tmp_path / "x.png", size, "stretch")  # 37 x 29: stretch is a plain resize
    assert got.dtype == np.uint8 and got.shape == (size, size)
    np.testing.assert_array_equal(got, reference(tmp_path / "x.png", size))


@pytest.mark.parametrize("kind", ["16-bit", "12-bit in 16", "8-bit in 16", "RGB", "RGBA", "LA"])
def test_load_xray_same_pixels_from_any_png_mode(tmp_path, kind):
    from cxrfusion.imaging import load_xray

    g = gray()
    assert g.max() > 128  # the premise: the brightest pixel uses the top bit
    Image.fromarray(g).save(tmp_path / "gray8.png")
    if kind == "16-bit":
        img = Image.fromarray(g.astype(np.uint16) * 257)
    elif kind == "12-bit in 16":  # DICOM values 0..4095 kept in a 16-bit PNG
        img = Image.fromarray(np.rint(g * (4095 / 255)).astype(np.uint16))
    elif kind == "8-bit in 16":
        img = Image.fromarray(g.astype(np.uint16))
    elif kind == "RGB":
        img = Image.fromarray(np.stack([g, g, g], axis=-1), "RGB")
    elif kind == "RGBA":  # alpha is dropped, not blended with a background
        alpha = np.full_like(g, 128)
        img = Image.fromarray(np.stack([g, g, g, alpha], axis=-1), "RGBA")
    else:
        img = Image.fromarray(np.stack([g, np.full_like(g, 77)], axis=-1), "LA")
    img.save(tmp_path / "other.png")
    with Image.open(tmp_path / "other.png") as check:  # the file really has that mode
        assert check.mode == {"RGB": "RGB", "RGBA": "RGBA", "LA": "LA"}.get(kind, "I;16")
    for size in (20, 37):
        np.testing.assert_array_equal(load_xray(tmp_path / "other.png", size, "stretch"),
                                      load_xray(tmp_path / "gray8.png", size, "stretch"))
    np.testing.assert_array_equal(load_xray(tmp_path / "other.png", 20, "stretch"),
                                  reference(tmp_path / "gray8.png", 20))


# --- cache_images with bad files --------------------------------------------------------------

def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


GOOD = ["good_1.png", "good_2.png", "good_3.png"]
BAD = ["empty.dcm.png", "truncated.dcm.png", "notes.png"]


@pytest.fixture
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for k, name in enumerate(GOOD):
        (folder / name).write_bytes(png_bytes(gray(40, 40, seed=k)))
    (folder / "empty.dcm.png").write_bytes(b"")
    noisy = png_bytes(gray(64, 64, seed=9))
    (folder / "truncated.dcm.png").write_bytes(noisy[: len(noisy) // 2])
    (folder / "notes.png").write_text("radiologist's notes, not an image\n")
    return folder


def test_cache_images_writes_every_image(tmp_path, image_dir):
    from cxrfusion.imaging import cache_images, load_xray

    out = tmp_path / "features" / "images.h5"
    report = cache_images(GOOD, image_dir, out, 24, "pad", skip_bad=False, workers=2)
    assert report == {"cached": 3, "skipped": 0, "skipped_files": [],
                      "skipped_images": []}
    names, pixels = read_image_cache(out, expect={"size": 24, "fit": "pad"})
    assert names.tolist() == GOOD
    for name, p in zip(GOOD, pixels):
        np.testing.assert_array_equal(p, load_xray(image_dir / name, 24, "pad"))
    with pytest.raises(PipelineError, match="size"):
        read_image_cache(out, expect={"size": 32})
    with h5py.File(out) as f:
        assert f["images"].chunks == (1, 24, 24)


def test_cache_images_bad_files_stop_and_keep_previous_cache(tmp_path, image_dir):
    from cxrfusion.imaging import cache_images

    out = tmp_path / "features" / "images.h5"
    cache_images(GOOD[:2], image_dir, out, 16, "pad", skip_bad=False, workers=2)
    before = out.read_bytes()

    order = [GOOD[0], BAD[0], GOOD[1], BAD[1], BAD[2], GOOD[2]]
    with pytest.raises(PipelineError) as err:
        cache_images(order, image_dir, out, 24, "pad", skip_bad=False, workers=2)
    message = str(err.value)
    for name in BAD:
        assert name in message
    for name in GOOD:
        assert name not in message
    assert "3 unreadable" in message and "image.skip_bad" in message

    assert out.read_bytes() == before
    names, pixels = read_image_cache(out, expect={"size": 16})
    assert names.tolist() == GOOD[:2] and pixels.shape == (2, 16, 16)
    assert sorted(p.name for p in out.parent.iterdir()) == ["images.h5"]


def test_cache_images_skip_bad(tmp_path, image_dir):
    from cxrfusion.imaging import cache_images, load_xray

    out = tmp_path / "images.h5"
    order = [GOOD[0], BAD[0], GOOD[1], BAD[1], BAD[2], GOOD[2]]
    report = cache_images(order, image_dir, out, 24, "pad", skip_bad=True, workers=2)
    assert report["cached"] == 3 and report["skipped"] == 3
    assert len(report["skipped_files"]) == 3
    for name, line in zip(BAD, report["skipped_files"]):
        assert name in line
    names, pixels = read_image_cache(out)
    assert names.tolist() == GOOD
    assert pixels.shape == (3, 24, 24)
    for name, p in zip(GOOD, pixels):
        np.testing.assert_array_equal(p, load_xray(image_dir / name, 24, "pad"))


def test_cache_images_stage_reports_skipped(prepared):
    """The stage writes features/images_counts.json with the skipped files when skip_bad."""
    from stages import cache_images

    cached = prepared
    cache_images.cache_images(cached)
    images = pd.read_csv(formats.IMAGES, keep_default_na=False)
    victim = formats.RAW / formats.IMAGES_SUBDIR / images["filename"].iloc[1]
    victim.write_bytes(b"")
    with pytest.raises(PipelineError, match=images["filename"].iloc[1].replace(".", r"\.")):
        cache_images.cache_images(cached)
    names, _ = read_image_cache(formats.IMAGES_H5)
    assert len(names) == len(images)  # the previous cache is still whole

    cached.image.skip_bad = True
    cache_images.cache_images(cached)
    report = json.loads(formats.IMAGES_COUNTS.read_text())
    assert report["cached"] == len(images) - 1 and report["skipped"] == 1
    assert images["filename"].iloc[1] in report["skipped_files"][0]
    names, _ = read_image_cache(formats.IMAGES_H5)
    assert images["filename"].iloc[1] not in set(names)


def test_demo_encoder_is_byte_identical_for_a_seed(tmp_path):
    """Same texts and seed -> the same tokenizer and weights files (the vocabulary must not
    depend on hash order, or every vector changes between runs)."""
    from cxrfusion.demo_encoder import build

    texts = ["The heart is enlarged.", "The lungs are clear.", "No acute disease. XXXX intact."] * 5
    for name in ("a", "b"):
        build(texts, tmp_path / name, 60, 16, 1, 2, seed=0)
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    build(texts, tmp_path / "c", 60, 16, 1, 2, seed=1)
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != (
        tmp_path / "a" / "model.safetensors").read_bytes()
