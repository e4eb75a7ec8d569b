"""The frozen text encoder: load it (never silently another one), pool its output.

Used by `embed_text` for the whole dataset and by prediction for new reports, so both read
text the same way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cxrfusion.common import PipelineError
from cxrfusion.params import spelled

log = logging.getLogger(__name__)

BIOBERT = "dmis-lab/biobert-base-cased-v1.1"
# A vocabulary is cased when at least this share of its tokens hold a capital: an uncased one
# holds none besides specials such as [CLS]; a cased one (BioBERT's) thousands, "The", "Patient"
CASED_SHARE = 0.01
SPECIAL_TOKEN = re.compile(r"\[\w+\]")
PROBE = "Heart"  # a lowercasing tokenizer reads it as it reads "heart"
CASINGS = {False: "cased", True: "lowercased"}  # the suffix of a fingerprint


def load_encoder(name: str, revision: str | None, device: torch.device, lowercase="auto"):
    """AutoTokenizer/AutoModel.from_pretrained(name): a hub id or a local folder; frozen, eval.

    lowercase (text.lowercase): true/false is passed to the tokenizer as do_lower_case; auto
    resolves it from the encoder's files (`resolve_lowercase`). `reads_lowercase(tokenizer)`
    tells afterwards which it is."""
    from transformers import AutoModel, AutoTokenizer

    try:
        model = AutoModel.from_pretrained(name, revision=revision)  # trust_remote_code stays off
        lower, why = resolve_lowercase(name, revision, lowercase)
        log.info("text.lowercase=%s: %s: reading reports %s", spelled(lowercase), why,
                 CASINGS[lower])
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, do_lower_case=lower)
    except (OSError, ValueError) as err:
        raise PipelineError(
            f"cannot load the text encoder text.model={name!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). If it is a hub id, this machine must reach the "
            "Hugging Face hub; offline, download it where there is network, e.g. "
            f"`huggingface-cli download {BIOBERT} --local-dir models/biobert`, copy the folder "
            "here and set text.model=models/biobert. For the offline demo use "
            "text.model=models/demo_encoder.") from None
    if reads_lowercase(tokenizer) != lower:  # a tokenizer class that ignores do_lower_case
        raise PipelineError(
            f"the tokenizer of text.model={name!r} ({type(tokenizer).__name__}) reads reports "
            f"{CASINGS[not lower]} although text.lowercase resolved to {spelled(lower)} "
            f"({why}): it ignores do_lower_case; set text.lowercase: {spelled(not lower)}.")
    if not Path(name).is_dir() and revision is None:  # the hub's main branch can move
        log.warning("text.model=%s is read at the hub's current main (commit %s), not at a pinned "
                    "revision: set text.revision to that commit so that a rerun reads the same "
                    "weights", name, getattr(model.config, "_commit_hash", None) or "unknown")
    model.eval().requires_grad_(False)
    return tokenizer, model.to(device)


def reads_lowercase(tokenizer) -> bool:
    """Whether the tokenizer lowercases reports before it reads them."""
    return tokenizer.tokenize(PROBE) == tokenizer.tokenize(PROBE.lower())


def resolve_lowercase(name: str, revision: str | None, lowercase="auto") -> tuple[bool, str]:
    """text.lowercase as a boolean, and why.

    auto follows the encoder's own tokenizer_config.json (do_lower_case), else the normalizer
    of its tokenizer.json, else its vocab.txt: cased when a share of its tokens hold capitals.
    Without a tokenizer_config.json transformers would lowercase every BERT (its default
    do_lower_case=True), BioBERT's cased one too (dmis-lab/biobert-pytorch issue 24)."""
    if isinstance(lowercase, bool):
        return lowercase, "given explicitly"
    if lowercase != "auto":
        raise PipelineError(f"text.lowercase={lowercase!r} is not allowed: use auto, true or "
                            "false.")
    config = _encoder_file(name, revision, "tokenizer_config.json")
    if config is not None:
        value = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case")
        if value is not None:
            if not isinstance(value, bool):
                raise PipelineError(f"{config} sets do_lower_case={value!r}, not true or false: "
                                    "set text.lowercase: true or false in params.yaml.")
            return value, f"{name}/tokenizer_config.json sets do_lower_case={spelled(value)}"
    none = f"{name} has no tokenizer_config.json that sets do_lower_case"
    fast = _encoder_file(name, revision, "tokenizer.json")
    if fast is not None:
        normalizer = json.loads(fast.read_text(encoding="utf-8")).get("normalizer")
        lower = _normalizer_lowercases(normalizer)
        return lower, f"{none}; its tokenizer.json {'lowercases' if lower else 'keeps the case'}"
    vocab = _encoder_file(name, revision, "vocab.txt")
    if vocab is None:
        raise PipelineError(f"text.lowercase=auto cannot tell whether {name} reads reports cased: "
                            f"{none}, no tokenizer.json and no vocab.txt; set text.lowercase: "
                            "true or false in params.yaml.")
    tokens = [t for t in vocab.read_text(encoding="utf-8").splitlines()
              if not SPECIAL_TOKEN.fullmatch(t)]
    capitals = sum(any(c.isupper() for c in t) for t in tokens)
    lower = capitals < CASED_SHARE * len(tokens)
    return lower, (f"{none} and its vocabulary is {'uncased' if lower else 'cased'} "
                   f"({capitals:,} of {len(tokens):,} tokens hold capitals)")


def _normalizer_lowercases(spec: dict | None) -> bool:
    """Whether a tokenizer.json normalizer lowercases (BertNormalizer, Lowercase, a Sequence)."""
    if not spec:
        return False
    if spec.get("type") == "Sequence":
        return any(_normalizer_lowercases(s) for s in spec.get("normalizers", []))
    return spec.get("type") == "Lowercase" or (spec.get("type") == "BertNormalizer"
                                              and bool(spec.get("lowercase", True)))


def _encoder_file(name: str, revision: str | None, filename: str) -> Path | None:
    """One file of the encoder (a local folder, or the hub repo at `revision`); None if it has
    none."""
    folder = Path(name)
    if folder.is_dir():
        return folder / filename if (folder / filename).is_file() else None
    from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(name, filename, revision=revision))
    except RemoteEntryNotFoundError:  # the repo has no such file
        return None
    except LocalEntryNotFoundError:  # offline: absent from the repo, or never downloaded?
        if try_to_load_from_cache(name, filename, revision=revision) is _CACHED_NO_EXIST:
            return None
        raise PipelineError(
            f"text.lowercase=auto must know whether {name} has a {filename} to tell whether it "
            "reads reports cased, but the Hugging Face cache does not say and the hub cannot be "
            f"reached: download the model folder (`huggingface-cli download {name} --local-dir "
            "models/...`) and set text.model to it, or set text.lowercase: true or false."
        ) from None


def encoder_fingerprint(name: str, model, tokenizer) -> str:
    """The hub commit of the weights, or a content hash of a local folder, then how the
    tokenizer reads reports: `sha256:<hex>_cased` or `..._lowercased`.

    The casing is part of it because the same files give other vectors read otherwise, and
    so it reaches features/text/<input>.h5 and every model.json that records the fingerprint."""
    folder = Path(name)
    if folder.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(f.relative_to(folder).as_posix().encode())
            digest.update(f.read_bytes())
        base = "sha256:" + digest.hexdigest()
    else:
        base = "commit:" + str(getattr(model.config, "_commit_hash", None) or "unknown")
    return f"{base}_{CASINGS[reads_lowercase(tokenizer)]}"


def fingerprint_casing(fingerprint: str) -> tuple[str, bool | None]:
    """A fingerprint without its casing, and the casing (True: lowercased; None: a fingerprint
    recorded before the casing was part of it)."""
    base, _, suffix = fingerprint.rpartition("_")
    for lower, casing in CASINGS.items():
        if base and suffix == casing:
            return base, lower
    return fingerprint, None


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The [CLS] vector (position 0) of the last layer."""
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The average over real tokens only (padding masked out)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


# text.pooling: how the encoder's last hidden states (batch, tokens, width) become one vector a
# report; params.py's POOLINGS holds the same names (tests/test_registries.py keeps them in step)
POOLINGS = {"cls": cls_pool, "mean": mean_pool}


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    return POOLINGS[pooling](hidden, mask)


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
    lengths = [len(ids) for ids
               in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(texts), batch_size)][part[0]::part[1]]
    rows = np.sort(np.concatenate(batches)) if batches else np.zeros(0, dtype=np.int64)
    out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)  # only this part's
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for idx in tqdm(batches, desc="reports", unit="batch", disable=not progress):
        batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt").to(device)
        with amp:
            hidden = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).last_hidden_state
        out[np.searchsorted(rows, idx)] = pool(hidden.float(), batch["attention_mask"],
                                               pooling).cpu().numpy()
    return rows, out
