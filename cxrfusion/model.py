"""The classifier: an image branch (timm CNN), a text branch (cached vectors), one MLP head.

How the head joins the two (model.fusion):
    concat     (the original)  head(concat(cnn(image), text_vector))
    projector                  head(concat(P_i(cnn(image)), P_t(text_vector)))
    gated                      head(z * P_i(cnn(image)) + (1 - z) * P_t(text_vector)),
                               z = sigmoid(W [P_i(..), P_t(..)]), one weight a feature and study
    P: Linear(in, shared_dim) -> LayerNorm -> GELU, one per modality (GLoRIA's, MedCLIP's and
    BiMediX2's projection into a shared space); the gate is Arevalo et al.'s gated multimodal
    unit (2017) over the projected vectors.
    head: Linear(in, model.hidden) -> ReLU -> Dropout(model.dropout) -> Linear(model.hidden, 2)
          (the original's: 256 hidden units, dropout 0.3)
The image and text models read one modality through the same parts (its projector under
projector and gated: no gate), so each comparison is like for like. HEADS holds one builder a
fusion: its parts, and how it joins the two.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from cxrfusion import params
from cxrfusion.backbones import weight_tags
from cxrfusion.common import PipelineError


def create_backbone(name: str, pretrained: bool | str) -> nn.Module:
    """timm model without its classifier (`num_classes=0`: pooled features).

    pretrained: False (random init), True (timm's ImageNet weights from the hub), or the path
    of a weights file downloaded beforehand (for machines without network).
    """
    import timm

    try:
        if isinstance(pretrained, str):
            if not Path(pretrained).is_file():
                raise FileNotFoundError(pretrained)
            return timm.create_model(name, pretrained=True, num_classes=0,
                                     pretrained_cfg_overlay={"file": pretrained})
        return timm.create_model(name, pretrained=bool(pretrained), num_classes=0)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise PipelineError(f"model.backbone={name!r} is not a timm model.") from None
        if "Invalid pretrained tag" in str(err):
            raise PipelineError(f"model.backbone={name!r}: timm has no such tag; its tagged "
                                f"weights are {weight_tags(name)}.") from None
        raise _weights_error(name, err) from None
    except (OSError, ValueError) as err:  # no network, no cache, no such file
        raise _weights_error(name, err) from None


def _weights_error(name: str, err: Exception) -> PipelineError:
    return PipelineError(
        f"cannot load ImageNet weights for {name} ({type(err).__name__}: {str(err)[:200]}). "
        "image.pretrained=true needs the Hugging Face hub; offline, download them where there "
        f"is network (`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` "
        "fills ~/.cache/huggingface, which you can copy here), or set image.pretrained to the "
        "path of a downloaded .safetensors/.pth file, or set image.pretrained=false.")


def projector(width: int, shared_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, shared_dim), nn.LayerNorm(shared_dim), nn.GELU())


# --- the heads: how the MLP joins the image and the report (model.fusion) ------------------------
# Each builds its parts as attributes of the Classifier (the names its saved weights use:
# image_projector, text_projector, gate) and returns the width the MLP reads; `join` gives what
# the MLP reads and the gate z (None unless gated fusion).

class Concat:
    """head(concat(cnn(image), text_vector)): the original."""

    @staticmethod
    def build(model: Classifier, width: int, text_dim: int, shared_dim: int) -> int:
        return (width if model.uses_image else 0) + (text_dim if model.uses_text else 0)

    @staticmethod
    def join(model: Classifier, image: torch.Tensor | None, text: torch.Tensor | None):
        return torch.cat([part for part in (image, text) if part is not None], 1), None


class Projector:
    """head(concat(P_i(cnn(image)), P_t(text_vector))): one projector a modality read."""

    @staticmethod
    def build(model: Classifier, width: int, text_dim: int, shared_dim: int) -> int:
        if model.uses_image:
            model.image_projector = projector(width, shared_dim)
        if model.uses_text:
            model.text_projector = projector(text_dim, shared_dim)
        return shared_dim * (model.uses_image + model.uses_text)

    @staticmethod
    def project(model: Classifier, image: torch.Tensor | None, text: torch.Tensor | None):
        return (None if image is None else model.image_projector(image),
                None if text is None else model.text_projector(text))

    @staticmethod
    def join(model: Classifier, image: torch.Tensor | None, text: torch.Tensor | None):
        return Concat.join(model, *Projector.project(model, image, text))


class Gated:
    """head(z * P_i(cnn(image)) + (1 - z) * P_t(text_vector)): the projectors, and a gate when
    the model reads both (one modality: the projector alone, no gate)."""

    @staticmethod
    def build(model: Classifier, width: int, text_dim: int, shared_dim: int) -> int:
        features = Projector.build(model, width, text_dim, shared_dim)
        if model.uses_image and model.uses_text:
            model.gate = nn.Linear(2 * shared_dim, shared_dim)
            return shared_dim
        return features

    @staticmethod
    def join(model: Classifier, image: torch.Tensor | None, text: torch.Tensor | None):
        image, text = Projector.project(model, image, text)
        if image is None or text is None:
            return Concat.join(model, image, text)
        z = torch.sigmoid(model.gate(torch.cat([image, text], 1)))
        return z * image + (1 - z) * text, z


HEADS = {"concat": Concat, "projector": Projector, "gated": Gated}  # params.FUSIONS


# the head's defaults are params.yaml's (cxrfusion/params.py, section model): one description
HEAD = params.Model()


def reads(variant: str) -> tuple[bool, bool]:
    """(reads the image, reads the report) for a variant: params.VARIANTS' row."""
    row = params.row(variant)
    return row.reads_image, row.reads_report


class Classifier(nn.Module):
    def __init__(self, variant: str, text_dim: int, backbone: str | None, *,
                 pretrained: bool | str = False, hidden: int = HEAD.hidden,
                 dropout: float = HEAD.dropout, fusion: str = HEAD.fusion,
                 shared_dim: int = HEAD.shared_dim, image_dim: int = 0):
        super().__init__()
        # what rebuilds it, saved in model.json (`arguments`); never the weights' source
        self.arguments = {"variant": variant, "text_dim": text_dim, "backbone": backbone,
                          "hidden": hidden, "dropout": dropout, "fusion": fusion,
                          "shared_dim": shared_dim,
                          **({"image_dim": image_dim} if image_dim else {})}
        self.variant, self.fusion = variant, fusion
        self.uses_image, self.uses_text = reads(variant)
        # a frozen arm reads a frozen encoder's cached vector (image_dim wide) where a CNN would be
        self.frozen = params.row(variant).frozen_image
        self.cnn = (create_backbone(backbone, pretrained) if self.uses_image and not self.frozen
                    else None)
        # what forward_head gives: num_features, or the width of a head conv after the pooling
        # (MobileNetV3's head_hidden_size)
        width = (image_dim if self.frozen else
                 getattr(self.cnn, "head_hidden_size", None) or getattr(self.cnn, "num_features",
                                                                        0))
        features = HEADS[fusion].build(self, width, text_dim, shared_dim)
        self.head = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, 2))
        if self.frozen:  # the frozen vectors' scaling, as the report's: fitted, saved
            self.register_buffer("image_mean", torch.zeros(image_dim))
            self.register_buffer("image_scale", torch.ones(image_dim))
        elif self.uses_image:  # made once and moved with the model, not rebuilt every batch
            mean, std = self.input_stats()
            self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1),
                                 persistent=False)
            self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # the report vector's scaling: identity until fitted, saved with the weights
        if self.uses_text:
            self.register_buffer("text_mean", torch.zeros(text_dim))
            self.register_buffer("text_scale", torch.ones(text_dim))

    def forward(self, image: torch.Tensor | None, text: torch.Tensor | None,
                report_weight: bool = False):
        features = self.cnn.forward_features(image) if self.cnn is not None else image
        return self.classify(features if self.uses_image else None, text, report_weight)

    def classify(self, features: torch.Tensor | None, text: torch.Tensor | None,
                 report_weight: bool = False):
        """Logits from the CNN's last feature maps (what Grad-CAM differentiates) and the
        report vector: the backbone's pooling, the fusion, the head. With `report_weight`,
        also the weight the gate gives the report, per row (the mean of 1 - z; gated fusion
        only)."""
        if self.frozen:  # a frozen encoder's vector, standardised
            image = (features.float() - self.image_mean) / self.image_scale
        else:
            image = self.cnn.forward_head(features) if self.uses_image else None
        text = (text.float() - self.text_mean) / self.text_scale if self.uses_text else None
        # The CNN may run under bf16 autocast; the head does not: autocast would run its Linear
        # layers in bf16 whatever the input's dtype, and bf16 logits (8 bits of mantissa) tie
        # in AUROC and differ from the CPU's float32 ones.
        device = (image if image is not None else text).device.type
        with torch.autocast(device, enabled=False):
            joined, gate = self.join(None if image is None else image.float(), text)
            logits = self.head(joined)
        if not report_weight:
            return logits
        if gate is None:
            raise ValueError(f"a {self.fusion} {self.variant} model has no gate: only gated "
                             "fusion weighs the report")
        return logits, (1 - gate).mean(1)

    def join(self, image: torch.Tensor | None, text: torch.Tensor | None):
        """What the head reads (model.fusion), and the gate z (None unless gated fusion)."""
        return HEADS[self.fusion].join(self, image, text)

    def standardise_text(self, vectors: torch.Tensor) -> None:
        """Have the head read each report-vector dimension standardised by the mean and sd of
        `vectors` (the training studies', one row a study; model.standardise_text).

        A frozen encoder's vectors vary little between reports around a large common part (the
        demo's: sd 0.12 a dimension around |mean| 0.46); next to the CNN's 1,280 features,
        trained with it, the head then learns from the CNN alone (docs/design.md)."""
        _standardise(self.text_mean, self.text_scale, vectors)

    def standardise_image(self, vectors: torch.Tensor) -> None:
        """A frozen arm: have the head read each dimension of the frozen encoder's vectors
        standardised by the training images' mean and sd (one row an image), always: a linear
        probe's usual reading, and the encoder's scale (a ViT's features reach the hundreds)
        says nothing about the X-ray."""
        _standardise(self.image_mean, self.image_scale, vectors)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.cnn is not None and not any(q.requires_grad for q in self.cnn.parameters()):
            self.cnn.eval()  # a frozen backbone is frozen whole: its batch-norm statistics too
        return self

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The mean and std the backbone was trained with (ImageNet for timm's weights)."""
        cfg = self.cnn.pretrained_cfg if self.cnn is not None else {}
        return (tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                tuple(cfg.get("std", (0.229, 0.224, 0.225))))



def _standardise(mean: torch.Tensor, scale: torch.Tensor, vectors: torch.Tensor) -> None:
    vectors = vectors.double()
    sd = vectors.std(0, unbiased=False)
    mean.copy_(vectors.mean(0))
    scale.copy_(torch.where(sd > 0, sd, torch.ones_like(sd)))  # a constant dimension stays 0


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def freeze_backbone(model: Classifier) -> None:
    if model.cnn is not None:
        model.cnn.requires_grad_(False)


def sync_batchnorm(model: Classifier) -> Classifier:
    """Batch norms that share their statistics across GPUs (DDP). timm's converter, not
    torch's: torch's turns timm's BatchNormAct2d into a plain SyncBatchNorm and drops the SiLU
    inside it, leaving EfficientNet nearly linear."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 grayscale (B, S, S) -> float (B, 3, S, S), normalised as the backbone expects.

    Done on the device the model runs on, so only uint8 crosses the bus.
    """
    x = images.unsqueeze(1).float().div_(255).expand(-1, 3, -1, -1)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


# --- saving and loading -------------------------------------------------------------------------

WEIGHTS = "model.safetensors"
CONFIG = "model.json"


def model_config(model: Classifier, text_dim: int, backbone: str | None, image_size: int, *,
                 image_fit: str) -> dict:
    """What it takes to rebuild the model (no weights: `arguments`, the Classifier's) and to
    read new images as its training images were read (size and `image.fit`): saved beside
    them. `image_fit` has no default: a model that says nothing about its fit would be read
    with a guess. The other keys name the model for its readers (shared_dim: None under
    concat fusion)."""
    mean, std = model.input_stats()
    made = model.arguments
    return {"variant": model.variant, "text_dim": text_dim, "backbone": backbone,
            "hidden": made["hidden"], "dropout": made["dropout"], "fusion": model.fusion,
            "shared_dim": None if model.fusion == "concat" else made["shared_dim"],
            "image_size": image_size, "image_fit": image_fit, "mean": list(mean),
            "std": list(std), "arguments": dict(made)}


def saved_arguments(config: dict) -> dict:
    """The Classifier's arguments of a saved model (model.json): its `arguments`, or, for a
    model saved before they were, its keys (no `fusion`: saved before model.fusion, concat;
    shared_dim None under concat: the default, which concat does not read)."""
    if "arguments" in config:
        return config["arguments"]
    arguments = {k: config[k] for k in ("variant", "text_dim", "backbone", "hidden", "dropout")}
    arguments["fusion"] = config.get("fusion", "concat")
    if config.get("shared_dim") is not None:
        arguments["shared_dim"] = config["shared_dim"]
    return arguments


def load_model(folder: Path, device="cpu") -> tuple[Classifier, dict]:
    """Rebuild a trained model from models/<run>/ (safetensors: no pickle; never the hub's
    weights)."""
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / WEIGHTS).exists():
        raise PipelineError(f"{folder / WEIGHTS} not found: train it with `dvc repro`.")
    config = json.loads((folder / CONFIG).read_text())
    model = Classifier(**saved_arguments(config), pretrained=False)
    model.load_state_dict(load_file(folder / WEIGHTS))
    return model.to(device).eval(), config
