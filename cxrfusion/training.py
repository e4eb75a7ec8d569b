"""What one training run is made of: the model built for its devices, one epoch over the
training rows, the per-epoch log, and the saved model. `stages/train.py` is the loop.

An epoch is one seeded permutation of the training rows cut into global batches (the same on
every process); each process takes its contiguous share of every batch, and its loss is scaled
so that the gradients DDP averages are those of the whole batch in one process.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cxrfusion import checkpoint, distributed, formats
from cxrfusion.augment import Augmenter
from cxrfusion.common import PipelineError, atomic_path, write_json
from cxrfusion.dataset import Split
from cxrfusion.distributed import World
from cxrfusion.formats import IMAGES_H5, Run, read_text_cache_attrs, text_cache
from cxrfusion.metrics import classification_metrics
from cxrfusion.model import (
    CONFIG,
    WEIGHTS,
    Classifier,
    freeze_backbone,
    model_config,
    sync_batchnorm,
)
from cxrfusion.params import Params
from cxrfusion.scoring import forward, unwrap

log = logging.getLogger(__name__)


def epoch_metrics(labels, probs, loss, context: str) -> dict:
    m = classification_metrics(labels, probs, context=context)
    return {"loss": loss, **{k: m[k] for k in ("accuracy", "precision", "recall", "f1", "auroc")}}


def epoch_order(n: int, batch_size: int, generator: torch.Generator,
                world: World) -> list[torch.Tensor]:
    """The global batches of one epoch, from one seeded permutation: the same on every rank."""
    batches = torch.randperm(n, generator=generator).split(batch_size)
    if len(batches) > 1 and len(batches[-1]) < 2 * world.size:
        batches = batches[:-1]  # batch norm cannot train on a single image (per process)
    return list(batches)


def train_epoch(model: Classifier, optimizer, data: Split, batch_size: int, generator, amp: bool,
                epoch: int, progress: bool = True, world: World = World(),
                augment: Augmenter | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One pass over `data` in a seeded random order; `batch_size` is the global batch;
    `augment` transforms each batch's images (training only: validation is never augmented).

    Each process takes its share of every batch; its loss is scaled so that the gradients DDP
    averages over processes equal those of the whole batch in one process. Returns the rows
    seen (all processes), their predicted probabilities and the mean loss. Nothing waits on the
    GPU inside the loop: losses stay on the device and are checked once at the end.
    """
    model.train()
    batches = epoch_order(len(data), batch_size, generator, world)
    mine = [distributed.shard(b, world) for b in batches]
    losses, probs = [], []
    steps = zip(batches, data.batches(mine))
    for whole, (idx, images, text, labels) in tqdm(steps, total=len(batches), leave=False,
                                                   desc=f"{unwrap(model).variant} epoch {epoch}",
                                                   disable=not progress or not world.main):
        if augment is not None:
            images = augment(images, len(whole), world)
        logits = forward(model, images, text, amp)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        (loss * (len(idx) * world.size / len(whole))).backward()  # x 1.0 in one process
        optimizer.step()
        losses.append(loss.detach())
        probs.append(logits.detach().softmax(1)[:, 1])
    sizes = torch.tensor([len(i) for i in mine], dtype=torch.float32)
    parts = distributed.gather((torch.cat(mine), torch.cat(probs).cpu(),
                                torch.stack(losses).cpu(), sizes), world)
    # batch-major: step 1 of every rank, ...
    losses = torch.stack([rank_losses for _, _, rank_losses, _ in parts], 1).flatten()
    sizes = torch.stack([n for _, _, _, n in parts], 1).flatten()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise PipelineError(f"loss became {losses[bad[0, 0]].item()} at epoch {epoch}, batch "
                            f"{bad[0, 0].item() // world.size + 1}: lower train.lr or check the "
                            "inputs.")
    seen = torch.cat([i for i, _, _, _ in parts])
    return seen, torch.cat([p for _, p, _, _ in parts]), float((losses * sizes).sum() / sizes.sum())


def log_epoch(live, row: dict) -> None:
    if live is None:  # not rank 0
        return
    for phase in ("train", "val"):
        for k, v in row[phase].items():
            live.log_metric(f"{phase}/{k}", v)
    live.next_step()


def configure_torch(device: torch.device, deterministic: bool) -> None:
    """Fast kernels by default; bitwise-repeatable GPU runs when train.deterministic asks."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # picks the fastest conv kernels for fixed shapes
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.5) -> bool:
    """Whether a split of `nbytes` may move to the GPU whole: at most `share` of its free
    memory, leaving the rest to the model's activations. Otherwise the images stay in host
    memory and each batch is copied over (slower, logged)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= share * free:
        return True
    log.warning("the training and validation split (%.1f GB) exceeds half of the GPU's free "
                "memory (%.1f GB): its images stay in host memory and each batch is copied to the "
                "GPU (slower; lower image.size, or set train.in_memory_gb=0 to stream them from "
                "%s instead)", nbytes / 1e9, free / 1e9, IMAGES_H5)
    return False


def build(run: Run, p: Params, train_set: Split, world: World):
    """The run's model on this rank's device, the optimizer, and the module that takes the
    steps (wrapped by DDP across processes and by torch.compile when asked). `train_set` gives
    the report vectors' size and, under model.standardise_text, their scaling."""
    t, m = p.train, p.model
    text_dim = 0 if train_set.text is None else train_set.text.shape[1]
    model = Classifier(run.variant, text_dim, m.backbone, p.image.pretrained, m.hidden,
                       m.dropout, m.fusion, m.shared_dim)
    if model.uses_text and m.standardise_text:
        model.standardise_text(train_set.study_text())
    if m.freeze_backbone:
        freeze_backbone(model)
    if world.distributed and world.device.type == "cuda":
        model = sync_batchnorm(model)  # batch statistics over all GPUs
    model = model.to(world.device, memory_format=torch.channels_last)
    optimizer = adam(model, t.lr, t.lr_backbone)
    step = model
    if world.distributed:  # same initial weights on every rank: DDP broadcasts rank 0's
        step = DistributedDataParallel(
            model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
        torch.manual_seed(run.seed + world.rank)  # each rank its own dropout masks
    if t.compile:
        step = torch.compile(step)  # same weights, fused kernels
    return model, optimizer, step


def adam(model: Classifier, lr: float, lr_backbone: float | None) -> torch.optim.Adam:
    """Adam over the trainable parameters: at one learning rate (lr_backbone None: the
    original), or the pretrained CNN's at its own (train.lr_backbone) in a second parameter
    group, `backbone`, beside `head` (the head and projectors). The groups are saved with the
    optimizer's state in checkpoints."""
    trainable = [q for q in model.parameters() if q.requires_grad]
    if lr_backbone is None or model.cnn is None:
        return torch.optim.Adam(trainable, lr=lr)
    cnn = {id(q) for q in model.cnn.parameters()}
    groups = [{"name": "backbone", "params": [q for q in trainable if id(q) in cnn],
               "lr": lr_backbone},
              {"name": "head", "params": [q for q in trainable if id(q) not in cnn], "lr": lr}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)  # frozen CNN: no group


@contextlib.contextmanager
def live_log(run: Run, world: World):
    """DVCLive's per-epoch metrics (metrics/train/<run>/), written by rank 0 only, into a
    temporary folder that replaces the previous one only when training ends well."""
    if not world.main:
        yield None
        return
    from dvclive import Live

    with atomic_path(run.train_log) as tmp:
        with Live(dir=str(tmp), dvcyaml=None, save_dvc_exp=False, report=None) as live:
            yield live


def summarise_kept_epoch(live, history: list, chosen: int) -> None:
    """metrics.json (what `dvc metrics` and `dvc exp show` list) holds the epoch whose weights
    were kept, not DVCLive's default, the last epoch."""
    if live is not None:
        kept = history[chosen - 1]
        live.summary = {"train": kept["train"], "val": kept["val"], "epoch_kept": chosen}


def save_model(run: Run, p: Params, model: Classifier, best_state: dict, text_dim: int,
               chosen: int, history: list) -> None:
    """models/<run>/: weights (safetensors), how to rebuild them, and params.json, the
    parameters it was trained with (formats.record: with the run's seed and text input)."""
    from safetensors.torch import save_file

    model.load_state_dict(best_state)
    size, fit, backbone = ((p.image.size, p.image.fit, p.model.backbone) if model.uses_image
                           else (None, None, None))  # the text model reads no image
    config = {**model_config(model, text_dim, backbone, size, image_fit=fit),
              "epoch": chosen, "select": p.train.select, "seed": run.seed,
              "text_input": run.text_input}
    if model.uses_image:  # which ImageNet weights, pinned by name: timm's default tag can move
        config["pretrained"] = p.image.pretrained
        config["pretrained_tag"] = unwrap(model).cnn.pretrained_cfg.get("tag")
    if model.uses_text:  # which encoder made the vectors: prediction checks its encoder against it
        attrs = read_text_cache_attrs(text_cache(run.text_input))
        config.update(text_model=attrs["model"], text_revision=attrs.get("revision") or None,
                      text_fingerprint=attrs["fingerprint"])
    with atomic_path(run.models) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        write_json(tmp / CONFIG, config)
        write_json(tmp / "params.json", formats.record(p, run))  # the settings beside the weights
        write_json(tmp / "history.json", history)
    checkpoint.remove(run)
