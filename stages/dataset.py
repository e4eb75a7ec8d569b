"""The training data: rows of images.csv joined with their cached pixels and report vectors.

A sample is one image with its study's report vector and label (as in the original). The
text variant sees the same rows, so all variants train and are scored on the same studies.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stages.common import PipelineError
from stages.formats import (IMAGES_H5, TEXT_H5, read_image_cache, read_image_filenames,
                            read_prepared, read_text_cache, text_cache_attrs)

log = logging.getLogger(__name__)


@dataclass
class Split:
    rows: pd.DataFrame               # uid, filename, view, label, split
    images: torch.Tensor | None      # uint8 (N, S, S), or None when the variant reads no image
    text: torch.Tensor | None        # float32 (N, D), or None when the variant reads no text
    labels: torch.Tensor             # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        """The whole split on `device` (uint8 images: 7,466 at 240 px are 430 MB)."""
        def move(t):
            if t is None:
                return None
            if torch.device(device).type == "cuda":
                t = t.pin_memory()  # page-locked: the copy runs asynchronously
            return t.to(device, non_blocking=True)
        return Split(self.rows, move(self.images), move(self.text), move(self.labels))


def load_splits(p: dict, uses_image: bool, uses_text: bool) -> tuple[dict[str, Split], int]:
    """train/val/test Splits and the text vector size (0 when no text is read)."""
    _, rows = read_prepared()
    if IMAGES_H5.exists():
        # images that image.skip_bad skipped are left out for every variant, so that all
        # variants train and are scored on the same rows
        cached = rows["filename"].isin(read_image_filenames(IMAGES_H5)).to_numpy()
        if not cached.all():
            log.warning("%d images of images.csv are not in %s (skipped as unreadable): "
                        "left out", (~cached).sum(), IMAGES_H5)
            rows = rows.loc[cached].reset_index(drop=True)
    text_dim, vectors_by_row, pixels_by_row = 0, None, None
    if uses_text:
        uids, vectors, attrs = read_text_cache(TEXT_H5, expect=text_cache_attrs(p["text"]))
        row_of = pd.Series(np.arange(len(uids)), index=uids)
        missing = ~rows["uid"].isin(row_of.index)
        if missing.any():
            raise PipelineError(f"{TEXT_H5} has no vector for {missing.sum()} studies of "
                                "images.csv; rebuild it with `dvc repro embed_text`.")
        vectors_by_row = vectors[row_of[rows["uid"]].to_numpy()]
        text_dim = int(attrs["dim"])
    if uses_image:
        filenames, pixels = read_image_cache(IMAGES_H5, expect={"size": p["image"]["size"]})
        row_of = pd.Series(np.arange(len(filenames)), index=filenames)
        pixels_by_row = pixels[row_of[rows["filename"]].to_numpy()]

    splits = {}
    for name in ("train", "val", "test"):
        mask = (rows["split"] == name).to_numpy()
        if not mask.any():
            raise PipelineError(f"no images in split {name!r}: the dataset is too small for "
                                "split.test / split.val.")
        splits[name] = Split(
            rows.loc[mask].reset_index(drop=True),
            None if pixels_by_row is None else torch.from_numpy(pixels_by_row[mask]),
            None if vectors_by_row is None else torch.from_numpy(vectors_by_row[mask]),
            torch.tensor(rows.loc[mask, "label"].to_numpy(np.int64)))
    return splits, text_dim
