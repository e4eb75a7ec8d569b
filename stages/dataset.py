"""The training data: rows of images.csv joined with their cached pixels and report vectors.

A sample is one image with its study's report vector and label (as in the original). The
text variant sees the same rows, so all variants train and are scored on the same studies.

Pixels are held in memory (and moved to the GPU whole) when the image cache fits within
`train.in_memory_gb`; a larger cache (MIMIC-CXR) is streamed from features/images.h5 by
`train.workers` loader processes, batch by batch, in the same order.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from stages.common import PipelineError
from stages.formats import (IMAGES, IMAGES_H5, TEXT_H5, read_image_cache, read_image_filenames,
                            read_prepared, read_skipped_images, read_text_cache,
                            text_cache_attrs)

log = logging.getLogger(__name__)


@dataclass
class Split:
    rows: pd.DataFrame               # uid, filename, view, label, split
    images: torch.Tensor | None      # uint8 (N, S, S), or None when the variant reads no image
    text: torch.Tensor | None        # float32 (N, D), or None when the variant reads no text
    labels: torch.Tensor             # int64 (N,)
    cache_rows: np.ndarray | None = None  # streaming: the row of images.h5 of each sample
    workers: int = 0                 # streaming: loader processes

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        return self.cache_rows is not None

    def batches(self, index: list[torch.Tensor]):
        """(rows, images, text, labels) for each index batch, in order; images are uint8 on the
        device of `labels` (None when the variant reads no image)."""
        device = self.labels.device
        if not self.streamed:
            flat = torch.cat(index).to(device, non_blocking=True) if index else None  # one copy
            for idx in ([] if flat is None else flat.split([len(i) for i in index])):
                yield (idx, None if self.images is None else self.images[idx],
                       None if self.text is None else self.text[idx], self.labels[idx])
            return
        # one item = one whole batch (batch_size=None): a single HDF5 read per batch
        loader = DataLoader(CachedImages(IMAGES_H5, self.cache_rows), sampler=[i.numpy() for i in index],
                            batch_size=None, num_workers=self.workers,
                            pin_memory=device.type == "cuda",
                            generator=torch.Generator())  # not the global one: dropout stays as in memory
        for idx, pixels in zip(index, loader):
            idx = idx.to(device, non_blocking=True)
            yield (idx, pixels.to(device, non_blocking=True),
                   None if self.text is None else self.text[idx], self.labels[idx])

    def to(self, device) -> "Split":
        """The whole split on `device` (uint8 images: 7,466 at 240 px are 430 MB)."""
        def move(t):
            if t is None:
                return None
            if torch.device(device).type == "cuda":
                t = t.pin_memory()  # page-locked: the copy runs asynchronously
            return t.to(device, non_blocking=True)
        return Split(self.rows, move(self.images), move(self.text), move(self.labels),
                     self.cache_rows, self.workers)


class CachedImages(Dataset):
    """Batches of images read from an image cache: item `rows` -> uint8 (len(rows), S, S)."""

    def __init__(self, path, cache_rows: np.ndarray):
        self.path, self.cache_rows, self.file = path, cache_rows, None

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitem__(self, rows: np.ndarray) -> torch.Tensor:
        if self.file is None:  # opened inside each loader process: HDF5 handles do not fork
            self.file = h5py.File(self.path, "r")
        images = self.file["images"]
        # image by image (one chunk each): h5py's multi-row selection is ~30x slower
        return torch.from_numpy(np.stack([images[r] for r in self.cache_rows[rows]]))


def load_splits(p: dict, uses_image: bool, uses_text: bool) -> tuple[dict[str, Split], int]:
    """train/val/test Splits and the text vector size (0 when no text is read)."""
    _, rows = read_prepared()
    if IMAGES_H5.exists():
        # images that image.skip_bad skipped are left out for every variant, so that all
        # variants train and are scored on the same rows
        cached = rows["filename"].isin(read_image_filenames(IMAGES_H5)).to_numpy()
        if not cached.all():
            stale = ~cached & ~rows["filename"].isin(read_skipped_images(IMAGES_H5)).to_numpy()
            if stale.any():
                raise PipelineError(
                    f"{IMAGES_H5} neither holds nor skipped {stale.sum()} images of {IMAGES} "
                    f"(first: {rows.loc[stale, 'filename'].iloc[0]}): it was made from another "
                    "images.csv; rebuild it with `dvc repro cache_images`.")
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
    cache_rows = None
    if uses_image:
        size = p["image"]["size"]
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # each holds its own copy
        gigabytes = len(rows) * size * size / 1e9 * processes
        in_memory = gigabytes <= p["train"]["in_memory_gb"]
        if in_memory:
            filenames, pixels = read_image_cache(IMAGES_H5, expect={"size": size})
        else:
            filenames = read_image_filenames(IMAGES_H5, expect={"size": size})
        cache_rows = pd.Series(np.arange(len(filenames)), index=filenames)[rows["filename"]].to_numpy()
        if in_memory:
            pixels_by_row, cache_rows = pixels[cache_rows], None
        else:
            log.info("images: %.1f GB > train.in_memory_gb=%s: streamed from %s by %d loader "
                     "processes", gigabytes, p["train"]["in_memory_gb"], IMAGES_H5, p["train"]["workers"])

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
            torch.tensor(rows.loc[mask, "label"].to_numpy(np.int64)),
            None if cache_rows is None else cache_rows[mask], p["train"]["workers"])
    return splits, text_dim
