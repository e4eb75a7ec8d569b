"""Measures bench/README.md's project_loop, compute_ceiling and options sections, with random
weights and a synthetic image cache: python bench/loop.py [--tiny] [--device cpu] [--compile]

  project_loop    cxrfusion.imaging.cache_images -> features HDF5 ->
                  cxrfusion.formats.read_image_cache -> cxrfusion.dataset.Split on the device ->
                  cxrfusion.training.train_epoch (Classifier "fusion", bf16 autocast,
                  channels_last). Images/s over whole epochs at the study's batch 64 and at the
                  largest useful batch (larger batches are tried until one gains <= 5 % or runs
                  out of memory); also the text-only variant at the default batch.
  compute_ceiling the same model and batch on one fixed batch already on the device:
                  normalise + forward + backward + Adam step. project_loop / compute_ceiling
                  says how much the loop itself costs.
  options         train.deterministic=true at the default batch (deterministic kernels, no
                  cuDNN autotuning) and, with --compile, train.compile=true: images/s and the
                  ratio to the default; an option that fails is recorded, not raised.

Alone it prints those three sections as one JSON object (--compile-limit S gives compiling up
after S seconds); bench/benchmark.py runs them too.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `cxrfusion`

# bench.common first: it sets environment defaults that must precede importing torch
from bench.common import (
    FIT,
    LR,
    TEXT_DIM,
    Sizes,
    add_compile_options,
    free_memory,
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
import pandas as pd
import torch
import torch.nn.functional as F

from cxrfusion.dataset import Split
from cxrfusion.formats import read_image_cache
from cxrfusion.model import Classifier, normalise
from cxrfusion.training import configure_torch, train_epoch

MIN_GAIN = 0.05  # a larger batch is "useful" when it is more than 5 % faster


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise TimeoutError in this (main) thread after `seconds`: a measurement that would
    outlast the machine's lease gives up and the rest of the result is kept."""
    def expire(signum, frame):
        raise TimeoutError(f"gave up after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def load_split(cache: Path, size: int, n: int, device: torch.device) -> tuple[Split, float]:
    """A Split of n rows built from the project's image cache (its rows repeated), random report
    vectors and labels, moved to the device with Split.to; and the seconds that move took."""
    filenames, pixels = read_image_cache(cache, expect={"size": size, "fit": FIT})
    take = np.arange(n) % len(pixels)
    rng = np.random.default_rng(0)
    labels = (rng.random(n) < 0.64).astype(np.int64)  # IU X-ray: 64 % abnormal
    rows = pd.DataFrame({"uid": np.arange(n) // 2, "filename": filenames[take], "label": labels})
    split = Split(rows, torch.from_numpy(pixels[take]),
                  torch.from_numpy(rng.standard_normal((n, TEXT_DIM), dtype=np.float32)),
                  torch.from_numpy(labels))
    start = time.perf_counter()
    split = split.to(device)
    sync(device)
    return split, time.perf_counter() - start


def new_classifier(variant: str, device: torch.device):
    """The model and optimizer as cxrfusion.training.build builds them at the defaults (concat
    fusion, one Adam learning rate, no augmentation; random backbone)."""
    torch.manual_seed(0)
    model = Classifier(variant, TEXT_DIM, "efficientnet_b1").to(  # the real study's CNN
        device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=LR)
    return model, optimizer


# --- project_loop ----------------------------------------------------------------------------

def measure_epochs(variant: str, split: Split, batch: int, s: Sizes, device: torch.device,
                   compile: bool = False) -> float:
    """Images/s of cxrfusion.training.train_epoch over whole epochs, after warm-up epochs (which
    include torch.compile's compiling when `compile`: as cxrfusion.training.build wraps the
    model)."""
    model, optimizer = new_classifier(variant, device)
    step = torch.compile(model) if compile else model
    generator = torch.Generator().manual_seed(0)
    epoch = 0
    start = time.perf_counter()
    for epoch in range(1, s.warmup_epochs + 1):
        train_epoch(step, optimizer, split, batch, generator, amp=True, epoch=epoch, progress=False)
    sync(device)
    log.info("%s batch %d: %d warm-up epoch(s) in %.1f s%s", variant, batch, s.warmup_epochs,
             time.perf_counter() - start, " (compiling included)" if compile else "")
    start, seen = time.perf_counter(), 0
    for epoch in range(epoch + 1, epoch + 1 + s.timed_epochs):
        rows, _, _ = train_epoch(step, optimizer, split, batch, generator, amp=True, epoch=epoch,
                                 progress=False)
        seen += len(rows)
    sync(device)
    return seen / (time.perf_counter() - start)


def sweep_batches(measure, default: int, larger: tuple, min_gain: float = MIN_GAIN):
    """measure(batch) at `default`, then at each larger batch while each gains > min_gain over
    the last useful one; a batch that runs out of GPU memory ends the sweep.

    Returns ({batch: images/s}, the largest useful batch, [batches that ran out of memory])."""
    rates, oom = {default: measure(default)}, []
    best = default
    for batch in larger:
        try:
            rates[batch] = measure(batch)
        except torch.cuda.OutOfMemoryError:
            log.info("batch %d: out of GPU memory; the sweep stops", batch)
            oom.append(batch)
            break
        if rates[batch] <= rates[best] * (1 + min_gain):
            log.info("batch %d: %.0f images/s, not > %d %% faster than batch %d; the sweep stops",
                     batch, rates[batch], round(100 * min_gain), best)
            break
        best = batch
    return rates, best, oom


def measure_project_loop(s: Sizes, split: Split, device: torch.device) -> dict:
    configure_torch(device, False)
    peaks = {}

    def measure(batch: int) -> float:
        free_memory(device)
        try:
            rate = measure_epochs("fusion", split, batch, s, device)
        finally:
            peaks[batch] = peak_gib(device)
            free_memory(device)  # after an out-of-memory error too
        log.info("project_loop: batch %d: %.1f images/s", batch, rate)
        return rate

    rates, best, oom = sweep_batches(measure, s.default_batch, s.larger_batches)
    free_memory(device)  # what an out-of-memory error's traceback held
    text_rate = measure_epochs("text", split, s.default_batch, s, device)
    log.info("project_loop: text-only variant, batch %d: %.0f images/s", s.default_batch, text_rate)
    return {"images_per_s": rates[best], "best_batch": best,
            "images_per_s_default_batch": rates[s.default_batch], "default_batch": s.default_batch,
            "images_per_s_by_batch": {str(b): r for b, r in rates.items()},
            "out_of_memory_batches": oom,
            "peak_gib_by_batch": {str(b): peaks.get(b) for b in rates},
            "text_only_images_per_s": text_rate, "image_size": s.cache_size,
            "images_per_epoch": len(split), "warmup_epochs": s.warmup_epochs,
            "timed_epochs": s.timed_epochs, "amp_bf16": device.type == "cuda"}


# --- compute_ceiling -------------------------------------------------------------------------

def ceiling_step(split: Split, batch: int, device: torch.device):
    """normalise + forward (bf16 autocast on CUDA) + backward + Adam step of a new fusion model
    on one fixed batch already on the device, as a function of no arguments."""
    model, optimizer = new_classifier("fusion", device)
    model.train()
    idx = torch.arange(batch, device=split.labels.device) % len(split)
    images, text, labels = split.images[idx].contiguous(), split.text[idx], split.labels[idx]
    mean, std = model.input_stats()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(normalise(images, mean, std), text).float()
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure_compute_ceiling(s: Sizes, split: Split, batch: int, device: torch.device) -> float:
    """Images/s of ceiling_step: the loop without indexing, shuffling or bookkeeping."""
    free_memory(device)
    step = ceiling_step(split, batch, device)
    for _ in range(s.ceiling_warmup_steps):
        step()
    steps = max(s.ceiling_min_steps, s.train_images // batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    rate = steps * batch / (time.perf_counter() - start)
    log.info("compute_ceiling: batch %d: %.1f images/s", batch, rate)
    del step  # and with it the model and optimizer it holds, before free_memory
    free_memory(device)
    return rate


# --- options ---------------------------------------------------------------------------------

def measure_options(s: Sizes, split: Split, device: torch.device, compile: bool,
                    compile_limit_s: int = 300) -> dict:
    """What train.deterministic=true costs, and (when asked) what train.compile=true gains, at
    the default batch. An error (an operation without a deterministic kernel, a compiler that
    fails) is recorded, not raised: it is a finding about that option."""
    out = {"batch_size": s.default_batch}
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")  # configure_torch sets it
    configure_torch(device, True)
    try:
        out["deterministic_images_per_s"] = measure_epochs("fusion", split, s.default_batch, s,
                                                           device)
        log.info("train.deterministic: %.1f images/s", out["deterministic_images_per_s"])
    except RuntimeError as err:
        out["deterministic_error"] = f"{type(err).__name__}: {str(err)[:400]}"
        log.warning("train.deterministic failed: %s", out["deterministic_error"])
    finally:
        torch.use_deterministic_algorithms(False)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        configure_torch(device, False)
        free_memory(device)
    if compile:
        start = time.perf_counter()
        try:
            with time_limit(compile_limit_s):
                out["compiled_images_per_s"] = measure_epochs("fusion", split, s.default_batch, s,
                                                              device, compile=True)
            log.info("train.compile: %.1f images/s", out["compiled_images_per_s"])
        except Exception as err:  # noqa: BLE001 - inductor raises many kinds
            out["compile_error"] = f"{type(err).__name__}: {str(err)[:400]}"
            log.warning("train.compile failed: %s", out["compile_error"])
        out["compile_measure_s"] = time.perf_counter() - start
        free_memory(device)
    return out


# --- the sections, as bench/benchmark.py and this script run them ----------------------------

def measure_loop_sections(s: Sizes, cache: Path, device: torch.device, result: dict) -> Split:
    """project_loop, then compute_ceiling at its default and best batch, into `result` (each
    once complete); returns the Split on the device, for options."""
    split, to_device_s = load_split(cache, s.cache_size, s.train_images, device)
    loop = {**measure_project_loop(s, split, device), "split_to_device_s": to_device_s}
    result["project_loop"] = loop
    ceiling = {b: measure_compute_ceiling(s, split, b, device)
               for b in sorted({loop["default_batch"], loop["best_batch"]})}
    result["compute_ceiling"] = {"images_per_s": ceiling[loop["best_batch"]],
                                 "batch_size": loop["best_batch"],
                                 "images_per_s_by_batch": {str(b): r for b, r in ceiling.items()}}
    return split


def measure_options_section(s: Sizes, split: Split, device: torch.device, result: dict,
                            compile: bool, compile_limit_s: int) -> None:
    """options, with each option's ratio to result["project_loop"] at the default batch."""
    options = measure_options(s, split, device, compile, compile_limit_s)
    for name in ("deterministic", "compiled"):
        if f"{name}_images_per_s" in options:
            options[f"{name}_vs_default"] = (options[f"{name}_images_per_s"]
                                             / result["project_loop"]["images_per_s_default_batch"])
    result["options"] = options


# --- alone -----------------------------------------------------------------------------------

def measure(s: Sizes, device: torch.device, result: dict, work: Path, args) -> None:
    """The image cache that bench/benchmark.py's cache_images section writes (all cores; not
    timed here), then project_loop, compute_ceiling and options."""
    inputs = make_inputs(s, work, result, encoder=False)
    n, cores = image_cache_rows(s)
    cache = work / "images.h5"
    write_image_cache(inputs, n, cache, s.cache_size, cores)
    split = measure_loop_sections(s, cache, device, result)
    measure_options_section(s, split, device, result, args.compile, args.compile_limit)


if __name__ == "__main__":
    main("loop", __doc__.split("\n\n")[0], measure, add_options=add_compile_options)
