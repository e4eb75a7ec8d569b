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

from cxrfusion import params
from cxrfusion.common import PipelineError
from cxrfusion.formats import (
    IMAGES,
    IMAGES_COUNTS,
    IMAGES_H5,
    SPLITS,
    Run,
    frozen_cache,
    read_frozen_cache,
    read_image_counts,
    read_image_filenames,
    read_image_rows,
    read_prepared,
    read_skipped_images,
    read_text_cache,
    text_cache,
    text_cache_attrs,
)
from cxrfusion.params import Params, fields_of

log = logging.getLogger(__name__)


# what a frozen model's vectors must have been made with (cxrfusion/image_encoder.py's reading)
READING = ("model", "revision", "pooling", "size", "fit", "fingerprint")


@dataclass
class Split:
    rows: pd.DataFrame               # uid, filename, view, label, split
    images: torch.Tensor | None      # uint8 (N, S, S), a frozen arm's float32 (N, D) vectors, or
                                     # None when the variant reads no image
    text: torch.Tensor | None        # float32 (N, D), or None when the variant reads no text
    labels: torch.Tensor             # int64 (N,)
    cache_rows: np.ndarray | None = None  # streaming: the row of images.h5 of each sample
    workers: int = 0                 # streaming: loader processes
    host_images: bool = False        # images kept in host memory, copied to the device per batch

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
            if not index:
                return
            host = torch.cat(index)
            flat = host.to(device, non_blocking=True)  # one copy of the epoch's indices
            sizes = [len(i) for i in index]
            for on_host, idx in zip(host.split(sizes), flat.split(sizes)):
                if self.images is None:
                    images = None
                elif self.host_images:  # the GPU had no room for them: copy the batch over
                    images = self.images[on_host].to(device, non_blocking=True)
                else:
                    images = self.images[idx]
                yield idx, images, None if self.text is None else self.text[idx], self.labels[idx]
            return
        # one item = one whole batch (batch_size=None): a single HDF5 read per batch
        loader = DataLoader(CachedImages(IMAGES_H5, self.cache_rows),
                            sampler=[i.numpy() for i in index],
                            batch_size=None, num_workers=self.workers,
                            pin_memory=device.type == "cuda",
                            # not the global one: dropout stays as in memory
                            generator=torch.Generator())
        for idx, pixels in zip(index, loader):
            idx = idx.to(device, non_blocking=True)
            yield (idx, pixels.to(device, non_blocking=True),
                   None if self.text is None else self.text[idx], self.labels[idx])

    def to(self, device, images_too: bool = True) -> "Split":
        """The split on `device` (uint8 images: 7,466 at 240 px are 430 MB). With
        images_too=False the images stay in host memory and each batch is copied over."""
        def move(t):
            return None if t is None else t.to(device)  # no page-locked copy of a whole split
        return Split(self.rows, move(self.images) if images_too else self.images,
                     move(self.text), move(self.labels), self.cache_rows, self.workers,
                     host_images=self.images is not None and not images_too)

    def study_text(self) -> torch.Tensor:
        """The report vectors, one row a study (the rows hold one per image)."""
        first = ~self.rows["uid"].duplicated().to_numpy()
        return self.text[torch.from_numpy(first).to(self.text.device)]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors `to` moves."""
        return sum(t.numel() * t.element_size() for t in (self.images, self.text, self.labels)
                   if t is not None)


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


def run_splits(p: Params, run: Run, names: tuple[str, ...] = SPLITS,
               text_input: str | None = None,
               encoder: dict | None = None) -> tuple[dict[str, Split], int]:
    """What a run is fed, in every stage that feeds it (train, evaluate, explain): its images
    when its variant reads them, the vectors of its text input (`text_input` instead: explain's
    swap of the image model's report; the placebo reads its input's shuffled vectors). The one
    place an arm's own inputs are made. `encoder`: the frozen image encoder a trained frozen
    model recorded (model.json's image_encoder), which the cache must still hold."""
    arm = params.row(run.variant)
    if arm.frozen_image:
        return frozen_splits(p, text_input or run.text_input, names, encoder, run.image_alias)
    return load_splits(p, arm.reads_image, text_input or run.text_input, names,
                       shuffled=arm.shuffled, alias=run.text_alias)


def frozen_splits(p: Params, text_input: str | None, names: tuple[str, ...] = SPLITS,
                  encoder: dict | None = None,
                  alias: str | None = None) -> tuple[dict[str, Split], int]:
    """A frozen arm's Splits: load_splits' rows and report vectors (the default text
    encoder's), the images as the vectors of the frozen image encoder `alias` (float32, N x D,
    in `images`). `encoder`: the encoder a trained model recorded: a cache made by other
    weights, or read otherwise, is refused."""
    splits, text_dim = load_splits(p, False, text_input, names)
    cache = frozen_cache(alias)
    filenames, vectors, attrs = read_frozen_cache(cache)
    if encoder is not None:
        wrong = [k for k in READING if attrs.get(k) != encoder.get(k)]
        if wrong:
            raise PipelineError(
                f"{cache} was not made by the encoder the model was trained on ("
                + "; ".join(f"{k}: the cache has {attrs.get(k)!r}, the model {encoder.get(k)!r}"
                            for k in wrong)
                + f"): its vectors would be read as another encoder's. Embed the images again "
                  f"with that encoder (`dvc repro embed_images@{alias}`) or retrain "
                  "the model on this one (`dvc repro`).")
    row_of = pd.Series(np.arange(len(filenames)), index=filenames)
    for split in splits.values():
        missing = ~split.rows["filename"].isin(row_of.index)
        if missing.any():
            raise PipelineError(f"{cache} has no vector for {missing.sum()} images of {IMAGES} "
                                f"(first: {split.rows.loc[missing, 'filename'].iloc[0]}); rebuild "
                                f"it with `dvc repro embed_images@{alias}`.")
        split.images = torch.from_numpy(vectors[row_of[split.rows["filename"]].to_numpy()])
    return splits, text_dim


def load_splits(p: Params, uses_image: bool, text_input: str | None,
                names: tuple[str, ...] = SPLITS,
                shuffled: bool = False,
                alias: str | None = None) -> tuple[dict[str, Split], int]:
    """The Splits `names` (train, val, test), with the images when `uses_image` and the report
    vectors of `text_input` unless it is None (its shuffled cache when `shuffled`), and the
    vector size (0 when no text is read).

    Only the rows of those splits are read. Their pixels are one array, each Split a view of
    its own slice of it: one copy of what is scored in host memory, however many splits.
    """
    _, rows = read_prepared()
    rows = _without_skipped(rows, uses_image)
    for name in names:
        if not (rows["split"] == name).any():
            raise PipelineError(f"no images in split {name!r}: the dataset is too small for "
                                "split.test / split.val.")
    rows = pd.concat([rows.loc[rows["split"] == name] for name in names], ignore_index=True)
    text_dim, vectors_by_row, pixels_by_row, cache_rows = 0, None, None, None
    if text_input is not None:
        cache = text_cache(text_input, shuffled, alias)  # alias: a text.encoders entry's
        expect = text_cache_attrs(params.text_reader(p, alias), fields_of(text_input))
        uids, vectors, attrs = read_text_cache(cache, expect=expect)
        row_of = pd.Series(np.arange(len(uids)), index=uids)
        missing = ~rows["uid"].isin(row_of.index)
        if missing.any():
            raise PipelineError(f"{cache} has no vector for {missing.sum()} studies of "
                                "images.csv; rebuild it with `dvc repro "
                                f"{'shuffle_reports' if shuffled else 'embed_text'}`.")
        vectors_by_row = vectors[row_of[rows["uid"]].to_numpy()]
        text_dim = int(attrs["dim"])
    if uses_image:
        expect = {"size": p.image.size, "fit": p.image.fit}
        filenames = read_image_filenames(IMAGES_H5, expect=expect)
        cache_rows = (pd.Series(np.arange(len(filenames)), index=filenames)[rows["filename"]]
                      .to_numpy())
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # each holds its own copy
        gigabytes = len(rows) * p.image.size ** 2 / 1e9 * processes
        if gigabytes <= p.train.in_memory_gb:
            pixels_by_row = torch.from_numpy(read_image_rows(IMAGES_H5, cache_rows, expect))
            cache_rows = None
        else:
            log.info("images: %.1f GB > train.in_memory_gb=%s: streamed from %s by %d loader "
                     "processes", gigabytes, p.train.in_memory_gb, IMAGES_H5,
                     p.train.workers)

    splits, start = {}, 0
    for name in names:
        n = int((rows["split"] == name).sum())
        part = slice(start, start + n)  # rows are grouped by split: each split is one slice
        start += n
        splits[name] = Split(
            rows.iloc[part].reset_index(drop=True),
            None if pixels_by_row is None else pixels_by_row[part],  # a view: no copy
            None if vectors_by_row is None else torch.from_numpy(vectors_by_row[part]),
            torch.tensor(rows["label"].to_numpy(np.int64)[part]),
            None if cache_rows is None else cache_rows[part], p.train.workers)
    return splits, text_dim


def _without_skipped(rows: pd.DataFrame, uses_image: bool) -> pd.DataFrame:
    """`rows` less the images `cache_images` skipped as unreadable (image.skip_bad), for every
    variant, so that all variants train and are scored on the same rows. A variant that reads
    images checks the image cache itself; the text variant reads the list of skipped images
    from features/images_counts.json (it must not depend on the pixels)."""
    if uses_image:
        cached = rows["filename"].isin(read_image_filenames(IMAGES_H5)).to_numpy()
        if not cached.all():
            stale = ~cached & ~rows["filename"].isin(read_skipped_images(IMAGES_H5)).to_numpy()
            if stale.any():
                raise PipelineError(
                    f"{IMAGES_H5} neither holds nor skipped {stale.sum()} images of {IMAGES} "
                    f"(first: {rows.loc[stale, 'filename'].iloc[0]}): it was made from another "
                    "images.csv; rebuild it with `dvc repro cache_images`.")
    else:
        counts = read_image_counts(IMAGES_COUNTS)
        unknown = set(counts["skipped_images"]) - set(rows["filename"])
        if counts["cached"] + counts["skipped"] != len(rows) or unknown:
            raise PipelineError(
                f"{IMAGES_COUNTS} counts {counts['cached'] + counts['skipped']} images but "
                f"{IMAGES} has {len(rows)}: it was made from another images.csv; rebuild it "
                "with `dvc repro cache_images`.")
        cached = ~rows["filename"].isin(counts["skipped_images"]).to_numpy()
    if not cached.all():
        log.warning("%d images of %s were skipped as unreadable by cache_images: left out",
                    (~cached).sum(), IMAGES)
    return rows.loc[cached].reset_index(drop=True)
