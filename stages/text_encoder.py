"""The frozen text encoder: load it (never silently another one), pool its output.

Used by `embed_text` for the whole dataset and by prediction for new reports, so both read
text the same way.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stages.common import PipelineError

log = logging.getLogger(__name__)

BIOBERT = "dmis-lab/biobert-base-cased-v1.1"


def load_encoder(name: str, revision: str | None, device: torch.device):
    """AutoTokenizer/AutoModel.from_pretrained(name): a hub id or a local folder; frozen, eval."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModel.from_pretrained(name, revision=revision)  # trust_remote_code stays off
    except (OSError, ValueError) as err:
        raise PipelineError(
            f"cannot load the text encoder text.model={name!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). If it is a hub id, this machine must reach the "
            "Hugging Face hub; offline, download it where there is network, e.g. "
            f"`huggingface-cli download {BIOBERT} --local-dir models/biobert`, copy the folder "
            "here and set text.model=models/biobert. For the offline demo use "
            "text.model=models/demo_encoder.") from None
    model.eval().requires_grad_(False)
    return tokenizer, model.to(device)


def encoder_fingerprint(name: str, model) -> str:
    """The hub commit of the weights, or a content hash of a local folder."""
    folder = Path(name)
    if folder.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(f.relative_to(folder).as_posix().encode())
            digest.update(f.read_bytes())
        return "sha256:" + digest.hexdigest()
    return "commit:" + str(getattr(model.config, "_commit_hash", None) or "unknown")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """cls: the [CLS] vector (position 0); mean: average over real tokens only."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def embed(texts: list[str], tokenizer, model, pooling: str, max_length: int, batch_size: int,
          device: torch.device, progress: bool = True) -> np.ndarray:
    """One float32 vector per text, in input order.

    Texts are sorted by token count so each batch pads only to its own longest text; on a GPU
    the encoder runs in bf16 (CPU: float32).
    """
    return embed_part(texts, tokenizer, model, pooling, max_length, batch_size, device, progress)[1]


@torch.inference_mode()
def embed_part(texts: list[str], tokenizer, model, pooling: str, max_length: int, batch_size: int,
               device: torch.device, progress: bool = True,
               part: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """`embed` of process k of n (part=(k, n)): every n-th batch from the k-th, so n processes
    together embed every text in exactly the batches one process would. Returns the rows of
    `texts` it embedded (ascending) and their vectors."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(texts), batch_size)][part[0]::part[1]]
    rows = np.sort(np.concatenate(batches)) if batches else np.zeros(0, dtype=np.int64)
    out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)  # only this part's
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for idx in tqdm(batches, desc="reports", unit="batch", disable=not progress):
        batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt").to(device)
        with amp:
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        out[np.searchsorted(rows, idx)] = pool(hidden.float(), batch["attention_mask"], pooling).cpu().numpy()
    return rows, out
