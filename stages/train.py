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

from cxrfusion import checkpoint, distributed, params
from cxrfusion.common import PipelineError, main, seed_everything
from cxrfusion.dataset import load_splits
from cxrfusion.formats import IMAGES_H5, Run, text_cache
from cxrfusion.model import reads, trainable_parameters
from cxrfusion.scoring import predict
from cxrfusion.training import (augmenter, build, configure_torch, epoch_metrics, fits_on_device,
                                live_log, log_epoch, save_model, summarise_kept_epoch, train_epoch)

log = logging.getLogger("train")


def train(run: Run, p: dict) -> dict:
    p = params.for_run(p, run)  # train.seed: this run's; text.input: its reports
    t, variant = p["train"], run.variant
    with distributed.running(t["device"], "train.device") as world:
        if t["batch_size"] < 2 * world.size:
            raise PipelineError(f"parameter train.batch_size={t['batch_size']} is the global batch "
                                f"and must give each of the {world.size} processes at least 2 "
                                f"images: use train.batch_size>={2 * world.size}.")
        seed_everything(t["seed"])
        configure_torch(world.device, t["deterministic"])
        splits, text_dim = load_splits(p, *reads(variant), names=("train", "val"))
        model, optimizer, step = build(variant, p, splits["train"], world)
        on_device = fits_on_device(splits["train"].nbytes + splits["val"].nbytes, world.device)
        train_set, val_set = (splits[s].to(world.device, images_too=on_device) for s in ("train", "val"))
        del splits  # the host copy of the images lives on only where the GPU had no room
        generator = torch.Generator().manual_seed(t["seed"])  # the batches' order: same on all ranks
        augment = augmenter(variant, p)  # train.augment; None: the images as cached
        augment_stream = augment.generator if augment else None
        log.info("%s: %d trainable parameters (%s fusion, learning rates %s); %d train / %d val "
                 "images on %d x %s%s; augment %s", run.path, trainable_parameters(model),
                 p["model"]["fusion"], ", ".join(f"{g.get('name', 'all')} {g['lr']:g}"
                                                  for g in optimizer.param_groups),
                 len(train_set), len(val_set), world.size, world.device,
                 " (streamed)" if train_set.streamed else "",
                 t["augment"] if augment else "none")

        inputs = [f for f in (run.text_input and text_cache(run.text_input), IMAGES_H5)
                  if f and f.exists()]
        resume_key = checkpoint.fingerprint(run, {**p, "processes": world.size}, inputs)
        history, best, best_state, chosen = [], math.inf, None, None
        state = checkpoint.load(run, resume_key, world.device)
        if state:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            checkpoint.restore_random_states(generator, state["random"][world.rank], augment_stream)
            history, best, best_state, chosen = state["history"], state["best"], state["best_state"], state["chosen"]
            log.info("%s: resuming after epoch %d from %s", run.path, len(history), checkpoint.path(run))
        with live_log(run, world) as live:
            for row in history:  # an earlier, interrupted run's epochs: log them again
                log_epoch(live, row)
            for epoch in range(len(history) + 1, t["epochs"] + 1):
                seen, probs, loss = train_epoch(step, optimizer, train_set, t["batch_size"], generator,
                                                t["amp"], epoch, world=world, augment=augment)
                distributed.same_buffers(model, world)  # rank 0's batch-norm statistics
                row = {"epoch": epoch, "train": epoch_metrics(train_set.labels.cpu()[seen], probs, loss,
                                                             f"{run.path} train, epoch {epoch}")}
                val_probs, val_loss = predict(model if world.distributed else step, val_set,
                                              t["batch_size"], t["amp"], world)
                if not math.isfinite(val_loss):
                    raise PipelineError(f"validation loss became {val_loss} at epoch {epoch}: "
                                        "lower train.lr or check the inputs.")
                row["val"] = epoch_metrics(val_set.labels.cpu(), val_probs, val_loss,
                                          f"{run.path} val, epoch {epoch}")
                log_epoch(live, row)
                history.append(row)
                log.info("%s epoch %d: train loss %.4f f1 %.3f | val loss %.4f f1 %.3f auroc %.3f",
                         run.path, epoch, row["train"]["loss"], row["train"]["f1"], val_loss,
                         row["val"]["f1"], row["val"]["auroc"])
                if t["select"] == "last" or val_loss < best:
                    best, best_state = val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}
                    chosen = epoch
                randoms = distributed.gather(checkpoint.random_states(generator, augment_stream), world)
                if world.main:
                    checkpoint.save(run, {
                        "fingerprint": resume_key, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "random": randoms,
                        "history": history, "best": best, "best_state": best_state, "chosen": chosen})
            summarise_kept_epoch(live, history, chosen)
        if world.main:
            save_model(run, p, model, best_state, text_dim, chosen, history)
        distributed.barrier(world)  # no rank leaves before the outputs are complete
    log.info("%s: kept epoch %d (%s), val loss %.4f", run.path, chosen, t["select"], history[chosen - 1]["val"]["loss"])
    return {"history": history, "chosen": chosen}


if __name__ == "__main__":
    main(lambda: train(params.run_of(sys.argv[1:], p := params.load()), p))
