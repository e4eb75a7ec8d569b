"""Throughput benchmark: the original notebook's training step vs the project's cached pipeline.

Measures, in one process on one device (CUDA when present, else the CPU), with random weights
(same compute as the real checkpoints) and SYNTHETIC pictures and reports (cxrfusion/sources/demo.py):

  original_step   the notebook as it was: a Dataset that decodes full-size PNGs with PIL every
                  time (RGB, 224 px, ImageNet Normalize), DataLoader batch 8 / 2 workers, a frozen
                  BERT-base forward on 512-token padded text inside every step, torchvision
                  EfficientNet-B1 fully fine-tuned + MLP head, Adam, fp32. Images/s with loading.
  project_loop    the project's own code: cxrfusion.imaging.cache_images -> features HDF5 ->
                  cxrfusion.formats.read_image_cache -> cxrfusion.dataset.Split on the device ->
                  cxrfusion.training.train_epoch (Classifier "fusion", bf16 autocast, channels_last).
                  Images/s over whole epochs at the study's batch 64 and at the largest useful
                  batch (larger batches are tried until one gains <= 5 % or runs out of memory).
  compute_ceiling the same model and batch on one fixed batch already on the device:
                  normalise + forward + backward + Adam step. project_loop / compute_ceiling
                  says how much the loop itself costs.
  options         train.deterministic=true at the default batch (deterministic kernels, no
                  cuDNN autotuning) and, with --compile, train.compile=true: images/s and the
                  ratio to the default; an option that fails is recorded, not raised.
  embed_text      cxrfusion.text_encoder.embed over 3,851 reports of IU X-ray length with a
                  BERT-base-size encoder (cxrfusion.demo_encoder tokenizer, random weights).
  cache_images    cxrfusion.imaging.cache_images on full-size PNGs, 1 process vs all cores.
  projected_full_study_s
                  caches + 2 CNN variants x 40 epochs x 6,000 images + the text-only variant.

Prints one JSON object on stdout (progress goes to stderr). Nothing is downloaded; every file
is written to a temporary folder that is removed at the end.

On a GPU machine (one H100/H200), from the repository root:

    .venv/bin/python bench/benchmark.py --compile > bench/result.json

A CPU smoke test of every code path (tiny sizes, one intra-op thread, meaningless rates; under a
minute on 2 cores; tests/test_benchmark.py runs it):

    .venv/bin/python bench/benchmark.py --tiny --device cpu

The targets in the JSON are meant for the real-size GPU run.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `stages` is imported from this checkout

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would clutter the log (read when tqdm
#                                            is imported: before torch, which imports it)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from cxrfusion.imaging import cache_images  # noqa: E402
from cxrfusion.common import PipelineError, resolve_device, setup_logging  # noqa: E402
from cxrfusion.dataset import Split  # noqa: E402
from cxrfusion.sources.demo import FINDINGS, _study, draw_xray  # noqa: E402
from cxrfusion.demo_encoder import build as build_encoder  # noqa: E402
from cxrfusion.formats import read_image_cache  # noqa: E402
from cxrfusion.model import Classifier, normalise  # noqa: E402
from cxrfusion.text_encoder import embed, load_encoder  # noqa: E402
from cxrfusion.training import configure_torch, train_epoch  # noqa: E402

log = logging.getLogger("benchmark")

# The real study (the Kaggle release's CSVs, params.yaml, README "Running the real study")
STUDY_IMAGES = 7_466
STUDY_REPORTS = 3_851
STUDY_TRAIN_IMAGES = 6_000
STUDY_EPOCHS = 40
STUDY_CNN_VARIANTS = 2  # fusion and image; the text variant trains the head alone
REPORT_WORDS_MEDIAN, REPORT_WORDS_P95, REPORT_WORDS_MAX = 34, 76, 230
TEXT_DIM = 768  # BioBERT / BERT-base
FIT = "pad"  # image.fit: the default; synthetic PNGs are square, so any fit gives the same pixels
LR = 3e-3
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIN_GAIN = 0.05  # a larger batch is "useful" when it is more than 5 % faster

TARGETS = {  # name: (comparison, threshold)
    "project_loop_vs_compute_ceiling": (">=", 0.90),
    "project_loop_vs_original_step": (">=", 20.0),
    "embed_text_s": ("<", 10.0),
    "cache_images_scaling_efficiency": (">=", 0.80),
    "projected_full_study_s": ("<=", 300.0),
}


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


# --- small helpers --------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


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


def rnd(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits + 1}g}") if x and math.isfinite(x) else x


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


# --- 1. the original notebook's step ---------------------------------------------------------

class NotebookDataset(torch.utils.data.Dataset):
    """The notebook's Dataset: every item decodes the full PNG, converts it to RGB, resizes it
    and tokenises the report padded to the maximum length."""

    def __init__(self, paths, texts, labels, tokenizer, size: int, tokens: int):
        from torchvision import transforms as T

        self.paths, self.texts, self.labels = paths, texts, labels
        self.tokenizer, self.tokens = tokenizer, tokens
        self.transform = T.Compose([T.Resize((size, size)), T.ToTensor(),
                                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        with Image.open(self.paths[i % len(self.paths)]) as png:
            image = png.convert("RGB")
        enc = self.tokenizer(self.texts[i % len(self.texts)], padding="max_length", truncation=True,
                             max_length=self.tokens, return_tensors="pt")
        return (self.transform(image), enc["input_ids"][0], enc["attention_mask"][0],
                torch.tensor(self.labels[i]))


def notebook_model(bert_overrides: dict, device: torch.device):
    """Frozen BERT (eval), torchvision EfficientNet-B1 without classifier, the fusion head."""
    import torchvision
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(**bert_overrides)).to(device).eval().requires_grad_(False)
    cnn = torchvision.models.efficientnet_b1(weights=None)
    cnn.classifier = nn.Identity()
    head = nn.Sequential(nn.Linear(1280 + bert.config.hidden_size, 256), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(256, 2))
    return bert, cnn.to(device).train(), head.to(device).train()


def measure_original_step(s: Sizes, png_dir: Path, names: list[str], texts: list[str],
                          tokenizer, device: torch.device) -> dict:
    torch.backends.cudnn.benchmark = False  # the notebook set nothing: PyTorch's defaults
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    bert, cnn, head = notebook_model(s.notebook_bert, device)
    optimizer = torch.optim.Adam(list(cnn.parameters()) + list(head.parameters()), lr=LR)
    steps = s.notebook_warmup_steps + s.notebook_steps
    labels = np.random.default_rng(0).integers(0, 2, steps * s.notebook_batch)
    data = NotebookDataset([png_dir / n for n in names], texts, labels, tokenizer,
                           s.notebook_size, s.notebook_tokens)
    loader = torch.utils.data.DataLoader(data, batch_size=s.notebook_batch, shuffle=True,
                                         num_workers=s.notebook_workers, drop_last=True)

    def step(images, ids, mask, y):
        images, ids, mask, y = images.to(device), ids.to(device), mask.to(device), y.to(device)
        with torch.no_grad():
            text = bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        logits = head(torch.cat([cnn(images), text], 1))
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    free_memory(device)
    for i, batch in enumerate(loader):
        if i == s.notebook_warmup_steps:
            sync(device)
            start = time.perf_counter()
        step(*batch)
    sync(device)
    seconds = time.perf_counter() - start
    images = s.notebook_steps * s.notebook_batch
    log.info("original_step: %d images in %.1f s: %.1f images/s", images, seconds, images / seconds)
    return {"images_per_s": images / seconds, "images_timed": images, "seconds": seconds,
            "batch_size": s.notebook_batch, "workers": s.notebook_workers,
            "image_size": s.notebook_size, "png_size": s.png_size, "text_tokens": s.notebook_tokens,
            "bert_hidden": bert.config.hidden_size, "bert_layers": bert.config.num_hidden_layers,
            "peak_gib": peak_gib(device)}


# --- 2. the project's loop -------------------------------------------------------------------

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
    """The model and optimizer exactly as cxrfusion.training.build builds them (random backbone)."""
    torch.manual_seed(0)
    model = Classifier(variant, TEXT_DIM).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=LR)
    return model, optimizer


def measure_epochs(variant: str, split: Split, batch: int, s: Sizes, device: torch.device,
                   compile: bool = False) -> float:
    """Images/s of cxrfusion.training.train_epoch over whole epochs, after warm-up epochs (which
    include torch.compile's compiling when `compile`: as cxrfusion.training.build wraps the model)."""
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
            "out_of_memory_batches": oom, "peak_gib_by_batch": {str(b): peaks.get(b) for b in rates},
            "text_only_images_per_s": text_rate, "image_size": s.cache_size,
            "images_per_epoch": len(split), "warmup_epochs": s.warmup_epochs,
            "timed_epochs": s.timed_epochs, "amp_bf16": device.type == "cuda"}


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


def measure_options(s: Sizes, split: Split, device: torch.device, compile: bool,
                    compile_limit_s: int = 300) -> dict:
    """What train.deterministic=true costs, and (when asked) what train.compile=true gains, at
    the default batch. An error (an operation without a deterministic kernel, a compiler that
    fails) is recorded, not raised: it is a finding about that option."""
    out = {"batch_size": s.default_batch}
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")  # configure_torch sets it
    configure_torch(device, True)
    try:
        out["deterministic_images_per_s"] = measure_epochs("fusion", split, s.default_batch, s, device)
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


# --- 3. the compute ceiling ------------------------------------------------------------------

def measure_compute_ceiling(s: Sizes, split: Split, batch: int, device: torch.device) -> float:
    """Images/s of normalise + forward (bf16 autocast on CUDA) + backward + Adam step on one
    fixed batch already on the device: the loop without indexing, shuffling or bookkeeping."""
    free_memory(device)
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
    del model, optimizer
    free_memory(device)
    return rate


# --- 4. embedding the reports ----------------------------------------------------------------

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
            "seconds_for_3851": STUDY_REPORTS / rate, "load_s": load_s, "batch_size": s.embed_batch,
            "pooling": "cls", "max_length": 512, "bf16": device.type == "cuda",
            "median_words": float(np.median([len(t.split()) for t in texts])),
            "median_tokens": float(np.median(tokens)), "max_tokens": int(max(tokens)),
            "encoder": {"hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                        "heads": cfg.num_attention_heads, "intermediate_size": cfg.intermediate_size,
                        "vocab_size": cfg.vocab_size},
            "peak_gib": peak_gib(device)}


# --- 5. caching the images -------------------------------------------------------------------

def time_cache_images(png_dir: Path, names: list[str], n: int, out: Path, size: int,
                      workers: int) -> float:
    """Images/s of cxrfusion.imaging.cache_images over n files (the PNGs cycled)."""
    filenames = [names[i % len(names)] for i in range(n)]
    start = time.perf_counter()
    report = cache_images(filenames, png_dir, out, size, FIT, skip_bad=False, workers=workers)
    seconds = time.perf_counter() - start
    assert report["cached"] == n, report
    return n / seconds


def measure_cache_images(s: Sizes, png_dir: Path, names: list[str], work: Path) -> tuple[dict, Path]:
    """Rates with 1 process and with os.cpu_count() processes; the latter's HDF5 file is the
    image cache the project loop reads."""
    cores = os.cpu_count() or 1
    one = time_cache_images(png_dir, names, s.cache_images_one, work / "images_1.h5", s.cache_size, 1)
    cache = work / "images.h5"
    n_all = s.cache_images_per_worker * cores
    every = time_cache_images(png_dir, names, n_all, cache, s.cache_size, cores)
    efficiency = every / (cores * one)
    log.info("cache_images: %.1f images/s with 1 process, %.1f with %d (efficiency %.2f)",
             one, every, cores, efficiency)
    return {"images_per_s_1_worker": one, "images_per_s_all_workers": every, "workers": cores,
            "scaling_efficiency": efficiency, "images_1_worker": s.cache_images_one,
            "images_all_workers": n_all, "png_size": s.png_size, "cache_size": s.cache_size}, cache


# --- 6. the projection and the verdicts ------------------------------------------------------

def project_full_study(result: dict) -> dict:
    """Seconds for the real study's caches and training at the measured rates."""
    images = STUDY_IMAGES / result["cache_images"]["images_per_s_all_workers"]
    reports = result["embed_text"]["seconds_for_3851"]
    cnn = STUDY_CNN_VARIANTS * STUDY_EPOCHS * STUDY_TRAIN_IMAGES / result["project_loop"]["images_per_s"]
    text = STUDY_EPOCHS * STUDY_TRAIN_IMAGES / result["project_loop"]["text_only_images_per_s"]
    return {"total_s": images + reports + cnn + text, "cache_images_s": images,
            "embed_text_s": reports, "cnn_variants_s": cnn, "text_variant_s": text,
            "assumes": f"{STUDY_IMAGES} images cached on all cores; {STUDY_REPORTS} reports; "
                       f"{STUDY_CNN_VARIANTS} CNN variants x {STUDY_EPOCHS} epochs x "
                       f"{STUDY_TRAIN_IMAGES} images at project_loop.images_per_s (best batch); "
                       "text-only variant measured (head-only train_epoch at the default batch)",
            "excludes": "process and CUDA start-up, model building, Split.to, the per-epoch "
                        "validation pass, evaluate and compare"}


def verdicts(values: dict) -> dict:
    check = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t}
    return {name: {"value": rnd(values[name]), "target": f"{op} {threshold}",
                   "pass": bool(check[op](values[name], threshold))}
            for name, (op, threshold) in TARGETS.items()}


def rounded(obj):
    if isinstance(obj, float):
        return rnd(obj, 4)
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    return obj


# --- the whole run ---------------------------------------------------------------------------

class Stopped(BaseException):
    """SIGTERM (a `timeout`, a lease that ends): not an Exception, so that no measurement's
    error handling swallows it."""


def summarise(result: dict) -> None:
    """The projection, the ratios and the verdicts, from the sections measured."""
    loop, ceiling = result["project_loop"], result["compute_ceiling"]["images_per_s_by_batch"]
    original = result["original_step"]["images_per_s"]
    result["projection"] = project_full_study(result)
    result["projected_full_study_s"] = result["projection"]["total_s"]
    result["ratios"] = {
        "project_loop_vs_compute_ceiling": loop["images_per_s"] / ceiling[str(loop["best_batch"])],
        "project_loop_vs_compute_ceiling_default_batch":
            loop["images_per_s_default_batch"] / ceiling[str(loop["default_batch"])],
        "project_loop_vs_original_step": loop["images_per_s"] / original,
        "project_loop_default_batch_vs_original_step": loop["images_per_s_default_batch"] / original,
    }
    result["targets"] = verdicts({**result["ratios"],
                                  "embed_text_s": result["embed_text"]["seconds_for_3851"],
                                  "cache_images_scaling_efficiency":
                                      result["cache_images"]["scaling_efficiency"],
                                  "projected_full_study_s": result["projected_full_study_s"]})
    result["all_targets_pass"] = all(t["pass"] for t in result["targets"].values())


def run(s: Sizes, device: torch.device, result: dict, compile: bool = False,
        compile_limit_s: int = 300) -> None:
    """Fill `result` section by section (a section appears once it is complete)."""
    started = time.perf_counter()
    result.update(mode=s.mode, device=device_name(device), device_type=device.type,
                  cpu_count=os.cpu_count(), versions=versions(), sizes=asdict(s))
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        png_dir = work / "png"
        names, png_mb = write_pngs(png_dir, s.pngs, s.png_size)
        texts = synthetic_reports(s.reports)
        result["inputs"] = {"pngs": len(names), "png_size": s.png_size, "png_mb": png_mb,
                            "reports": len(texts),
                            "report_median_words": float(np.median([len(t.split()) for t in texts]))}
        folder = make_encoder(work / "encoder", texts, s.encoder)
        # every fork (cache_images' pool, the DataLoader's workers) happens before the parent
        # process first tokenises in parallel (embed_text): forking after that can deadlock
        # (torch.compile's workers are started with fork + exec: safe)
        result["cache_images"], cache = measure_cache_images(s, png_dir, names, work)

        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(folder)
        result["original_step"] = measure_original_step(s, png_dir, names, texts, tokenizer, device)

        split, to_device_s = load_split(cache, s.cache_size, s.train_images, device)
        loop = {**measure_project_loop(s, split, device), "split_to_device_s": to_device_s}
        result["project_loop"] = loop
        ceiling = {b: measure_compute_ceiling(s, split, b, device)
                   for b in sorted({loop["default_batch"], loop["best_batch"]})}
        result["compute_ceiling"] = {"images_per_s": ceiling[loop["best_batch"]],
                                     "batch_size": loop["best_batch"],
                                     "images_per_s_by_batch": {str(b): r for b, r in ceiling.items()}}
        result["embed_text"] = measure_embed_text(s, folder, texts, device)
        summarise(result)
        # last: compiling is the step most likely to run long
        options = measure_options(s, split, device, compile, compile_limit_s)
        for name in ("deterministic", "compiled"):
            if f"{name}_images_per_s" in options:
                options[f"{name}_vs_default"] = (options[f"{name}_images_per_s"]
                                                 / loop["images_per_s_default_batch"])
        result["options"] = options
    result["benchmark_s"] = time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes: a CPU smoke test of every code path (< 1 minute)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda[:N]")
    parser.add_argument("--compile", action="store_true",
                        help="also measure train.compile=true at the default batch (the warm-up "
                             "epoch includes the compiling)")
    parser.add_argument("--compile-limit", type=int, default=300, metavar="S",
                        help="give the compiled measurement up after S seconds (default 300)")
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
    log.info("benchmark, %s mode, on %s (%s), %d CPU cores", s.mode, device, device_name(device),
             os.cpu_count())

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    result: dict = {}
    try:
        run(s, device, result, args.compile, args.compile_limit)
        log.info("done in %.0f s; all targets pass: %s", result["benchmark_s"], result["all_targets_pass"])
    except Stopped as why:  # what was measured is still printed
        result["stopped"] = f"{why} before the end: only the sections present were measured"
        log.error("stopped by %s: printing the sections measured so far", why)
    json.dump(rounded(result), sys.stdout, indent=2)
    sys.stdout.write("\n")
    if "stopped" in result:
        sys.exit(1)


if __name__ == "__main__":
    main()
