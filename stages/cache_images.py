"""Stage `cache_images`: decode every image once into features/images.h5 (uint8, S x S, fitted
to the square as `image.fit` says: see stages/imaging.py).

Decoding a 2,000 px PNG costs ~50-85 ms; doing it once here instead of in every epoch is what
lets training read only small arrays. All CPU cores decode in parallel.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import h5py
import numpy as np
from tqdm import tqdm

from stages import params
from stages.common import PipelineError, atomic_path, main, write_json
from stages.formats import (IMAGES_H5, IMAGES_REPORT, IMAGES_SUBDIR, RAW, create_image_cache,
                            read_prepared)
from stages.imaging import BadImage, load_xray

log = logging.getLogger("cache_images")


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
    return {"cached": len(kept), "skipped": len(bad), "skipped_files": bad, "skipped_images": skipped}


def run(p: dict) -> None:
    _, images = read_prepared()
    report = cache_images(images["filename"].tolist(), RAW / IMAGES_SUBDIR, IMAGES_H5,
                          p["image"]["size"], p["image"]["fit"], p["image"]["skip_bad"])
    write_json(IMAGES_REPORT, report)


if __name__ == "__main__":
    main(lambda: run(params.load()))
