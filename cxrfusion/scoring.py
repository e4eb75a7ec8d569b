"""Scoring: a model and rows in, probabilities of abnormal out. The one home of the forward pass.

`train` scores the validation studies every epoch with it, `evaluate` the test studies,
`explain` its perturbed copies and `cxrfusion.predict` new studies: all read images and reports
the same way (uint8 pixels normalised on the device, the CNN under bf16 autocast on a GPU, the
concatenation and the head in float32).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cxrfusion import distributed
from cxrfusion.dataset import Split
from cxrfusion.distributed import World
from cxrfusion.model import Classifier, normalise


def forward(model: nn.Module, images: torch.Tensor | None, text: torch.Tensor | None,
            amp: bool, report_weight: bool = False):
    """Float32 logits for a batch: uint8 images and report vectors already on the model's
    device (each read only if the variant reads it). `amp` runs the CNN in bf16 on a GPU; the
    model's head always runs in float32 (Classifier.classify). With `report_weight` (gated
    fusion): (logits, the gate's weight of the report per row)."""
    core = unwrap(model)
    if core.uses_image and core.cnn is not None:  # pixels; a frozen arm's vectors as they are
        images = normalise(images, core.pixel_mean, core.pixel_std)
    images = images if core.uses_image else None
    text = text if core.uses_text else None
    device_type = (images if images is not None else text).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp and device_type == "cuda"):
        if report_weight:
            return model(images, text, report_weight=True)
        return model(images, text).float()


def unwrap(model: nn.Module) -> Classifier:
    """The Classifier inside DDP and torch.compile wrappers."""
    while not isinstance(model, Classifier):
        model = model.module if isinstance(model, DistributedDataParallel) else model._orig_mod
    return model


@torch.no_grad()
def score(model: nn.Module, split: Split, batch_size: int, amp: bool = True,
            world: World = World()) -> tuple[np.ndarray, float]:
    """Probability of abnormal for every row, and the mean cross-entropy loss.

    With several processes each scores its share of the rows; all get every row's result.
    """
    model.eval()
    mine = [b for b in distributed.shard(torch.arange(len(split)), world).split(batch_size)
            if len(b)]
    # kept on the device until the end: no wait on the GPU per batch (float64, as Python's sum)
    probs, loss = [], torch.zeros((), dtype=torch.float64, device=split.labels.device)
    for _, images, text, labels in split.batches(mine):
        logits = forward(model, images, text, amp)
        loss += F.cross_entropy(logits, labels, reduction="sum").double()
        probs.append(logits.softmax(1)[:, 1])
    probs = torch.cat(probs).cpu() if probs else torch.zeros(0)
    parts = distributed.gather((probs, loss.item()), world)
    return (torch.cat([part_probs for part_probs, _ in parts]).numpy(),
            sum(part_loss for _, part_loss in parts) / len(split))


@torch.no_grad()
def report_weights(model: Classifier, split: Split, batch_size: int,
                   amp: bool = True) -> np.ndarray:
    """For a gated fusion model: how much weight its gate gives the report, per row (the mean
    over features of 1 - z; 0: the image alone, 1: the report alone). One process."""
    model.eval()
    weights = [forward(model, images, text, amp, report_weight=True)[1]
               for _, images, text, _
               in split.batches(list(torch.arange(len(split)).split(batch_size)))]
    return torch.cat(weights).cpu().numpy() if weights else np.zeros(0)
