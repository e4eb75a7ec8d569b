"""Stage `train`: fit one variant (fusion | image | text) on the cached features.

    python -m stages.train fusion

Reads only data/prepared/*.csv and features/*.h5. Logs train/val metrics every epoch with
DVCLive (metrics/<variant>/train/), keeps the epoch chosen on validation data (train.select),
and writes models/<variant>/model.safetensors with model.json and the resolved params.yaml.
"""
from __future__ import annotations

import copy
import logging
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages import params
from stages.common import PipelineError, atomic_path, main, resolve_device, seed_everything, write_json
from stages.dataset import Split, load_splits
from stages.formats import metrics_dir, model_dir
from stages.metrics import classification_metrics
from stages.model import (CONFIG, WEIGHTS, Classifier, freeze_backbone, model_config, normalise,
                          reads, trainable_parameters)

log = logging.getLogger("train")


def forward(model: Classifier, split: Split, idx: torch.Tensor, amp: bool) -> torch.Tensor:
    """Logits for the rows `idx` of `split` (already on the model's device)."""
    image = normalise(split.images[idx], *model.input_stats()) if model.uses_image else None
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


def train(variant: str, p: dict) -> dict:
    t, m = p["train"], p["model"]
    seed_everything(t["seed"])
    device = resolve_device(t["device"])
    splits, text_dim = load_splits(p, *reads(variant))
    model = Classifier(variant, text_dim, m["backbone"], p["image"]["pretrained"], m["hidden"], m["dropout"])
    if m["freeze_backbone"]:
        freeze_backbone(model)
    model = model.to(device, memory_format=torch.channels_last)
    train_set, val_set = splits["train"].to(device), splits["val"].to(device)
    optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=t["lr"])
    generator = torch.Generator().manual_seed(t["seed"])
    log.info("%s: %d trainable parameters; %d train / %d val images on %s", variant,
             trainable_parameters(model), len(train_set), len(val_set), device)

    from dvclive import Live

    history, best, best_state = [], math.inf, None
    with Live(dir=str(metrics_dir(variant) / "train"), dvcyaml=None, save_dvc_exp=False,
              report=None) as live:
        for epoch in range(1, t["epochs"] + 1):
            model.train()
            order = torch.randperm(len(train_set), generator=generator).to(device)
            batches = order.split(t["batch_size"])
            if len(batches) > 1 and len(batches[-1]) < 2:
                batches = batches[:-1]  # batch norm cannot train on a single image
            seen, probs, total = [], [], 0.0
            for b, idx in enumerate(tqdm(batches, desc=f"{variant} epoch {epoch}", leave=False)):
                logits = forward(model, train_set, idx, t["amp"])
                loss = F.cross_entropy(logits, train_set.labels[idx])
                if not torch.isfinite(loss):
                    raise PipelineError(f"loss became {loss.item()} at epoch {epoch}, batch {b + 1}: "
                                        "lower train.lr or check the inputs.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                seen.append(idx.cpu())
                probs.append(logits.detach().softmax(1)[:, 1].cpu())
            seen = torch.cat(seen)
            row = {"epoch": epoch,
                   "train": epoch_metrics(train_set.labels.cpu()[seen], torch.cat(probs), total / len(seen))}
            val_probs, val_loss = predict(model, val_set, t["batch_size"], t["amp"])
            if not math.isfinite(val_loss):
                raise PipelineError(f"validation loss became {val_loss} at epoch {epoch}: "
                                    "lower train.lr or check the inputs.")
            row["val"] = epoch_metrics(val_set.labels.cpu(), val_probs, val_loss)
            for phase in ("train", "val"):
                for k, v in row[phase].items():
                    live.log_metric(f"{phase}/{k}", v)
            live.next_step()
            history.append(row)
            log.info("%s epoch %d: train loss %.4f f1 %.3f | val loss %.4f f1 %.3f auroc %.3f",
                     variant, epoch, row["train"]["loss"], row["train"]["f1"], val_loss,
                     row["val"]["f1"], row["val"]["auroc"])
            if t["select"] == "last" or val_loss < best:
                best, best_state = val_loss, copy.deepcopy(model.state_dict())
                chosen = epoch

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
    log.info("%s: kept epoch %d (%s), val loss %.4f", variant, chosen, t["select"], history[chosen - 1]["val"]["loss"])
    return {"history": history, "chosen": chosen}


if __name__ == "__main__":
    main(lambda: train(params.check_variant(sys.argv[1] if len(sys.argv) > 1 else ""), params.load()))
