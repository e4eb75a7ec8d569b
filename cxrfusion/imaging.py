"""How an X-ray file becomes the array the model sees: decode, grayscale, fit to a square.

`load_xray` is the only place this happens: `cache_images` uses it for every image of the
dataset and prediction on new studies uses it too (with the fit the model was trained on), so
both see exactly the same pixels.

Real X-rays are not square (Open-i's IU X-ray PNGs are 512 px wide and 362 to 633 px high), and
the model's input is. How the rectangle becomes a square (`image.fit`):
  pad      letterbox: the long side becomes `size`, the aspect ratio is kept, and the short side
           is padded symmetrically with the image's border value. Nothing is cut and nothing is
           distorted, so the heart's width relative to the chest (the cardiothoracic ratio that
           defines cardiomegaly) and the costophrenic angles at the lung bases are all kept.
  crop     the short side becomes `size` and the centre square is kept (torchxrayvision's
           XRayCenterCrop, then its resize): no distortion, but a tall image loses its top and
           its lung bases, a wide one its lateral chest wall.
  stretch  both sides become `size` (the original's transforms.Resize((224, 224))): nothing is
           cut, but a 512 x 362 image is squashed by 1.4 and the heart looks narrower or wider.
A square input gives the same pixels under every fit.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cxrfusion.common import PipelineError, atomic_path
from cxrfusion.formats import create_image_cache
from cxrfusion.params import FITS  # the one list: params.yaml's image.fit is checked against it

log = logging.getLogger(__name__)


class BadImage(Exception):
    """The file is empty, truncated or not an image."""


def to_grayscale_uint8(img: Image.Image) -> np.ndarray:
    """8-bit grayscale pixels from any PNG mode (8/16-bit gray, RGB, RGBA, palette)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit gray: scale 0..2^bits-1 onto 0..255. The bits actually used are read from the
        # brightest pixel (PIL ignores PNG's sBIT chunk): DICOM converted to PNG often keeps
        # 12-bit values (0..4095) in a 16-bit file, which a fixed /257 would turn nearly black.
        # Full-range files (v = 257 * u) map back to u exactly, as do 12- and 8-bit values.
        arr = np.asarray(img, dtype=np.float64)
        bits = max(8, int(np.ceil(np.log2(arr.max() + 1))))
        return np.clip(np.rint(arr * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # drop alpha: X-rays carry no transparency
    return np.asarray(img.convert("L"), dtype=np.uint8)


def load_xray(path, size: int, fit: str) -> np.ndarray:
    """Decode `path` as grayscale and fit it to size x size (uint8) as `fit` says (see FITS).
    Raises BadImage."""
    if fit not in FITS:  # before decoding: a wrong fit is the caller's bug, not the file's
        raise ValueError(f"fit={fit!r}: use one of {', '.join(FITS)}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            gray = to_grayscale_uint8(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"{path}: {type(err).__name__}: {err}") from err
    return fit_square(gray, size, fit)


def fit_square(gray: np.ndarray, size: int, fit: str) -> np.ndarray:
    """A 2-D uint8 image made size x size by `fit`. Every resize is bilinear with PIL's
    antialiasing (its filter widens with the reduction), so 2,000 px to 240 px does not alias;
    images smaller than `size` are enlarged the same way."""
    img = Image.fromarray(gray)
    w, h = img.size
    if fit == "stretch" or w == h:
        out = img.resize((size, size), Image.Resampling.BILINEAR)
    elif fit == "crop":
        # resample only the centre square of the source (sub-pixel box): one resize, exactly
        # centred, no rounding of an intermediate size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        out = img.resize((size, size), Image.Resampling.BILINEAR,
                         box=(left, top, left + side, top + side))
    else:
        return _letterbox(img, size)
    return np.asarray(out, dtype=np.uint8)


def _letterbox(img: Image.Image, size: int) -> np.ndarray:
    """The long side to `size`, the short side padded evenly (the odd pixel after) with the
    border value: the median of the two outermost rows (or columns) on the padded sides of the
    resized image. The median ignores the burnt-in letters and markers that sit on a few border
    pixels, so the padding continues the image's own background (black air on most films, white
    on inverted or collimated ones) and adds no new edge for the network to find."""
    w, h = img.size
    if w > h:
        new = (size, max(1, round(h * size / w)))
    else:
        new = (max(1, round(w * size / h)), size)
    small = np.asarray(img.resize(new, Image.Resampling.BILINEAR), dtype=np.uint8)
    if w > h:
        edges = np.concatenate([small[0], small[-1]])
        before = (size - small.shape[0]) // 2
        pad = ((before, size - small.shape[0] - before), (0, 0))
    else:
        edges = np.concatenate([small[:, 0], small[:, -1]])
        before = (size - small.shape[1]) // 2
        pad = ((0, 0), (before, size - small.shape[1] - before))
    border = int(np.rint(np.median(edges)))
    return np.pad(small, pad, constant_values=border).astype(np.uint8, copy=False)


# --- every image of a dataset, once ------------------------------------------------------------

def _decode(path, size, fit):
    try:
        return load_xray(path, size, fit), None
    except BadImage as err:
        return None, str(err)


def cache_images(filenames: list[str], image_dir, out, size: int, fit: str, skip_bad: bool,
                 workers: int | None = None) -> dict:
    """Decode `filenames` into `out`; returns a report of what was cached and skipped."""
    workers = workers or os.cpu_count() or 1
    paths = [image_dir / f for f in filenames]
    start = time.perf_counter()
    bad = []
    # stream into the file as images arrive: memory stays flat however large the dataset
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f, ProcessPoolExecutor(workers) as pool:
        data = create_image_cache(f, len(paths), size, fit)
        kept, skipped = [], []
        results = pool.map(partial(_decode, size=size, fit=fit), paths, chunksize=8)
        for name, (pixels, error) in tqdm(zip(filenames, results), total=len(paths),
                                          desc="images", unit="img"):
            if error:
                bad.append(error)
                skipped.append(name)
            else:
                data[len(kept)] = pixels
                kept.append(name)
        if bad and not skip_bad:  # raising here discards the half-made file
            raise PipelineError(f"{len(bad)} unreadable image(s); fix or remove them, or set "
                                "image.skip_bad=true to skip them:\n  " + "\n  ".join(bad))
        data.resize(len(kept), axis=0)
        f.create_dataset("filenames", data=np.array(kept, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("skipped", data=np.array(skipped, dtype=object), dtype=h5py.string_dtype())
    seconds = time.perf_counter() - start
    log.info("cached %d images at %d px (fit %s) in %.1f s: %.0f images/s with %d process%s",
             len(kept), size, fit, seconds, len(paths) / seconds, workers,
             "" if workers == 1 else "es")
    return {"cached": len(kept), "skipped": len(bad), "skipped_files": bad,
            "skipped_images": skipped}
