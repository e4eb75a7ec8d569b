"""The frozen text encoder: load it (never silently another one), pool its output.

Used by `embed_text` for the whole dataset and by prediction for new reports, so both read
text the same way.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cxrfusion import weights
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


def load_encoder(name: str, revision: str | None, device: torch.device, lowercase="auto",
                 trust_remote_code: bool = False):
    """AutoTokenizer/AutoModel.from_pretrained(name): a hub id or a local folder; frozen, eval.

    lowercase (text.lowercase): true/false is passed to the tokenizer as do_lower_case; auto
    resolves it from the encoder's files (`resolve_lowercase`). `reads_lowercase(tokenizer)`
    tells afterwards which it is. trust_remote_code (text.trust_remote_code) is the only way
    code from the model's repository runs. A tokenizer without a pad token gets one
    (`give_pad_token`)."""
    from transformers import AutoModel, AutoTokenizer

    remote = {"trust_remote_code": True} if trust_remote_code else {}
    if trust_remote_code:
        log.warning("text.trust_remote_code=true: running the model code that %s ships", name)
    try:
        model = AutoModel.from_pretrained(name, revision=revision, **remote)
        lower, why = resolve_lowercase(name, revision, lowercase)
        log.info("text.lowercase=%s: %s: reading reports %s", spelled(lowercase), why,
                 CASINGS[lower])
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, do_lower_case=lower,
                                                  **remote)
    except (OSError, ValueError) as err:
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise PipelineError(
                f"text.model={name!r} ships its own model code, which runs only on request: "
                "read that code first, then set text.trust_remote_code: true (recorded in the "
                "cache, the model record and the study report; docs/real-study.md, \"Remote "
                "code\").") from None
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
    give_pad_token(tokenizer, name)
    model.eval().requires_grad_(False)
    return tokenizer, model.to(device)


def give_pad_token(tokenizer, name: str) -> None:
    """A batch of reports is padded, and a decoder's tokenizer often has no pad token. The
    rule: its end-of-sequence token, else its unknown token (the attention mask hides either,
    and every pooling skips them); a tokenizer with neither is refused by name."""
    if tokenizer.pad_token is not None:
        return
    for kind in ("eos_token", "unk_token"):
        if getattr(tokenizer, kind, None) is not None:
            tokenizer.pad_token = getattr(tokenizer, kind)
            log.info("the tokenizer of %s has no pad token: padding with its %s %r (masked)",
                     name, kind.removesuffix("_token"), tokenizer.pad_token)
            return
    raise PipelineError(f"the tokenizer of text.model={name!r} has no pad, end-of-sequence or "
                        "unknown token to pad a batch of reports with: add a pad_token to its "
                        "tokenizer_config.json (special_tokens_map.json).")


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


def _encoder_file(name: str, revision: str | None, filename: str,
                  asker: str = "text.lowercase") -> Path | None:
    """One file of the encoder (a local folder, or the hub repo at `revision`); None if it has
    none. `asker`: the parameter whose auto needs it (text.lowercase, text.pooling)."""
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
        instead = {"text.lowercase": "true or false", "text.pooling": "cls, mean or last"}
        raise PipelineError(
            f"{asker}=auto must know whether {name} has a {filename}, but the Hugging Face "
            "cache does not say and the hub cannot be reached: download the model folder "
            f"(`huggingface-cli download {name} --local-dir models/...`) and set text.model to "
            f"it, or set {asker}: {instead[asker]}.") from None


def encoder_fingerprint(name: str, model, tokenizer) -> str:
    """The hub commit of the weights, or a content hash of a local folder, then how the
    tokenizer reads reports: `sha256:<hex>_cased` or `..._lowercased`.

    The casing is part of it because the same files give other vectors read otherwise, and
    so it reaches features/text/<input>.h5 and every model.json that records the fingerprint."""
    return f"{weights.fingerprint(name, model)}_{CASINGS[reads_lowercase(tokenizer)]}"


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
    """The average over real tokens only (padding masked out; where, not a product, so that a
    padding position's NaN, which a decoder can give a fully masked row, stays out)."""
    real = mask.unsqueeze(-1).bool()
    return torch.where(real, hidden, 0).sum(1) / real.sum(1).clamp(min=1).to(hidden.dtype)


def last_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each report's last real token, whichever side the batch is padded on: a decoder has read
    the whole report only there."""
    last = mask.shape[1] - 1 - mask.flip(1).to(torch.int64).argmax(1)  # the last 1 of each row
    return hidden[torch.arange(len(hidden), device=hidden.device), last]


# text.pooling: how the encoder's last hidden states (batch, tokens, width) become one vector a
# report; params.py's POOLINGS holds the same names and `auto` (tests/test_registries.py keeps
# them in step)
POOLINGS = {"cls": cls_pool, "mean": mean_pool, "last": last_pool}


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    return POOLINGS[pooling](hidden, mask)


@dataclass(frozen=True)
class Reading:
    """How reports become vectors: `prompt` prepended to each, the encoder's last hidden states
    pooled (`pooling`), then a sentence-transformers folder's Dense layers ((weight, bias,
    activation) each) and L2 normalisation, when text.pooling auto found them."""
    pooling: str
    prompt: str = ""
    dense: tuple = ()
    normalize: bool = False

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = pool(hidden, mask, self.pooling)
        for weight, bias, activation in self.dense:
            out = ACTIVATIONS[activation](torch.nn.functional.linear(
                out, weight.to(out), None if bias is None else bias.to(out)))
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out

    def width(self, hidden_size: int) -> int:
        return self.dense[-1][0].shape[0] if self.dense else hidden_size

    @property
    def summary(self) -> str:
        """What the cache and the model record say: last, then dense 64, normalize."""
        steps = [self.pooling, *(f"dense {w.shape[0]} {a.lower()}" for w, _, a in self.dense),
                 *(["normalize"] if self.normalize else [])]
        return ", then ".join(steps)


# the activations a sentence-transformers Dense module may end in (its activation_function)
ACTIVATIONS = {"Tanh": torch.tanh, "Identity": lambda x: x}


def is_causal(model) -> bool:
    """The one rule for a decoder: its first position's output stays the same when the token
    after it changes (it reads left to right), checked on two 2-token inputs. Configs do not
    say it reliably (E5-Mistral's names MistralModel, not ...ForCausalLM)."""
    ids = torch.tensor([[1, 2], [1, 3]], device=model.device)
    with torch.inference_mode():
        first = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0]
    return torch.allclose(first[0].float(), first[1].float(), rtol=1e-4, atol=1e-5)


def resolve_reading(name: str, revision: str | None, model, pooling: str,
                    prompt: str | None = None) -> Reading:
    """text.pooling for this encoder, checked before any report is read. auto: a
    sentence-transformers folder's own pooling and modules (modules.json), else `last` for a
    causal model (`is_causal`), else `cls`. `cls` on a causal model is refused: position 0 has
    read only the first token, so every report starting with the same word gets one vector."""
    prompt = prompt or ""
    if pooling == "auto":
        modules = _encoder_file(name, revision, "modules.json", "text.pooling")
        if modules is not None:
            reading = sentence_transformers_reading(name, revision, modules, prompt)
            log.info("text.pooling=auto: %s is a sentence-transformers folder: %s", name,
                     reading.summary)
            return reading
        causal = is_causal(model)
        pooling = "last" if causal else "cls"
        log.info("text.pooling=auto: %s is %s: %s pooling", name,
                 "causal (a decoder)" if causal else "bidirectional (an encoder)", pooling)
    elif pooling == "cls" and is_causal(model):  # mean and last suit either: no probe
        raise PipelineError(
            f"text.pooling=cls reads position 0 of each report, but text.model={name!r} is a "
            "causal (decoder) model: there it has read only the first token, so every report "
            "that starts with the same word gets the same vector. Use text.pooling: last (or "
            "auto, which picks last for a decoder).")
    if pooling not in POOLINGS:
        raise PipelineError(f"text.pooling={pooling!r} is not allowed: use auto, "
                            + ", ".join(POOLINGS) + ".")
    return Reading(pooling, prompt)


ST_TYPE = "sentence_transformers.models."
ST_POOLINGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
               "pooling_mode_lasttoken": "last"}


def sentence_transformers_reading(name: str, revision: str | None, modules_json: Path,
                                  prompt: str) -> Reading:
    """The Reading a sentence-transformers folder declares: Transformer (at the folder's root),
    Pooling (cls, mean or last token), then any Dense and Normalize modules, in order. Any other
    module, or pooling mode, is refused by name rather than read wrongly."""
    modules = sorted(json.loads(modules_json.read_text(encoding="utf-8")),
                     key=lambda m: m.get("idx", 0))
    where = f"{name}/modules.json"
    kinds = [m.get("type", "").removeprefix(ST_TYPE) for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or modules[0].get("path", "") != "":
        raise PipelineError(f"{where} lists {kinds}: text.pooling=auto reads a Transformer at the "
                            "folder's root then a Pooling module; set text.pooling to cls, mean "
                            "or last to read the transformer alone.")
    config = _module_json(name, revision, modules[1], where)
    modes = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
    if len(modes) != 1 or modes[0] not in ST_POOLINGS:
        raise PipelineError(f"{where}: its Pooling module asks for {modes or 'no mode'}; "
                            "text.pooling=auto reads one of " + ", ".join(ST_POOLINGS)
                            + ": set text.pooling to cls, mean or last instead.")
    if prompt and config.get("include_prompt", True) is False:
        raise PipelineError(f"{where}: its Pooling module leaves the prompt's tokens out "
                            "(include_prompt: false), which this pipeline does not do: set "
                            "text.prompt: null, or text.pooling to cls, mean or last.")
    dense, normalize = [], False
    for module, kind in zip(modules[2:], kinds[2:]):
        if normalize or kind not in ("Dense", "Normalize"):
            raise PipelineError(f"{where} lists a {kind} module after "
                                f"{'Normalize' if normalize else 'the pooling'}: text.pooling="
                                "auto reads Dense and Normalize modules only; set text.pooling "
                                "to cls, mean or last to read the transformer alone.")
        if kind == "Normalize":
            normalize = True
            continue
        dense.append(_dense(name, revision, module, where))
    return Reading(ST_POOLINGS[modes[0]], prompt, tuple(dense), normalize)


def _module_json(name: str, revision: str | None, module: dict, where: str) -> dict:
    path = _encoder_file(name, revision, f"{module['path']}/config.json", "text.pooling")
    if path is None:
        raise PipelineError(f"{where}: module {module['path']!r} has no config.json.")
    return json.loads(path.read_text(encoding="utf-8"))


def _dense(name: str, revision: str | None, module: dict, where: str) -> tuple:
    """(weight, bias, activation) of a sentence-transformers Dense module."""
    config = _module_json(name, revision, module, where)
    activation = str(config.get("activation_function", "")).rpartition(".")[2]
    if activation not in ACTIVATIONS:
        raise PipelineError(f"{where}: Dense module {module['path']!r} ends in "
                            f"{config.get('activation_function')!r}; text.pooling=auto reads "
                            + ", ".join(ACTIVATIONS) + " only.")
    weights = _encoder_file(name, revision, f"{module['path']}/model.safetensors",
                            "text.pooling")
    if weights is None:
        raise PipelineError(f"{where}: Dense module {module['path']!r} has no "
                            "model.safetensors (a pytorch_model.bin is not read: it can run "
                            "code when loaded).")
    from safetensors.torch import load_file

    state = load_file(str(weights))
    return state["linear.weight"], state.get("linear.bias"), activation


def embed(texts: list[str], tokenizer, model, reading: Reading | str, max_length: int,
          batch_size: int, device: torch.device, progress: bool = True) -> np.ndarray:
    """One float32 vector per text, in input order (`reading`: a Reading, or a pooling's name).

    Texts are sorted by token count so each batch pads only to its own longest text; on a GPU
    the encoder runs in bf16 (CPU: float32).
    """
    return embed_part(texts, tokenizer, model, reading, max_length, batch_size, device,
                      progress)[1]


@torch.inference_mode()
def embed_part(texts: list[str], tokenizer, model, reading: Reading | str, max_length: int,
               batch_size: int, device: torch.device, progress: bool = True,
               part: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """`embed` of process k of n (part=(k, n)): every n-th batch from the k-th, so n processes
    together embed every text in exactly the batches one process would. Returns the rows of
    `texts` it embedded (ascending) and their vectors.

    Positions are counted from the attention mask (where the model takes position_ids), so a
    report reads the same padded on the left or on the right."""
    reading = Reading(reading) if isinstance(reading, str) else reading
    texts = [reading.prompt + text for text in texts]
    lengths = [len(ids) for ids
               in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(texts), batch_size)][part[0]::part[1]]
    rows = np.sort(np.concatenate(batches)) if batches else np.zeros(0, dtype=np.int64)
    out = np.zeros((len(rows), reading.width(model.config.hidden_size)),
                   dtype=np.float32)  # only this part's
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    positions = "position_ids" in inspect.signature(model.forward).parameters
    for idx in tqdm(batches, desc="reports", unit="batch", disable=not progress):
        batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                          padding=True, return_tensors="pt").to(device)
        mask = batch["attention_mask"]
        extra = {"position_ids": (mask.cumsum(1) - 1).clamp(min=0)} if positions else {}
        with amp:
            hidden = model(input_ids=batch["input_ids"], attention_mask=mask,
                           **extra).last_hidden_state
        out[np.searchsorted(rows, idx)] = reading(hidden.float(), mask).cpu().numpy()
    return rows, out
