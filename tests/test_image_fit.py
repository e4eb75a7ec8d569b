"""image.fit: how a non-square X-ray becomes the model's square input (cxrfusion/imaging.py).

A round blob must stay round: stretching a 512 x 362 film changes the heart's width relative to
the chest, the ratio that defines cardiomegaly.
"""
from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrfusion import params as params_mod
from cxrfusion.common import PipelineError
from cxrfusion.formats import read_image_cache
from cxrfusion.imaging import FITS, load_xray

BILINEAR = Image.Resampling.BILINEAR


def disc(w: int, h: int, diameter: int = 50, background: int = 0, centre=None) -> np.ndarray:
    """A w x h canvas of `background` with a white filled circle (centred by default)."""
    cy, cx = centre or ((h - 1) / 2, (w - 1) / 2)
    y, x = np.mgrid[:h, :w]
    inside = (x - cx) ** 2 + (y - cy) ** 2 <= (diameter / 2) ** 2
    return np.where(inside, 255, background).astype(np.uint8)


def save(tmp_path, a: np.ndarray, name="x.png", mode=None):
    path = tmp_path / name
    Image.fromarray(a, mode).save(path)
    return path


def blob(a: np.ndarray, background: int = 0) -> tuple[float, float, float, float]:
    """Centre (row, column) and spread (rows, columns) of the bright blob, from intensity
    moments: robust to the one-pixel rounding of a bounding box."""
    m = np.clip(a.astype(np.float64) - background, 0, None)
    y, x = np.mgrid[:a.shape[0], :a.shape[1]]
    total = m.sum()
    cy, cx = (m * y).sum() / total, (m * x).sum() / total
    sy = np.sqrt((m * (y - cy) ** 2).sum() / total)
    sx = np.sqrt((m * (x - cx) ** 2).sum() / total)
    return cy, cx, sy, sx


SHAPES = {"landscape": (120, 60), "portrait": (60, 120)}  # (width, height)


# --- the default keeps the aspect ratio; stretch does not ------------------------------------

def test_default_fit_keeps_the_aspect_ratio(params):
    fit = params.image.fit
    assert fit in ("pad", "crop"), "the default must keep the heart-to-chest ratio"
    params_mod.validate(params)


@pytest.mark.parametrize("shape", SHAPES)
def test_circle_stays_round_with_the_default_fit(tmp_path, params, shape):
    size = 96
    path = save(tmp_path, disc(*SHAPES[shape]))
    out = load_xray(path, size, params.image.fit)
    _, _, sy, sx = blob(out)
    assert sx / sy == pytest.approx(1, abs=0.05)


@pytest.mark.parametrize("shape", SHAPES)
def test_stretch_makes_the_circle_an_ellipse(tmp_path, shape):
    w, h = SHAPES[shape]
    out = load_xray(save(tmp_path, disc(w, h)), 96, "stretch")
    _, _, sy, sx = blob(out)
    assert sx / sy == pytest.approx(h / w, rel=0.05)  # 0.5 landscape, 2 portrait
    np.testing.assert_array_equal(  # the original's Resize((S, S)), bit for bit
        out, np.asarray(Image.open(tmp_path / "x.png").resize((96, 96), BILINEAR)))


# --- pad: the whole image, padded with its border value ----------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_pad_keeps_the_whole_circle_and_pads_with_the_border(tmp_path, shape):
    w, h = SHAPES[shape]
    a = disc(w, h, background=40)
    a[0, 5:9] = 255  # burnt-in letters on the border: the median ignores them
    a[-1, -3:] = 250
    size = 60  # scale 0.5: the image becomes 60 x 30 (or 30 x 60), padded by 15 each side
    out = load_xray(save(tmp_path, a), size, "pad")
    assert out.shape == (size, size) and out.dtype == np.uint8
    inner = np.asarray(Image.fromarray(a).resize((w // 2, h // 2), BILINEAR))
    if w > h:
        np.testing.assert_array_equal(out[15:45], inner)
        padding = np.concatenate([out[:15], out[45:]])
    else:
        np.testing.assert_array_equal(out[:, 15:45], inner)
        padding = np.concatenate([out[:, :15], out[:, 45:]], axis=1)
    assert (padding == 40).all()
    # the whole circle is there: its mass is that of a disc of diameter 25, centred
    cy, cx, sy, sx = blob(out, background=40)
    assert (out.astype(float) - 40).clip(0).sum() == pytest.approx(
        215 * np.pi * 12.5 ** 2, rel=0.05)
    assert (cy, cx) == (pytest.approx(29.5, abs=0.6), pytest.approx(29.5, abs=0.6))
    assert sx / sy == pytest.approx(1, abs=0.05)


def test_pad_border_value_is_the_median_of_the_padded_sides(tmp_path):
    """Padded above and below: the median of the top and bottom rows (60 x 10, 90 x 20 and a
    30-pixel label at 250: median 20, mean 55), not of the unpadded left and right columns."""
    a = np.full((30, 90), 120, dtype=np.uint8)
    a[0, :60], a[0, 60:], a[-1] = 10, 250, 20
    a[1:-1, 0] = a[1:-1, -1] = 255
    out = load_xray(save(tmp_path, a), 90, "pad")  # width 90 already: no resampling
    np.testing.assert_array_equal(out[30:60], a)
    assert (out[:30] == 20).all() and (out[60:] == 20).all()


# --- crop: the centre square ------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_crop_gives_a_square_with_the_circle_centred(tmp_path, shape):
    w, h = SHAPES[shape]
    size = 48
    out = load_xray(save(tmp_path, disc(w, h)), size, "crop")
    assert out.shape == (size, size) and out.dtype == np.uint8
    cy, cx, sy, sx = blob(out)
    assert (cy, cx) == (pytest.approx(23.5, abs=0.3), pytest.approx(23.5, abs=0.3))
    assert sx / sy == pytest.approx(1, abs=0.05)
    # the short side (60 px) fills the square: the disc's radius is 25 * 48 / 60 = 20 px
    assert sx == pytest.approx(20 / 2, rel=0.05)  # a disc's spread along an axis is r / 2


def test_crop_cuts_what_lies_outside_the_centre_square(tmp_path):
    """A blob at the bottom of a tall image (a lung base) is gone with crop, kept with pad."""
    a = disc(60, 120, diameter=16, centre=(110, 30))
    path = save(tmp_path, a)
    assert load_xray(path, 48, "crop").max() == 0
    assert load_xray(path, 48, "pad").max() > 200


# --- every fit: shape, dtype, modes, small images, square images ------------------------------

@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("wh", [(120, 60), (60, 120), (7, 3), (3, 7), (1, 40), (33, 32)])
def test_output_is_size_square_uint8(tmp_path, fit, wh):
    a = np.random.default_rng(0).integers(0, 256, size=wh[::-1], dtype=np.uint8)
    out = load_xray(save(tmp_path, a), 37, fit)
    assert out.shape == (37, 37) and out.dtype == np.uint8


@pytest.mark.parametrize("fit", FITS)
def test_small_images_are_enlarged(tmp_path, fit):
    out = load_xray(save(tmp_path, disc(20, 10, diameter=8)), 40, fit)
    assert out.shape == (40, 40)
    _, _, sy, sx = blob(out)
    if fit == "stretch":
        assert sx / sy == pytest.approx(0.5, rel=0.1)
    else:  # enlarged 2x (pad) or 4x (crop): the disc is larger than in the file, still round
        assert sx / sy == pytest.approx(1, abs=0.1) and sx > 3  # 2 in the file


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("mode", ["16-bit", "RGB", "RGBA"])
def test_every_png_mode_gives_the_pixels_of_8_bit_gray(tmp_path, fit, mode):
    g = disc(90, 50, diameter=30, background=60)
    if mode == "16-bit":
        other = Image.fromarray(g.astype(np.uint16) * 257)
    elif mode == "RGB":
        other = Image.fromarray(np.stack([g] * 3, axis=-1), "RGB")
    else:
        other = Image.fromarray(np.stack([g] * 3 + [np.full_like(g, 128)], axis=-1), "RGBA")
    other.save(tmp_path / "other.png")
    np.testing.assert_array_equal(load_xray(tmp_path / "other.png", 40, fit),
                                  load_xray(save(tmp_path, g), 40, fit))


def test_square_images_are_the_same_under_every_fit(tmp_path):
    """A square file gives the pixels it gave before image.fit existed, whatever the fit."""
    a = np.random.default_rng(1).integers(0, 256, size=(50, 50), dtype=np.uint8)
    path = save(tmp_path, a)
    want = np.asarray(Image.fromarray(a).resize((32, 32), BILINEAR))
    for fit in FITS:
        np.testing.assert_array_equal(load_xray(path, 32, fit), want)


def test_unknown_fit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="letterbox"):
        load_xray(save(tmp_path, disc(40, 20, 10)), 32, "letterbox")


@pytest.mark.parametrize("value", ["letterbox", "PAD", None, 1])
def test_params_refuse_an_unknown_fit(params, value):
    params.image.fit = value
    with pytest.raises(PipelineError, match=r"image\.fit") as err:
        params_mod.validate(params)
    assert repr(value) in str(err.value) and "pad, crop, stretch" in str(err.value)


@pytest.mark.parametrize("value", FITS)
def test_params_accept_every_fit(params, value):
    params.image.fit = value
    assert params_mod.validate(params) is params


# --- cache_images: the fit is applied and recorded ---------------------------------------------

NAMES = ["wide.png", "tall.png", "square.png"]


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name, (w, h) in zip(NAMES, [(120, 60), (60, 120), (70, 70)]):
        save(folder, disc(w, h, diameter=40, background=30), name)
    return folder


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_cache_images_records_the_fit_and_matches_load_xray(tmp_path, image_dir, fit):
    from cxrfusion.imaging import cache_images

    out = tmp_path / "images.h5"
    cache_images(NAMES, image_dir, out, 24, fit, skip_bad=False, workers=1)
    with h5py.File(out) as f:
        assert f.attrs["fit"] == fit and f.attrs["size"] == 24
    names, pixels = read_image_cache(out, expect={"size": 24, "fit": fit})
    assert names.tolist() == NAMES
    for name, p in zip(NAMES, pixels):
        np.testing.assert_array_equal(p, load_xray(image_dir / name, 24, fit))
    other = "crop" if fit == "pad" else "pad"
    with pytest.raises(PipelineError, match=f"fit: cache has '{fit}', parameters say '{other}'"):
        read_image_cache(out, expect={"size": 24, "fit": other})


def test_cache_images_stage_uses_image_fit(workdir, params, monkeypatch):
    """`run` reads image.fit from the parameters, not a default."""
    from cxrfusion import formats
    from stages import cache_images

    folder = formats.RAW / formats.IMAGES_SUBDIR
    folder.mkdir(parents=True)
    save(folder, disc(120, 60), "wide.png")
    monkeypatch.setattr(cache_images, "read_prepared",
                        lambda: (None, pd.DataFrame({"filename": ["wide.png"]})))
    monkeypatch.setattr("os.cpu_count", lambda: 1)  # one decoding process (cxrfusion.imaging)
    for fit in ("crop", "stretch"):
        params.image.fit = fit
        cache_images.cache_images(params)
        names, pixels = read_image_cache(formats.IMAGES_H5, expect={"fit": fit, "size": 32})
        np.testing.assert_array_equal(pixels[0], load_xray(folder / "wide.png", 32, fit))


# --- the model records its fit; prediction reads images with it --------------------------------

def fake_model():
    return SimpleNamespace(variant="image", fusion="concat", input_stats=lambda: ((0.5,), (0.25,)),
                           arguments={"variant": "image", "text_dim": 0,
                                      "backbone": "efficientnet_b1", "hidden": 8, "dropout": 0.3,
                                      "fusion": "concat", "shared_dim": 256})


def test_model_config_records_the_fit():
    from cxrfusion.model import model_config

    config = model_config(fake_model(), 16, "efficientnet_b1", 64, image_fit="crop")
    assert config["image_fit"] == "crop" and config["image_size"] == 64
    with pytest.raises(TypeError):  # required: a model must say how its images were made
        model_config(fake_model(), 16, "efficientnet_b1", 64)


def test_model_image_fit(tmp_path):
    """model.json's image_fit; a model saved before it was recorded is refused (the one rule of
    saved_model for evaluate, explain and the prediction CLI)."""
    from cxrfusion.saved_model import image_fit

    assert image_fit({"image_fit": "crop"}, tmp_path) == "crop"
    with pytest.raises(PipelineError, match="model.json has no image_fit: the model was trained "
                       "before the pipeline recorded it; retrain it with `dvc repro`"):
        image_fit({"image_size": 32}, tmp_path)
    with pytest.raises(PipelineError, match="model.json"):
        image_fit({"image_fit": "squash"}, tmp_path)


@pytest.mark.parametrize("recorded", ["crop", "pad", "stretch"])
def test_predict_reads_images_with_the_models_fit(tmp_path, monkeypatch, recorded):
    """predict_studies decodes with model.json's image_fit, whatever params.yaml says now."""
    from cxrfusion import predict as predict_mod

    path = save(tmp_path, disc(120, 60))
    seen = {}

    def scores(model, split, batch_size, amp):
        seen["images"] = split.images.cpu().numpy()
        return np.full(len(split), 0.7), None

    monkeypatch.setattr(predict_mod, "score", scores)
    config = {"variant": "image", "image_size": 40, "image_fit": recorded}
    settings = params_mod.built({"train": {"batch_size": 4, "amp": False}})
    predictor = predict_mod.Predictor(
        SimpleNamespace(uses_image=True, uses_text=False), config, settings, [], tmp_path,
        torch.device("cpu"), 0.5, "test")
    out = predict_mod.predict_studies(predictor, pd.DataFrame({"uid": [1], "path": [path]}), None)
    assert out["probability"].tolist() == [pytest.approx(0.7)]
    want = load_xray(path, 40, recorded)
    np.testing.assert_array_equal(seen["images"][0], want)
    assert predict_mod.load_images([path], 40, recorded).numpy()[0].tolist() \
        == want.tolist()
