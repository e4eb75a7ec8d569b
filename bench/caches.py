"""Measures bench/README.md's cache_images and embed_text sections: the two caches the project
builds before training: python bench/caches.py [--tiny] [--device cpu]

  cache_images    cxrfusion.imaging.cache_images on full-size synthetic PNGs, 1 process vs
                  os.cpu_count() processes; scaling efficiency = all / (cores x one).
  embed_text      cxrfusion.text_encoder.embed over 3,851 reports of IU X-ray length with a
                  BERT-base-size encoder (cxrfusion.demo_encoder tokenizer, random weights).

Alone it prints those two sections as one JSON object; bench/benchmark.py runs them too.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `cxrfusion`

# bench.common first: it sets environment defaults that must precede importing torch
from bench.common import (
    STUDY_REPORTS,
    Inputs,
    Sizes,
    image_cache_rows,
    log,
    main,
    make_inputs,
    peak_gib,
    sync,
    write_image_cache,
)

# isort: split
import numpy as np
import torch

from cxrfusion.text_encoder import embed, load_encoder

# --- cache_images ----------------------------------------------------------------------------

def time_cache_images(inputs: Inputs, n: int, out: Path, size: int, workers: int) -> float:
    """Images/s of cxrfusion.imaging.cache_images over n files (the PNGs cycled)."""
    start = time.perf_counter()
    write_image_cache(inputs, n, out, size, workers)
    return n / (time.perf_counter() - start)


def measure_cache_images(s: Sizes, inputs: Inputs) -> tuple[dict, Path]:
    """Rates with 1 process and with os.cpu_count() processes; the latter's HDF5 file is the
    image cache the project loop reads."""
    one = time_cache_images(inputs, s.cache_images_one, inputs.work / "images_1.h5",
                            s.cache_size, 1)
    cache = inputs.work / "images.h5"
    n_all, cores = image_cache_rows(s)
    every = time_cache_images(inputs, n_all, cache, s.cache_size, cores)
    efficiency = every / (cores * one)
    log.info("cache_images: %.1f images/s with 1 process, %.1f with %d (efficiency %.2f)",
             one, every, cores, efficiency)
    return {"images_per_s_1_worker": one, "images_per_s_all_workers": every, "workers": cores,
            "scaling_efficiency": efficiency, "images_1_worker": s.cache_images_one,
            "images_all_workers": n_all, "png_size": s.png_size, "cache_size": s.cache_size}, cache


# --- embed_text ------------------------------------------------------------------------------

def measure_embed_text(s: Sizes, folder: Path, texts: list[str], device: torch.device) -> dict:
    start = time.perf_counter()
    tokenizer, model = load_encoder(str(folder), None, device)
    sync(device)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors = embed(texts, tokenizer, model, "cls", 512, s.embed_batch, device, progress=False)
    sync(device)
    seconds = time.perf_counter() - start
    assert vectors.shape == (len(texts), model.config.hidden_size) and np.isfinite(vectors).all()
    tokens = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    rate = len(texts) / seconds
    log.info("embed_text: %d reports in %.2f s: %.0f reports/s", len(texts), seconds, rate)
    cfg = model.config
    return {"reports_per_s": rate, "reports": len(texts), "seconds": seconds,
            "seconds_for_3851": STUDY_REPORTS / rate, "load_s": load_s,
            "batch_size": s.embed_batch, "pooling": "cls", "max_length": 512,
            "bf16": device.type == "cuda",
            "median_words": float(np.median([len(t.split()) for t in texts])),
            "median_tokens": float(np.median(tokens)), "max_tokens": int(max(tokens)),
            "encoder": {"hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                        "heads": cfg.num_attention_heads,
                        "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size},
            "peak_gib": peak_gib(device)}


# --- alone -----------------------------------------------------------------------------------

def measure(s: Sizes, device: torch.device, result: dict, work: Path, args) -> None:
    inputs = make_inputs(s, work, result)
    # forks first: see write_image_cache
    result["cache_images"], _ = measure_cache_images(s, inputs)
    result["embed_text"] = measure_embed_text(s, inputs.encoder, inputs.texts, device)


if __name__ == "__main__":
    main("caches", __doc__.split("\n\n")[0], measure)
