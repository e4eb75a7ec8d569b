"""Stage `train`: fit one run, a variant (fusion | image | text) with one seed on one text input.

    python -m stages.train fusion 0 findings+impression
    python -m stages.train image 0

Reads only data/prepared/*.csv and the caches of features/ the variant reads. Logs train/val
metrics every epoch with DVCLive (metrics/train/<run>/), keeps the epoch chosen on validation
data (train.select), and writes models/<run>/ (e.g. models/fusion/findings+impression/seed-0):
model.safetensors, model.json, history.json and params.json, the run's resolved parameters.
"""
from __future__ import annotations

import logging
import math
import sys

import torch

from cxrfusion import checkpoint, distributed, formats, params
from cxrfusion.augment import augmenter
from cxrfusion.common import PipelineError, main, seed_everything
from cxrfusion.dataset import load_splits
from cxrfusion.formats import Run
from cxrfusion.model import reads, trainable_parameters
from cxrfusion.params import Params
from cxrfusion.scoring import score
from cxrfusion.training import (
    build,
    configure_torch,
    epoch_metrics,
    fits_on_device,
    live_log,
    log_epoch,
    save_model,
    summarise_kept_epoch,
    train_epoch,
)

log = logging.getLogger("train")


def train(run: Run, p: Params) -> dict:
    """The loop: set up, resume where an interrupted run stopped, then per epoch train,
    validate, keep the best weights and save a checkpoint; finally save the epoch kept."""
    t = p.train
    with distributed.running(t.device, "train.device") as world:
        model, optimizer, step, train_set, val_set, text_dim = set_up(run, p, world)
        generator = torch.Generator().manual_seed(run.seed)  # batch order: same on all ranks
        augment = augmenter(run, p)  # train.augment; None: the images as cached
        log_set_up(run, p, model, optimizer, train_set, val_set, world, augment)
        resume_key, progress = checkpoint.resume(run, p, model, optimizer, generator, augment,
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
                checkpoint.save_progress(run, resume_key, model, optimizer, generator, augment,
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

def set_up(run: Run, p: Params, world) -> tuple:
    """Seeds, torch settings, the splits, the model and optimiser, the data on the device:
    (model, optimizer, step, train set, val set, report vector size)."""
    t = p.train
    if t.batch_size < 2 * world.size:
        raise PipelineError(f"parameter train.batch_size={t.batch_size} is the global batch "
                            f"and must give each of the {world.size} processes at least 2 "
                            f"images: use train.batch_size>={2 * world.size}.")
    seed_everything(run.seed)
    configure_torch(world.device, t.deterministic)
    splits, text_dim = load_splits(p, reads(run.variant)[0], run.text_input,
                                   names=("train", "val"))
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
             p.train.augment if augment else "none")


def validate(run: Run, p: Params, scorer, train_set, val_set, trained: tuple, epoch: int,
             world) -> dict:
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


def keep_if_best(progress: checkpoint.Progress, row: dict, model, select: str) -> None:
    """train.select: the epoch with the lowest validation loss, or the last."""
    if select == "last" or row["val"]["loss"] < progress.best:
        progress.best = row["val"]["loss"]
        progress.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        progress.chosen = row["epoch"]


if __name__ == "__main__":
    main(lambda: train(formats.run_of(sys.argv[1:], p := params.load()), p))
