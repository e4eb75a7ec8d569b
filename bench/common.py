"""What two or more of bench/'s measuring scripts share; not run itself (bench/README.md).

Imported first by benchmark.py, original_step.py, loop.py, caches.py, augment.py and
backbones.py, as `bench.common` once they have put the repository root on sys.path (so that
`cxrfusion` is this checkout's): it sets the environment defaults that must be in place before
torch is imported. It holds the study's constants, the sizes (full and --tiny), the device and
timing helpers, the synthetic PNGs, reports and encoder, the image cache the loop reads, JSON
rounding, and the command line (SIGTERM handling included).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would clutter the log (read when tqdm
#                                            is imported: before torch, which imports it)

import numpy as np
import torch
from PIL import Image

from cxrfusion.common import PipelineError, resolve_device, setup_logging
from cxrfusion.demo_encoder import build as build_encoder
from cxrfusion.imaging import cache_images
from cxrfusion.sources.demo import FINDINGS, _study, draw_xray

log = logging.getLogger("benchmark")  # one logger for every script: the same log lines

# The real study (the Kaggle release's CSVs, params.yaml, README "Running the real study")
STUDY_IMAGES = 7_466
STUDY_REPORTS = 3_851
REPORT_WORDS_MEDIAN, REPORT_WORDS_P95, REPORT_WORDS_MAX = 34, 76, 230
TEXT_DIM = 768  # BioBERT / BERT-base
FIT = "pad"  # image.fit: the default; synthetic PNGs are square, so any fit gives the same pixels
LR = 3e-3


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the real-size run and the --tiny smoke test."""
    mode: str
    png_size: int = 2048           # side of the synthetic PNGs (IU X-ray: about 2,000 px)
    pngs: int = 32                 # distinct PNG files, cycled over
    # original_step
    notebook_size: int = 224
    notebook_batch: int = 8
    notebook_workers: int = 2
    notebook_tokens: int = 512
    notebook_warmup_steps: int = 3
    notebook_steps: int = 48
    notebook_bert: dict = field(default_factory=dict)  # BertConfig() overrides: {} is BERT-base
    # project_loop and compute_ceiling
    cache_size: int = 240
    train_images: int = 6_000
    default_batch: int = 64
    larger_batches: tuple = (128, 256, 512)
    warmup_epochs: int = 1
    timed_epochs: int = 2
    ceiling_warmup_steps: int = 5
    ceiling_min_steps: int = 20
    # embed_text
    reports: int = STUDY_REPORTS
    embed_batch: int = 128
    encoder: dict = field(default_factory=lambda: {"hidden_size": 768, "layers": 12, "heads": 12,
                                                   "intermediate_size": 3072})
    # cache_images: images decoded by 1 process, and per process when all cores decode
    cache_images_one: int = 64
    cache_images_per_worker: int = 64


FULL = Sizes("full")
TINY = Sizes("tiny", png_size=64, pngs=8,
             notebook_size=32, notebook_tokens=64, notebook_warmup_steps=1, notebook_steps=2,
             notebook_bert={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "intermediate_size": 128},
             cache_size=32, train_images=48, default_batch=8, larger_batches=(16,),
             timed_epochs=1, ceiling_warmup_steps=1, ceiling_min_steps=2,
             reports=40, embed_batch=16,
             encoder={"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128},
             cache_images_one=8, cache_images_per_worker=8)


# --- the device and timing ------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    import timm
    import torchvision
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}


# --- synthetic inputs -----------------------------------------------------------------------

def _write_png(job: tuple[Path, int, int]) -> int:
    path, size, seed = job
    rng = np.random.default_rng(seed)
    shown = [f for f in sorted(FINDINGS) if rng.random() < 0.3]
    view = "Frontal" if seed % 2 == 0 else "Lateral"
    Image.fromarray(draw_xray(rng, size, view, shown)).save(path)  # 8-bit grayscale PNG
    return path.stat().st_size


def write_pngs(folder: Path, n: int, size: int) -> tuple[list[str], float]:
    """n distinct synthetic X-rays of size x size px, drawn in parallel: their file names and
    mean size in MB (IU X-ray's PNGs: about 2,000 px, 1.5-2 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"{i}_IM-{i:04d}-1001.dcm.png", size, i) for i in range(n)]
    start = time.perf_counter()
    with ProcessPoolExecutor(min(n, os.cpu_count() or 1)) as pool:
        nbytes = list(pool.map(_write_png, jobs))
    log.info("wrote %d synthetic PNGs of %d px (%.2f MB each) in %.1f s", n, size,
             np.mean(nbytes) / 1e6, time.perf_counter() - start)
    return [path.name for path, _, _ in jobs], float(np.mean(nbytes)) / 1e6


def synthetic_reports(n: int, seed: int = 0) -> list[str]:
    """n findings+impression texts with IU X-ray's length distribution (median 34 words, 95th
    percentile 76): each starts with one synthetic study's findings and impression and goes on
    with further studies' until it reaches a length drawn from a log-normal."""
    rng = np.random.default_rng(seed)
    sigma = math.log(REPORT_WORDS_P95 / REPORT_WORDS_MEDIAN) / 1.645
    lengths = np.clip(np.rint(rng.lognormal(math.log(REPORT_WORDS_MEDIAN), sigma, n)), 3,
                      REPORT_WORDS_MAX).astype(int)
    texts, uid = [], 0
    for length in lengths:
        words: list[str] = []
        while len(words) < length:
            row, _ = _study(rng, uid, 0.05)
            uid += 1
            words += " ".join(t for t in (row["findings"], row["impression"]) if t).split()
        texts.append(" ".join(words[:length]))
    return texts


def make_encoder(folder: Path, texts: list[str], encoder: dict, seed: int = 0) -> Path:
    """The project's offline encoder (WordPiece vocabulary trained on `texts`, random BertModel)
    at the given size. demo_encoder.build fixes the feed-forward width at 2 x hidden; BERT-base
    has 4 x (3,072), so the model is re-initialised with that width when asked."""
    from transformers import BertConfig, BertModel

    build_encoder(texts, folder, vocab_size=28_996, hidden_size=encoder["hidden_size"],
                  layers=encoder["layers"], heads=encoder["heads"], seed=seed)
    config = BertConfig.from_pretrained(folder)
    if config.intermediate_size != encoder["intermediate_size"]:
        config.intermediate_size = encoder["intermediate_size"]
        torch.manual_seed(seed)
        BertModel(config).save_pretrained(folder)
    return folder


@dataclass
class Inputs:
    """The synthetic inputs of one run, in its temporary folder."""
    work: Path
    png_dir: Path
    names: list
    texts: list
    encoder: Path | None = None


def make_inputs(s: Sizes, work: Path, result: dict, encoder: bool = True) -> Inputs:
    """The PNGs and the reports (their description in result["inputs"]) and, when asked, the
    encoder. Call it before anything tokenises in this process (see write_image_cache)."""
    png_dir = work / "png"
    names, png_mb = write_pngs(png_dir, s.pngs, s.png_size)
    texts = synthetic_reports(s.reports)
    result["inputs"] = {"pngs": len(names), "png_size": s.png_size, "png_mb": png_mb,
                        "reports": len(texts),
                        "report_median_words": float(np.median([len(t.split()) for t in texts]))}
    folder = make_encoder(work / "encoder", texts, s.encoder) if encoder else None
    return Inputs(work, png_dir, names, texts, folder)


# --- the image cache the project loop reads (caches.py times it, loop.py writes it) ----------

def write_image_cache(inputs: Inputs, n: int, out: Path, size: int, workers: int) -> dict:
    """cxrfusion.imaging.cache_images over n files (the PNGs cycled) into `out`.

    It forks a pool: every fork (this pool, the DataLoader's workers) must happen before the
    process first tokenises in parallel (embed_text), or it can deadlock (torch.compile's
    workers are started with fork + exec: safe)."""
    filenames = [inputs.names[i % len(inputs.names)] for i in range(n)]
    report = cache_images(filenames, inputs.png_dir, out, size, FIT, skip_bad=False,
                          workers=workers)
    assert report["cached"] == n, report
    return report


def image_cache_rows(s: Sizes) -> tuple[int, int]:
    """(images, processes) of the image cache the project loop reads: the one cache_images
    writes with all cores."""
    cores = os.cpu_count() or 1
    return s.cache_images_per_worker * cores, cores


# --- one script's run: options, header, SIGTERM, JSON out ------------------------------------

def rnd(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits + 1}g}") if x and math.isfinite(x) else x


def rounded(obj):
    if isinstance(obj, float):
        return rnd(obj, 4)
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    return obj


class Stopped(BaseException):
    """SIGTERM (a `timeout`, a lease that ends): not an Exception, so that no measurement's
    error handling swallows it."""


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    """--compile and --compile-limit (benchmark.py and loop.py)."""
    parser.add_argument("--compile", action="store_true",
                        help="also measure train.compile=true at the default batch (the warm-up "
                             "epoch includes the compiling)")
    parser.add_argument("--compile-limit", type=int, default=300, metavar="S",
                        help="give the compiled measurement up after S seconds (default 300)")


def main(name: str, description: str, measure, argv=None, add_options=None) -> None:
    """The command line of every script in bench/ that measures on a device: --tiny and
    --device (and what add_options adds). Every result starts with the mode, the machine, the
    versions and the sizes; then measure(s, device, result, work, args) fills `result` in a
    temporary folder `work` that is removed at the end (a section appears once complete); then
    benchmark_s. `result` is printed as one JSON object on stdout, also when SIGTERM stops the
    run (with "stopped"; exit status 1)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes: a CPU smoke test of every code path (< 1 minute)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda when present) | cpu | cuda[:N]")
    if add_options is not None:
        add_options(parser)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        device = resolve_device(args.device)
    except PipelineError:
        parser.error(f"--device {args.device}: no CUDA GPU is visible; use auto or cpu")
    s = TINY if args.tiny else FULL
    if args.tiny:
        # a smoke test shares its cores with whatever else runs: with 2 intra-op threads
        # spinning on 2 busy cores a 32 px step took 14 s instead of 0.3 s
        torch.set_num_threads(1)
    log.info("%s, %s mode, on %s (%s), %d CPU cores", name, s.mode, device, device_name(device),
             os.cpu_count())

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    result: dict = {}
    try:
        started = time.perf_counter()
        result.update(mode=s.mode, device=device_name(device), device_type=device.type,
                      cpu_count=os.cpu_count(), versions=versions(), sizes=asdict(s))
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            measure(s, device, result, Path(tmp), args)
        result["benchmark_s"] = time.perf_counter() - started
        if "all_targets_pass" in result:  # benchmark.py's
            log.info("done in %.0f s; all targets pass: %s", result["benchmark_s"],
                     result["all_targets_pass"])
        else:
            log.info("done in %.0f s", result["benchmark_s"])
    except Stopped as why:  # what was measured is still printed
        result["stopped"] = f"{why} before the end: only the sections present were measured"
        log.error("stopped by %s: printing the sections measured so far", why)
    json.dump(rounded(result), sys.stdout, indent=2)
    sys.stdout.write("\n")
    if "stopped" in result:
        sys.exit(1)
