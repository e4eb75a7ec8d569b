"""One training run: `train`, the loop, and its steps beside it (set up, one epoch over the
training rows, validation, keeping the best epoch, the checkpoint after each epoch, the saved
model). `stages/train.py` reads the parameters and calls `train`.

An epoch is one seeded permutation of the training rows cut into global batches (the same on
every process); each process takes its contiguous share of every batch, and its loss is scaled
so that the gradients DDP averages are those of the whole batch in one process.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cxrfusion import checkpoint, distributed, formats, params
from cxrfusion.augment import Augmenter, augmenter
from cxrfusion.common import PipelineError, atomic_path, seed_everything, write_json
from cxrfusion.dataset import Split, run_splits
from cxrfusion.distributed import World
from cxrfusion.formats import (
    IMAGES_H5,
    Run,
    frozen_cache,
    read_frozen_cache_attrs,
    read_text_cache_attrs,
    text_cache,
)
from cxrfusion.metrics import classification_metrics
from cxrfusion.model import (
    CONFIG,
    WEIGHTS,
    Classifier,
    freeze_backbone,
    model_config,
    sync_batchnorm,
    trainable_parameters,
)
from cxrfusion.params import Params, as_dict, recipe
from cxrfusion.scoring import forward, score, unwrap

log = logging.getLogger(__name__)


def train(run: Run, p: Params) -> dict:
    """The loop: set up, resume where an interrupted run stopped, then per epoch train,
    validate, keep the best weights and save a checkpoint; finally save the epoch kept."""
    t = p.train
    with distributed.running(t.device, "train.device") as world:
        model, optimizer, step, train_set, val_set, text_dim = set_up(run, p, world)
        schedule = scheduler(optimizer, p)  # None: a constant rate (the original)
        generator = torch.Generator().manual_seed(run.seed)  # batch order: same on all ranks
        augment = augmenter(run, p)  # train.augment; None: the images as cached
        log_set_up(run, p, model, optimizer, train_set, val_set, world, augment)
        resume_key, progress = resume(run, p, model, optimizer, schedule, generator, augment,
                                      world)
        with live_log(run, world) as live:
            for row in progress.history:  # an earlier, interrupted run's epochs: log them again
                log_epoch(live, row)
            for epoch in range(len(progress.history) + 1, t.epochs + 1):
                seen, probs, loss = train_epoch(step, optimizer, train_set, t.batch_size,
                                                generator, t.amp, epoch=epoch, world=world,
                                                augment=augment)
                distributed.same_buffers(model, world)  # rank 0's batch-norm statistics
                row = validate(run, p, model if world.distributed else step, train_set, val_set,
                               (seen, probs, loss), epoch, world)
                log_epoch(live, row)
                progress.history.append(row)
                keep_if_best(progress, row, model, t.select)
                if schedule is not None:
                    schedule.step()  # the next epoch's rate
                save_progress(run, resume_key, model, optimizer, schedule, generator, augment,
                              progress, world)
            summarise_kept_epoch(live, progress.history, progress.chosen)
        if world.main:
            save_model(run, p, model, progress.best_state, text_dim, progress.chosen,
                       progress.history)
        distributed.barrier(world)  # no rank leaves before the outputs are complete
    log.info("%s: kept epoch %d (%s), val loss %.4f", run.path, progress.chosen, t.select,
             progress.history[progress.chosen - 1]["val"]["loss"])
    return {"history": progress.history, "chosen": progress.chosen}


# --- the steps --------------------------------------------------------------------------------

def set_up(run: Run, p: Params, world: World) -> tuple:
    """Seeds, torch settings, the splits, the model and optimiser, the data on the device:
    (model, optimizer, step, train set, val set, report vector size)."""
    t = p.train
    if t.batch_size < 2 * world.size:
        raise PipelineError(f"parameter train.batch_size={t.batch_size} is the global batch "
                            f"and must give each of the {world.size} processes at least 2 "
                            f"images: use train.batch_size>={2 * world.size}.")
    seed_everything(run.seed)
    configure_torch(world.device, t.deterministic)
    splits, text_dim = run_splits(p, run, names=("train", "val"))
    model, optimizer, step = build(run, p, splits["train"], world)
    on_device = fits_on_device(splits["train"].nbytes + splits["val"].nbytes, world.device)
    train_set, val_set = (splits[s].to(world.device, images_too=on_device)
                          for s in ("train", "val"))
    # the host copy of the images lives on (in the sets) only where the GPU had no room
    return model, optimizer, step, train_set, val_set, text_dim


def log_set_up(run, p, model, optimizer, train_set, val_set, world, augment) -> None:
    log.info("%s: %d trainable parameters (%s fusion, learning rates %s); %d train / %d val "
             "images on %d x %s%s; augment %s", run.path, trainable_parameters(model),
             p.model.fusion, ", ".join(f"{g.get('name', 'all')} {g['lr']:g}"
                                              for g in optimizer.param_groups),
             len(train_set), len(val_set), world.size, world.device,
             " (streamed)" if train_set.streamed else "",
             recipe(p.train, p.image.pretrained)["augment"] if augment else "none")


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
    return (seen, torch.cat([prob for _, prob, _, _ in parts]),
            float((losses * sizes).sum() / sizes.sum()))


def validate(run: Run, p: Params, scorer, train_set, val_set, trained: tuple, epoch: int,
             world: World) -> dict:
    """The epoch's row: train metrics on the images it saw, validation metrics."""
    t = p.train
    seen, probs, loss = trained
    row = {"epoch": epoch, "train": epoch_metrics(train_set.labels.cpu()[seen], probs, loss,
                                                 f"{run.path} train, epoch {epoch}")}
    val_probs, val_loss = score(scorer, val_set, t.batch_size, t.amp, world)
    if not math.isfinite(val_loss):
        raise PipelineError(f"validation loss became {val_loss} at epoch {epoch}: "
                            "lower train.lr or check the inputs.")
    row["val"] = epoch_metrics(val_set.labels.cpu(), val_probs, val_loss,
                               f"{run.path} val, epoch {epoch}")
    log.info("%s epoch %d: train loss %.4f f1 %.3f | val loss %.4f f1 %.3f auroc %.3f",
             run.path, epoch, row["train"]["loss"], row["train"]["f1"], val_loss,
             row["val"]["f1"], row["val"]["auroc"])
    return row


# --- the progress kept from epoch to epoch, saved after each and resumed ------------------------

@dataclass
class Progress:
    """What carries from one epoch to the next, and through a checkpoint: the epochs' metrics,
    the best validation loss, the weights of the epoch kept and its number."""
    history: list = field(default_factory=list)
    best: float = math.inf
    best_state: dict | None = None
    chosen: int | None = None


def keep_if_best(progress: Progress, row: dict, model, select: str) -> None:
    """train.select: the epoch with the lowest validation loss, or the last."""
    if select == "last" or row["val"]["loss"] < progress.best:
        progress.best = row["val"]["loss"]
        progress.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        progress.chosen = row["epoch"]


def resume(run: Run, p: Params, model, optimizer, schedule, generator, augment,
           world: World) -> tuple:
    """The checkpoint's key (the run's parameters, processes and input caches) and its
    progress: an interrupted run's, restored into the model, optimiser and random streams,
    when its key matches; else a fresh one."""
    inputs = [f for f in (run.text_input and text_cache(run.text_input, alias=run.text_alias),
                          IMAGES_H5)
              if f and f.exists()]
    key = checkpoint.fingerprint(run, {**as_dict(p), "processes": world.size}, inputs)
    state = checkpoint.load(run, key)
    if not state:
        return key, Progress()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    checkpoint.restore_random_states(generator, state["random"][world.rank],
                                     augment.generator if augment else None)
    log.info("%s: resuming after epoch %d from %s", run.path, len(state["history"]),
             checkpoint.path(run))
    return key, Progress(state["history"], state["best"], state["best_state"], state["chosen"])


def save_progress(run: Run, key: str, model, optimizer, schedule, generator, augment,
                  progress: Progress, world: World) -> None:
    """After an epoch: every rank's random streams, gathered; the main rank writes the rest."""
    randoms = distributed.gather(
        checkpoint.random_states(generator, augment.generator if augment else None), world)
    if world.main:
        checkpoint.save(run, {"fingerprint": key, "model": model.state_dict(),
                              "optimizer": optimizer.state_dict(), "random": randoms,
                              "history": progress.history, "best": progress.best,
                              "best_state": progress.best_state, "chosen": progress.chosen,
                              **({"schedule": schedule.state_dict()} if schedule else {})})


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
    frozen = params.row(run.variant).frozen_image
    model = Classifier(run.variant, text_dim, None if frozen else m.backbone,
                       pretrained=p.image.pretrained, hidden=m.hidden, dropout=m.dropout,
                       fusion=m.fusion, shared_dim=m.shared_dim,
                       image_dim=train_set.images.shape[1] if frozen else 0)
    if model.uses_text and m.standardise_text:
        model.standardise_text(train_set.study_text())
    if frozen:
        model.standardise_image(train_set.images)
    if m.freeze_backbone:
        freeze_backbone(model)
    if world.distributed and world.device.type == "cuda":
        model = sync_batchnorm(model)  # batch statistics over all GPUs
    model = model.to(world.device, memory_format=torch.channels_last)
    settings = recipe(t, p.image.pretrained)
    optimizer = adam(model, t.lr, settings["lr_backbone"], settings["optimizer"],
                     settings["weight_decay"])
    step = model
    if world.distributed:  # same initial weights on every rank: DDP broadcasts rank 0's
        step = DistributedDataParallel(
            model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
        torch.manual_seed(run.seed + world.rank)  # each rank its own dropout masks
    if t.compile:
        step = torch.compile(step)  # same weights, fused kernels
    return model, optimizer, step


def adam(model: Classifier, lr: float, lr_backbone: float | None, kind: str = "adam",
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (or AdamW: decoupled weight decay) over the trainable parameters: at one learning
    rate (lr_backbone None: the original), or the pretrained CNN's at its own (train.lr_backbone
    or the recipe's) in a second parameter group, `backbone`, beside `head` (the head and
    projectors). The groups are saved with the optimizer's state in checkpoints."""
    trainable = [q for q in model.parameters() if q.requires_grad]
    make = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    options = {"weight_decay": weight_decay} if weight_decay or kind == "adamw" else {}
    if lr_backbone is None or model.cnn is None:
        return make(trainable, lr=lr, **options)
    cnn = {id(q) for q in model.cnn.parameters()}
    groups = [{"name": "backbone", "params": [q for q in trainable if id(q) in cnn],
               "lr": lr_backbone},
              {"name": "head", "params": [q for q in trainable if id(q) not in cnn], "lr": lr}]
    return make([g for g in groups if g["params"]], lr=lr, **options)  # frozen CNN: no group


def scheduler(optimizer, p: Params):
    """The learning rate over the epochs, or None for a constant one without warmup (the
    original): `warmup_epochs` climbing linearly (epoch e of w at (e + 1) / (w + 1) of the rate),
    then, under `cosine`, half a cosine to 0 over the epochs left. Stepped after each epoch;
    its state is saved in checkpoints."""
    settings = recipe(p.train, p.image.pretrained)
    warmup, epochs = settings["warmup_epochs"], p.train.epochs
    cosine = settings["schedule"] == "cosine"
    if not warmup and not cosine:
        return None

    def factor(done: int) -> float:  # `done` epochs completed: the rate of the next
        if done < warmup:
            return (done + 1) / (warmup + 1)
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (done - warmup) / (epochs - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
    size, fit, backbone = ((p.image.size, p.image.fit, p.model.backbone)
                           if model.cnn is not None
                           else (None, None, None))  # the text and frozen models read no pixels
    config = {**model_config(model, text_dim, backbone, size, image_fit=fit),
              "epoch": chosen, "select": p.train.select, "seed": run.seed,
              "text_input": run.text_input}
    if model.frozen:  # which encoder made the image vectors: scoring checks the cache against it
        alias = run.image_alias
        config["image_encoder"] = {"alias": alias, **read_frozen_cache_attrs(frozen_cache(alias))}
    elif model.uses_image:  # which ImageNet weights, pinned by name: timm's default tag can move
        config["pretrained"] = p.image.pretrained
        config["pretrained_tag"] = unwrap(model).cnn.pretrained_cfg.get("tag")
    if model.uses_text:  # which encoder made the vectors: prediction checks its encoder against it
        attrs = read_text_cache_attrs(text_cache(run.text_input, alias=run.text_alias))
        config.update(text_model=attrs["model"], text_revision=attrs.get("revision") or None,
                      text_fingerprint=attrs["fingerprint"], text_reading=attrs.get("reading"),
                      text_prompt=attrs.get("prompt") or None,
                      text_trust_remote_code=bool(attrs.get("trust_remote_code", False)))
    with atomic_path(run.models) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        write_json(tmp / CONFIG, config)
        write_json(tmp / "params.json", formats.record(p, run))  # the settings beside the weights
        write_json(tmp / "history.json", history)
    checkpoint.remove(run)
