"""Data augmentation of training images: batched, seeded, on the device, on the uint8 cache.

`train.augment` chooses it: none | affine (rotation, shift, zoom, optional horizontal flip) |
affine+jitter (and brightness and contrast). Validation, test and prediction images are never
augmented. Every batch gets its parameters from a seeded CPU generator (`draw`), never from
the global RNG, so training with `none` is unchanged; one affine sampling grid + grid_sample
then warps the whole batch on the device the model runs on (`apply`), and the result is uint8
again, as `cxrfusion.model.normalise` expects.

The default ranges are smaller than torchxrayvision's (rotation up to 45 degrees, translation
0.15, scale 0.85-1.15): frontal (PA/AP) and lateral films are taken in a standard position, and
+-10 degrees, a 5 % shift and +-10 % zoom cover the variation of positioning without turning
the diaphragm or the spine beyond what real films show; brightness and contrast +-0.1 cover
differences of exposure. The flip is off by default (probability 0): a horizontally flipped
frontal film puts the heart on the right (dextrocardia) and a flipped lateral film faces the
other way. A researcher may switch it on (MedFuse flips).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrfusion import distributed, params
from cxrfusion.distributed import World
from cxrfusion.formats import Run
from cxrfusion.params import Augment, Params, recipe

# the columns of draw's output, one row per image:
#   rotation     degrees, positive counter-clockwise as displayed (torchvision's convention)
#   translate_x  shift as a fraction of the side, positive to the right
#   translate_y  shift as a fraction of the side, positive downwards
#   scale        zoom factor (> 1 enlarges the content)
#   flip         1: mirrored left-right (before the rotation, zoom and shift), else 0
#   brightness   offset added, as a fraction of the full range (255)
#   contrast     factor about the image's mean intensity
COLUMNS = ("rotation", "translate_x", "translate_y", "scale", "flip", "brightness", "contrast")
K = len(COLUMNS)
IDENTITY = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0)  # the row that changes nothing


def draw(n: int, generator: torch.Generator, ranges: Augment, jitter: bool) -> torch.Tensor:
    """(n, K) float32 CPU tensor of per-image parameters (columns: COLUMNS), drawn from
    `generator` (a CPU torch.Generator) only, never from the global RNG: training with
    augment=none draws nothing and reproduces earlier results byte for byte.

    K uniform values are drawn per image whatever `jitter` is, so that a seed gives the same
    geometry with and without jitter; without it the jitter columns are set to identity."""
    if generator.device.type != "cpu":
        raise ValueError(f"draw needs a CPU torch.Generator, not one on {generator.device}")
    u = torch.rand((n, K), generator=generator, dtype=torch.float32)
    spread = 2 * u - 1  # uniform in [-1, 1)
    out = torch.empty((n, K), dtype=torch.float32)
    out[:, 0] = spread[:, 0] * ranges.rotation
    out[:, 1] = spread[:, 1] * ranges.translate
    out[:, 2] = spread[:, 2] * ranges.translate
    out[:, 3] = 1 + spread[:, 3] * ranges.scale
    out[:, 4] = (u[:, 4] < ranges.flip).float()  # rand is in [0, 1): never at 0, always at 1
    out[:, 5] = spread[:, 5] * ranges.brightness if jitter else 0.0
    out[:, 6] = 1 + spread[:, 6] * ranges.contrast if jitter else 1.0
    return out


def theta(drawn: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine_grid matrices in normalised coordinates ([-1, 1] across the image, y
    down): the output pixel at p samples the input at F R^-1 (p - t) / s, F the flip, R the
    rotation, s the zoom, t the shift (2 x the fraction of the side)."""
    angle = torch.deg2rad(drawn[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    shift = 2 * drawn[:, 1:3]                    # (B, 2): a fraction of the side -> [-1, 1] units
    zoom = drawn[:, 3]
    mirror = 1 - 2 * drawn[:, 4]                 # -1 flips x
    # R^-1 for a counter-clockwise turn on screen (y down) is [[cos, -sin], [sin, cos]]
    inverse = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    inverse = inverse / zoom.view(-1, 1, 1)
    inverse[:, 0, :] *= mirror.view(-1, 1)       # F on the left: the x of the source negated
    offset = -(inverse @ shift.unsqueeze(-1))    # (B, 2, 1)
    return torch.cat([inverse, offset], -1)


def sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """F.affine_grid(theta, (B, 1, size, size), align_corners=False), to float32 rounding
    (2e-7), as one broadcast add of the columns' part and the rows' part: on the CPU
    affine_grid's batched matmul with an inner dimension of 3 is several times slower (64
    images of 240 px: ~120 ms against ~15-30 ms, grid_sample itself ~20-40 ms)."""
    centres = torch.linspace(-1, 1, size, device=theta.device) * ((size - 1) / size)
    a = theta.transpose(1, 2).reshape(-1, 3, 1, 1, 2)  # a[:, k]: column k of every theta
    columns = centres.view(1, 1, size, 1) * a[:, 0]
    rows = centres.view(1, size, 1, 1) * a[:, 1] + a[:, 2]
    return columns + rows  # (B, size, size, 2): the source's (x, y) of every output pixel


def apply(images: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S) on any device + the (B, K) parameters of `draw` -> uint8 (B, S, S) on
    the same device: jitter (when any row has it), one batched affine grid + grid_sample
    (bilinear), rounded and clamped back to uint8. No per-image loop, no decoding.

    Identity rows give the input back bitwise (as do whole-pixel shifts, quarter turns and
    flips): at align_corners=False the grid lands on pixel centres to float32 rounding (< 1e-4
    px at 240 px), so an image moves by less than 0.03 of a grey level before the rounding.
    `drawn` is expected on the CPU, as draw returns it: whether to jitter is read from it."""
    if images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"apply needs uint8 (B, S, S) images, not {images.dtype} "
                         f"{tuple(images.shape)}")
    if drawn.shape != (len(images), K):
        raise ValueError(f"apply needs ({len(images)}, {K}) parameters, not {tuple(drawn.shape)}")
    s = images.shape[-1]
    # decided on the CPU copy that draw returns: no wait on the device
    jitter = bool((drawn[:, 5] != 0).any() or (drawn[:, 6] != 1).any())
    params = drawn.to(images.device, torch.float32)  # the one small copy
    x = images.unsqueeze(1).float()
    if jitter:
        # on the film before the warp: its own mean, and the fill outside the film stays black;
        # clamped as an over- or under-exposed film saturates
        brightness, contrast = params[:, 5].view(-1, 1, 1, 1), params[:, 6].view(-1, 1, 1, 1)
        offset = x.mean((1, 2, 3), keepdim=True) * (1 - contrast) + 255 * brightness
        x.mul_(contrast).add_(offset).clamp_(0, 255)  # in place: x is this call's own copy
    grid = sampling_grid(theta(params), s)
    # what falls outside the film is black (zeros), as outside a collimated film; the cache's
    # `pad` fit letterboxes with the border's median, but `border` padding would smear the
    # edge rows into streaks and `reflection` would mirror anatomy into the picture
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).squeeze(1)


def augment(images: torch.Tensor, generator: torch.Generator, ranges: Augment,
            jitter: bool) -> torch.Tensor:
    """apply(images, draw(len(images), generator, ranges, jitter)): one batch in one process
    (bench/augment.py times it). The training loop calls Augmenter, which draws for the whole
    global batch and applies each process's share."""
    return apply(images, draw(len(images), generator, ranges, jitter))


# --- in the training loop ------------------------------------------------------------------

class Augmenter:
    """train.augment's random transform of each training batch (draw, then apply), from its
    own seeded generator: the shuffling and dropout streams are those of augment=none. Every
    process draws the parameters of the whole global batch and takes its share's, so the
    augmented batch is the same for any number of processes."""

    def __init__(self, p: Params, seed: int):
        self.jitter = recipe(p.train, p.image.pretrained)["augment"] == "affine+jitter"
        self.ranges = p.augment
        stream = np.random.SeedSequence([seed, 0xA06]).generate_state(1)[0]  # the run's seed
        self.generator = torch.Generator().manual_seed(int(stream))  # checkpointed with the rest

    def __call__(self, images: torch.Tensor, whole: int, world: World) -> torch.Tensor:
        drawn = draw(whole, self.generator, self.ranges, self.jitter)
        return apply(images, distributed.shard(drawn, world))


def augmenter(run: Run, p: Params) -> Augmenter | None:
    """The transform of the run's training images, or None: train.augment (or the recipe's)
    none, or no image read."""
    if recipe(p.train, p.image.pretrained)["augment"] == "none" or not params.row(run.variant).cnn:
        return None
    return Augmenter(p, run.seed)
