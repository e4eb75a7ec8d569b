"""How an X-ray file becomes the array the model sees: decode, grayscale, resize.

`load_xray` is the only place this happens: `cache_images` uses it for every image of the
dataset and prediction on new studies uses it too, so both see exactly the same pixels.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, UnidentifiedImageError


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


def load_xray(path, size: int) -> np.ndarray:
    """Decode `path` as grayscale and resize it to size x size (uint8). Raises BadImage."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            gray = to_grayscale_uint8(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"{path}: {type(err).__name__}: {err}") from err
    # Squash to a square as the original did (transforms.Resize((224, 224))); bilinear with
    # PIL's antialiasing, so downsampling 2,000 px to 240 px does not alias.
    resized = Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)
