"""Stage `train`: fit one variant (fusion | image | text) on the cached features.

    python -m stages.train fusion

Reads only data/prepared/*.csv and features/*.h5. Logs train/val metrics every epoch with
DVCLive (metrics/<variant>/train/), keeps the epoch chosen on validation data (train.select),
and writes models/<variant>/model.safetensors with model.json and the resolved params.yaml.
"""
from __future__ import annotations

import logging
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages import checkpoint, params
from stages.common import PipelineError, atomic_path, main, resolve_device, seed_everything, write_json
from stages.dataset import Split, load_splits
from stages.formats import IMAGES_H5, TEXT_H5, metrics_dir, model_dir
from stages.metrics import classification_metrics
from stages.model import (CONFIG, WEIGHTS, Classifier, freeze_backbone, model_config, normalise,
                          reads, trainable_parameters)

log = logging.getLogger("train")


def forward(model: Classifier, split: Split, idx: torch.Tensor, amp: bool) -> torch.Tensor:
    """Logits for the rows `idx` of `split` (already on the model's device)."""
    image = normalise(split.images[idx], model.pixel_mean, model.pixel_std) if model.uses_image else None
    text = split.text[idx] if model.uses_text else None
    device_type = split.labels.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp and device_type == "cuda"):
        return model(image, text).float()


@torch.no_grad()
def predict(model: Classifier, split: Split, batch_size: int, amp: bool = True) -> tuple[np.ndarray, float]:
    """Probability of abnormal for every row, and the mean cross-entropy loss."""
    model.eval()
    probs, loss = [], 0.0
    for idx in torch.arange(len(split), device=split.labels.device).split(batch_size):
        logits = forward(model, split, idx, amp)
        loss += F.cross_entropy(logits, split.labels[idx], reduction="sum").item()
        probs.append(logits.softmax(1)[:, 1].cpu())
    return torch.cat(probs).numpy(), loss / len(split)


def epoch_metrics(labels, probs, loss) -> dict:
    m = classification_metrics(labels, probs)
    return {"loss": loss, **{k: m[k] for k in ("accuracy", "precision", "recall", "f1", "auroc")}}


def train_epoch(model: Classifier, optimizer, data: Split, batch_size: int, generator, amp: bool,
                epoch: int, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One pass over `data` in a seeded random order.

    Returns the rows seen, their predicted probabilities and the mean loss. Nothing waits on the
    GPU inside the loop: losses stay on the device and are checked once at the end.
    """
    model.train()
    order = torch.randperm(len(data), generator=generator).to(data.labels.device)
    batches = order.split(batch_size)
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches = batches[:-1]  # batch norm cannot train on a single image
    losses, probs = [], []
    for idx in tqdm(batches, desc=f"{model.variant} epoch {epoch}", leave=False, disable=not progress):
        logits = forward(model, data, idx, amp)
        loss = F.cross_entropy(logits, data.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        probs.append(logits.detach().softmax(1)[:, 1])
    losses = torch.stack(losses).cpu()
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        raise PipelineError(f"loss became {losses[bad[0, 0]].item()} at epoch {epoch}, batch "
                            f"{bad[0, 0].item() + 1}: lower train.lr or check the inputs.")
    sizes = torch.tensor([len(b) for b in batches], dtype=losses.dtype)
    return torch.cat(batches).cpu(), torch.cat(probs).cpu(), float((losses * sizes).sum() / sizes.sum())


def log_epoch(live, row: dict) -> None:
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


def train(variant: str, p: dict) -> dict:
    t, m = p["train"], p["model"]
    seed_everything(t["seed"])
    device = resolve_device(t["device"])
    configure_torch(device, t["deterministic"])
    splits, text_dim = load_splits(p, *reads(variant))
    model = Classifier(variant, text_dim, m["backbone"], p["image"]["pretrained"], m["hidden"], m["dropout"])
    if m["freeze_backbone"]:
        freeze_backbone(model)
    model = model.to(device, memory_format=torch.channels_last)
    train_set, val_set = splits["train"].to(device), splits["val"].to(device)
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=t["lr"])
    generator = torch.Generator().manual_seed(t["seed"])
    step = torch.compile(model) if t["compile"] else model  # same weights, fused kernels
    log.info("%s: %d trainable parameters; %d train / %d val images on %s", variant,
             trainable_parameters(model), len(train_set), len(val_set), device)

    from dvclive import Live

    inputs = [f for f in (TEXT_H5, IMAGES_H5) if f.exists()]
    resume_key = checkpoint.fingerprint(variant, p, inputs)
    history, best, best_state, chosen = [], math.inf, None, None
    state = checkpoint.load(variant, resume_key, device)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        checkpoint.restore_random_states(generator, state["random"])
        history, best, best_state, chosen = state["history"], state["best"], state["best_state"], state["chosen"]
        log.info("%s: resuming after epoch %d from %s", variant, len(history), checkpoint.path(variant))
    with Live(dir=str(metrics_dir(variant) / "train"), dvcyaml=None, save_dvc_exp=False,
              report=None) as live:
        for row in history:  # an earlier, interrupted run's epochs: log them again
            log_epoch(live, row)
        for epoch in range(len(history) + 1, t["epochs"] + 1):
            seen, probs, loss = train_epoch(step, optimizer, train_set, t["batch_size"], generator,
                                            t["amp"], epoch)
            row = {"epoch": epoch, "train": epoch_metrics(train_set.labels.cpu()[seen], probs, loss)}
            val_probs, val_loss = predict(step, val_set, t["batch_size"], t["amp"])
            if not math.isfinite(val_loss):
                raise PipelineError(f"validation loss became {val_loss} at epoch {epoch}: "
                                    "lower train.lr or check the inputs.")
            row["val"] = epoch_metrics(val_set.labels.cpu(), val_probs, val_loss)
            log_epoch(live, row)
            history.append(row)
            log.info("%s epoch %d: train loss %.4f f1 %.3f | val loss %.4f f1 %.3f auroc %.3f",
                     variant, epoch, row["train"]["loss"], row["train"]["f1"], val_loss,
                     row["val"]["f1"], row["val"]["auroc"])
            if t["select"] == "last" or val_loss < best:
                best, best_state = val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}
                chosen = epoch
            checkpoint.save(variant, {
                "fingerprint": resume_key, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "random": checkpoint.random_states(generator),
                "history": history, "best": best, "best_state": best_state, "chosen": chosen})

    from safetensors.torch import save_file

    model.load_state_dict(best_state)
    config = {**model_config(model, text_dim, m["backbone"], p["image"]["size"]),
              "epoch": chosen, "select": t["select"]}
    with atomic_path(model_dir(variant)) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        write_json(tmp / CONFIG, config)
        write_json(tmp / "params.json", p)  # the resolved settings next to the weights
        write_json(tmp / "history.json", history)
    checkpoint.remove(variant)
    log.info("%s: kept epoch %d (%s), val loss %.4f", variant, chosen, t["select"], history[chosen - 1]["val"]["loss"])
    return {"history": history, "chosen": chosen}


if __name__ == "__main__":
    main(lambda: train(params.check_variant(sys.argv[1] if len(sys.argv) > 1 else ""), params.load()))
