"""Stage `embed_images`: read every X-ray once with a frozen image encoder, one encoder at a time.

    python -m cxrfusion.launch frozen_image.nproc stages.embed_images demo_vit

    params  frozen_image.encoders.<alias>, frozen_image.batch_size, frozen_image.device,
            image.fit, image.skip_bad
    reads   data/prepared/images.csv, data/raw/images/images_normalized/,
            features/images_counts.json (the images cache_images skipped are left out here too,
            so that every arm reads the same images)
    writes  features/images/<alias>.h5: one vector an image, with the encoder's fingerprint

Each X-ray is decoded from the raw file at the encoder's own input side (not features/images.h5,
the CNN's small copies), on every CPU core; with several processes (GPUs) each embeds every n-th
batch and rank 0 writes the one file.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np

from cxrfusion import distributed, image_encoder, params
from cxrfusion.common import PipelineError, main
from cxrfusion.formats import (
    IMAGES_COUNTS,
    IMAGES_SUBDIR,
    RAW,
    frozen_cache,
    read_image_counts,
    read_prepared,
    write_frozen_cache,
)
from cxrfusion.imaging import load_xray
from cxrfusion.params import Params

log = logging.getLogger("embed_images")


def embed_images(alias: str, p: Params) -> None:
    f = p.frozen_image
    if alias not in f.encoders:
        raise PipelineError(
            f"image encoder {alias!r} is not one of frozen_image.encoders ("
            f"{', '.join(f.encoders)}): add it there (params.yaml, or `dvc exp run -S "
            f"'+frozen_image.encoders.{alias}={{model: ..., revision: null, pooling: cls, "
            "trust_remote_code: false}'`).")
    settings, out = f.encoders[alias], frozen_cache(alias)
    _, images = read_prepared()
    skipped = set(read_image_counts(IMAGES_COUNTS)["skipped_images"])
    filenames = [name for name in images["filename"] if name not in skipped]
    with distributed.running(f.device, "frozen_image.device") as world:
        encoder = image_encoder.load(settings, world.device)
        batches = [np.arange(i, min(i + f.batch_size, len(filenames)))
                   for i in range(0, len(filenames), f.batch_size)][world.rank::world.size]
        rows = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        start = time.perf_counter()
        decode = partial(load_xray, size=encoder.size, fit=p.image.fit)
        workers = max(1, (os.cpu_count() or 1) // world.size)
        with ProcessPoolExecutor(workers) as pool:
            pixels = decoded(pool, decode, [RAW / IMAGES_SUBDIR / filenames[r] for r in rows],
                             window=32 * f.batch_size)
            vectors = image_encoder.embed(pixels, len(rows), encoder, settings["pooling"],
                                          f.batch_size, world.device, progress=world.main)
        joined = distributed.joined_shares(out, rows, vectors, len(filenames), world)
        seconds = time.perf_counter() - start
        if world.main:
            rows, vectors = joined
            write_frozen_cache(out, [filenames[r] for r in rows], vectors,
                               image_encoder.reading(settings, encoder, p.image.fit))
            log.info("embedded %d images (%s: %s, %d px, %s pooling, %d dims) in %.1f s: "
                     "%.0f images/s on %d x %s", len(vectors), alias, settings["model"],
                     encoder.size, settings["pooling"], vectors.shape[1], seconds,
                     len(vectors) / seconds, world.size, world.device)


def decoded(pool, decode, paths: list, window: int):
    """decode(path) for each path, in order, decoded by `pool` at most two windows ahead of the
    encoder: Executor.map alone would decode every image at once and hold them all (MIMIC-CXR's
    377,110 at 518 px: 100 GB) whenever the encoder is the slower."""
    ahead = None
    for start in range(0, len(paths), window):
        submitted = pool.map(decode, paths[start:start + window], chunksize=8)
        if ahead is not None:
            yield from ahead
        ahead = submitted
    if ahead is not None:
        yield from ahead


if __name__ == "__main__":
    main(lambda: embed_images(sys.argv[1] if len(sys.argv) > 1 else "", params.load()))
