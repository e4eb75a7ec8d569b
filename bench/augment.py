"""Measures docs/options.md's "What augmentation costs" figures: what cxrfusion.augment costs a
training step, on the device: python bench/augment.py [--tiny] [--device cpu] [--threads N]

  augment   ms per batch of cxrfusion.augment.augment (the default ranges) on random uint8 images
            already on the device, affine and affine+jitter, at the demo's size (batch 32, 48
            px) and the real study's (batch 64, 240 px);
  train     ms of one training step of that setting's model on the same batch: the fusion
            Classifier (random weights, channels_last) through cxrfusion.scoring.forward (bf16
            autocast on CUDA), cross-entropy, backward, Adam; the demo's backbone is tinynet_e,
            the study's EfficientNet-B1;
  share     the augmentation's part of an augmented step: augment / (augment + train).

Medians over repeats after warm-up, as one JSON object (docs/options.md quotes a run with
--device cpu --threads 1). bench/benchmark.py does not run it.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `cxrfusion`

# bench.common first: it sets environment defaults that must precede importing torch
from bench.common import LR, TEXT_DIM, Sizes, free_memory, log, main, sync

# isort: split
import torch
import torch.nn.functional as F

from cxrfusion.augment import augment
from cxrfusion.model import Classifier
from cxrfusion.params import Augment
from cxrfusion.scoring import forward

DEMO_BACKBONE = "tinynet_e.in1k"                        # params.yaml model.backbone
STUDY_BACKBONE = "efficientnet_b1.ra4_e3600_r240_in1k"  # the real study's
# name: (batch, side, backbone): params.yaml's demo, the real study (bench.common.FULL's
# default_batch and cache_size); --tiny keeps the backbones at small sizes
SETTINGS = {"full": {"demo": (32, 48, DEMO_BACKBONE), "study": (64, 240, STUDY_BACKBONE)},
            "tiny": {"demo": (8, 32, DEMO_BACKBONE), "study": (8, 48, STUDY_BACKBONE)}}
REPEATS = {"full": {"augment": (5, 30), "train": (2, 5)},   # (warm-up, timed)
           "tiny": {"augment": (1, 3), "train": (1, 2)}}


def median_ms(work, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall-clock ms of work() over `repeats` calls after `warmup`, the device synced
    around each."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def train_step(backbone: str, images: torch.Tensor, device: torch.device):
    """One training step's work on a fixed batch, as cxrfusion.training.train_epoch takes it."""
    torch.manual_seed(0)
    model = Classifier("fusion", TEXT_DIM, backbone=backbone).to(device,
                                                                 memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=LR)
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(len(images), TEXT_DIM, generator=generator).to(device)
    labels = torch.randint(0, 2, (len(images),), generator=generator).to(device)

    def step():
        loss = F.cross_entropy(forward(model, images, text, amp=True), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure_setting(batch: int, size: int, backbone: str, mode: str,
                    device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8,
                           generator=generator).to(device)
    ranges = Augment()  # params.yaml's augment section at its defaults
    out = {"batch_size": batch, "image_size": size, "backbone": backbone}
    warmup, repeats = REPEATS[mode]["augment"]
    for name, jitter in (("affine", False), ("affine+jitter", True)):
        out[f"{name}_ms"] = median_ms(lambda: augment(images, generator, ranges, jitter), device,
                                      warmup, repeats)
        log.info("augment %s, batch %d at %d px: %.2f ms", name, batch, size, out[f"{name}_ms"])
    free_memory(device)
    warmup, repeats = REPEATS[mode]["train"]
    out["train_step_ms"] = median_ms(train_step(backbone, images, device), device, warmup, repeats)
    log.info("train step, %s, batch %d at %d px: %.1f ms", backbone, batch, size,
             out["train_step_ms"])
    for name in ("affine", "affine+jitter"):
        out[f"{name}_share_of_step"] = out[f"{name}_ms"] / (out[f"{name}_ms"]
                                                            + out["train_step_ms"])
    out["repeats"] = {"augment": REPEATS[mode]["augment"][1], "train": REPEATS[mode]["train"][1]}
    free_memory(device)
    return out


def measure(s: Sizes, device: torch.device, result: dict, work: Path, args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    # the load beside: on 2 shared cores 2 intra-op threads wait on each other when another
    # process runs (batch 32 at 48 px: 1.6 ms with 1 thread, ~50 ms with 2)
    result["augment"] = {"threads": torch.get_num_threads(), "load_average_before": os.getloadavg()}
    for name, (batch, size, backbone) in SETTINGS[s.mode].items():
        result["augment"][name] = measure_setting(batch, size, backbone, s.mode, device)
    result["augment"]["load_average_after"] = os.getloadavg()


def add_options(parser) -> None:
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="torch intra-op threads (default: torch's, 1 with --tiny)")


if __name__ == "__main__":
    main("augment", __doc__.split("\n\n")[0], measure, add_options=add_options)
