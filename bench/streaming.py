"""Measures docs/scaling.md's image-cache rows (its size on disk, streamed reads): how fast the
streamed image cache feeds training, and how big the cache is on disk.

    .venv/bin/python bench/streaming.py [--images 4000] [--size 240] [--batch 64]

Writes a throw-away cache in the format of features/images.h5 of random uint8 images in a
temporary folder (with the project's own writer, cxrfusion.formats.create_image_cache), then
reads whole epochs through cxrfusion.dataset.Split.batches, the path `train` takes when the
cache exceeds `train.in_memory_gb`, with 0, 1, 2, ... loader processes. Prints one JSON
object: bytes per cached image, the projected cache size for IU X-ray and MIMIC-CXR, and
images/s per setting. The file was just written, so it is read from the page cache: this is the
loader's ceiling, not the disk's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `cxrfusion`
from cxrfusion.dataset import Split
from cxrfusion.formats import IMAGES_H5, create_image_cache

IMAGES = {"iu_xray": 7470, "mimic_cxr": 377110}


def write_cache(n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    IMAGES_H5.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(IMAGES_H5, "w") as f:
        images = create_image_cache(f, n, size, "pad")
        for start in range(0, n, 256):
            block = min(256, n - start)
            images[start:start + block] = rng.integers(0, 256, (block, size, size), dtype=np.uint8)
        f.create_dataset("filenames", data=np.array([f"{i}.png" for i in range(n)], dtype=object),
                         dtype=h5py.string_dtype())


def epoch_rate(n: int, batch: int, workers: int) -> float:
    split = Split(pd.DataFrame({"row": np.arange(n)}), None, None, torch.zeros(n, dtype=torch.long),
                  cache_rows=np.arange(n), workers=workers)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).split(batch)
    start, seen = time.perf_counter(), 0
    for _, images, _, _ in split.batches(list(order)):
        seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000,
                    help="images in the test cache (default 4000)")
    ap.add_argument("--size", type=int, default=240,
                    help="image side, px (default 240: the real study)")
    ap.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    ap.add_argument("--workers", type=int, nargs="+", default=None,
                    help="loader processes to try (default 0 1 2 ... up to the CPU count)")
    a = ap.parse_args()
    workers = a.workers or list(range(0, (os.cpu_count() or 1) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        write_cache(a.images, a.size)
        per_image = IMAGES_H5.stat().st_size / a.images
        epoch_rate(a.images, a.batch, 0)  # warm the page cache
        rates = {str(w): round(epoch_rate(a.images, a.batch, w)) for w in workers}
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "torch": torch.__version__, "h5py": h5py.__version__,
        "images": a.images, "size": a.size, "batch": a.batch,
        "bytes_per_cached_image": round(per_image),
        "projected_cache_gb": {k: round(n * per_image / 1e9, 2) for k, n in IMAGES.items()},
        "streamed_images_per_s_by_workers": rates,
    }, indent=2))


if __name__ == "__main__":
    main()
