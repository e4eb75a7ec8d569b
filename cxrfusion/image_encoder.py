"""A frozen image encoder: every X-ray read once into one vector (stage `embed_images`).

An encoder is a transformers vision model with its image processor (DINOv2, RAD-DINO: read with
AutoModel and AutoImageProcessor) or a timm model without its classifier (`timm:<name>`). Each
X-ray is read from the raw file as `cache_images` reads it (grayscale, made square by
image.fit), but at the encoder's own input side (its processor's crop, or timm's pretrained
config) and normalised with the encoder's own mean and sd, the gray copied to its three
channels. The vector is the CLS token or the mean of the patch tokens (declared: `pooling`), of
the last layer, as the model returns it (DINOv2's after its final layer norm).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from cxrfusion import weights
from cxrfusion.common import PipelineError

TIMM = "timm:"  # a model name so prefixed is timm's


@dataclass
class Encoder:
    """A loaded encoder and how it reads an image."""
    model: torch.nn.Module
    size: int                    # input side, px
    mean: tuple[float, ...]      # per channel, on 0..1 pixels
    std: tuple[float, ...]
    prefix_tokens: int           # tokens before the patches (CLS, registers): mean skips them
    fingerprint: str             # which weights: a folder's content hash, or the hub commit


def load(settings: dict, device: torch.device) -> Encoder:
    """The encoder `settings` (one entry of frozen_image.encoders) names, in eval mode."""
    name = settings["model"]
    try:
        if name.startswith(TIMM):
            return _timm(name[len(TIMM):], device)
        return _transformers(name, settings["revision"], settings["trust_remote_code"], device)
    except OSError as err:  # no such folder, no network, no cached copy
        raise PipelineError(
            f"cannot load the image encoder {name} ({type(err).__name__}: {str(err)[:200]}). "
            "Offline, download it where there is network (`huggingface-cli download <id> "
            "--local-dir models/<alias>`) and set its model to that folder.") from None


def _transformers(name: str, revision: str | None, trust_remote_code: bool,
                  device: torch.device) -> Encoder:
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(name, revision=revision,
                                                   trust_remote_code=trust_remote_code)
    model = AutoModel.from_pretrained(name, revision=revision,
                                      trust_remote_code=trust_remote_code)
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop",
                                                            False) else None
    size = crop or processor.size
    side = size.get("height") or size.get("shortest_edge")
    if not side:
        raise PipelineError(f"{name}'s image processor names no input side (crop_size or size): "
                            "an encoder whose input side is unknown cannot be read")
    registers = getattr(model.config, "num_register_tokens", 0) or 0
    return Encoder(model.to(device).eval(), int(side), tuple(processor.image_mean),
                   tuple(processor.image_std), 1 + registers, weights.fingerprint(name, model))


def _timm(name: str, device: torch.device) -> Encoder:
    import timm

    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except RuntimeError as err:
        raise PipelineError(f"frozen image encoder timm:{name}: {err}") from None
    cfg = model.pretrained_cfg
    fingerprint = f"timm:{name}:{cfg.get('tag') or ''}:{cfg.get('hf_hub_id') or ''}"
    return Encoder(model.to(device).eval(), int(cfg["input_size"][-1]), tuple(cfg["mean"]),
                   tuple(cfg["std"]), getattr(model, "num_prefix_tokens", 1), fingerprint)


def pooled(tokens: torch.Tensor, pooling: str, prefix_tokens: int) -> torch.Tensor:
    """One vector an image from the last layer: (B, N, D) tokens, or a CNN's (B, D, H, W) map
    (whose only reading is the mean)."""
    if tokens.dim() == 4:
        if pooling != "mean":
            raise PipelineError("a convolutional encoder has no CLS token: use pooling: mean")
        return tokens.mean((2, 3))
    return tokens[:, 0] if pooling == "cls" else tokens[:, prefix_tokens:].mean(1)


def pixels(gray: np.ndarray, encoder: Encoder, device: torch.device) -> torch.Tensor:
    """uint8 (B, S, S) grayscale -> float (B, 3, S, S), normalised as the encoder expects."""
    x = torch.from_numpy(gray).to(device).unsqueeze(1).float().div_(255).expand(-1, 3, -1, -1)
    mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def embed(images, n: int, encoder: Encoder, pooling: str, batch_size: int,
          device: torch.device, progress: bool = True) -> np.ndarray:
    """float32 (n, D): one vector for each of the `n` uint8 (S, S) arrays `images` yields, in
    order (bf16 on a GPU, the pooling in float32)."""
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    out, batch = [], []

    def flush():
        x = pixels(np.stack(batch), encoder, device)
        with amp:
            if hasattr(encoder.model, "forward_features"):  # timm
                tokens = encoder.model.forward_features(x)
            else:
                tokens = encoder.model(pixel_values=x).last_hidden_state
        out.append(pooled(tokens.float(), pooling, encoder.prefix_tokens).cpu().numpy())
        batch.clear()

    for image in tqdm(images, total=n, desc="images", unit="img", disable=not progress):
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def reading(settings: dict, encoder: Encoder, fit: str) -> dict:
    """What the vectors depend on, stored with them and in every model that reads them."""
    return {"model": settings["model"], "revision": settings["revision"] or "",
            "pooling": settings["pooling"], "size": encoder.size, "fit": fit,
            "fingerprint": encoder.fingerprint,
            "trust_remote_code": bool(settings["trust_remote_code"])}
