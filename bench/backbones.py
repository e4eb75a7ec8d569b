"""Measures docs/backbones.md's tables (python bench/backbones.py --markdown): what a backbone
costs: parameters, feature width, default input size, FLOPs per image and the image cache of the
IU X-ray collection, for timm models named on the command line.

For each name (timm `name.tag`; default: B1 as the real study runs it, B7 with ImageNet weights,
B7 without a tag, and the demo's tinynet_e), with random weights (pretrained=False: FLOPs and
parameter counts do not depend on the weights):

  backbone_params          timm.create_model(name, pretrained=False, num_classes=0)
  classifier_params        cxrfusion.model.Classifier("fusion", 768, name) and ("image", 0, name)
  num_features             the backbone's pooled feature width
  input_size               timm's default input for that tag (pretrained_cfg), test_input_size
  per side (the tag's default and every --sides, 240 by default: the real study's cache):
    forward_flops          the backbone on one 3 x side x side image, torch.no_grad, on the CPU,
                           counted by torch.utils.flop_counter.FlopCounterMode
    train_step_flops       one training step of the fusion classifier as the pipeline runs it
                           (cxrfusion.scoring.forward on uint8 images, cross-entropy,
                           loss.backward()) at batch 2, per image, on fake tensors (shapes
                           only: torch's FakeTensorMode), with torch's convolution-backward
                           formula corrected for grouped (depthwise) convolutions
    image_cache_bytes      7,466 x side^2 (one uint8 grayscale pixel a byte)
  cpu_train_step           with --steps N: seconds of one such step with Adam's update on this
                           CPU at batch 2, 64 px, median of N after a warm-up (tiny: says
                           nothing about a GPU; on a shared machine it varies several-fold)
  ratios                   every model against the first

FlopCounterMode counts 2 FLOPs per multiply-add (GMACs = GFLOPs / 2) and only convolutions and
matrix products (no batch norm, activations, pooling or the optimiser's update). Its stock
formula for convolution_backward ignores `groups` in the weight gradient, which counts a
depthwise convolution's weight gradient C times (torch 2.14; see pytorch/pytorch pull request
183405): EfficientNet-B1's training step at 240 px came out at 43 x its forward. The count here
uses a corrected formula; the stock one is kept in the JSON as `train_step_flops_torch_formula`.

One JSON object on stdout (progress on stderr), or with --markdown a markdown table:

    .venv/bin/python bench/backbones.py [--models NAME ...] [--sides 240 ...] [--steps N]
                                        [--markdown]

On 2 CPU cores the defaults take about a minute (--steps 3 adds 1 to 3 more, most of it the two
B7s); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `cxrfusion`

# bench.common first: it sets environment defaults that must precede importing torch
from bench.common import STUDY_IMAGES, TEXT_DIM, device_name, log, rounded, versions

# isort: split
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count
from torch.utils.flop_counter import conv_backward_flop as stock_conv_backward_flop

from cxrfusion.common import setup_logging
from cxrfusion.model import Classifier
from cxrfusion.scoring import forward

MODELS = ["efficientnet_b1.ra4_e3600_r240_in1k", "tf_efficientnet_b7.ra_in1k", "efficientnet_b7",
          "tinynet_e.in1k"]
SIDES = [240]           # the real study's cached image size (params.yaml, README)
TRAIN_BATCH = 2         # batch norm in training mode needs 2 images
CPU_STEP_SIDE = 64
FLOPS_NOTE = ("torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-add (GMACs = "
              "FLOPs / 2); convolutions and matrix products only (no batch norm, activations, "
              "pooling or optimiser update)")


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                       transposed, _output_padding, _groups, output_mask, out_shape=None,
                       **kwargs) -> int:
    """convolution_backward counted as its two products: each multiply-add of the forward
    convolution appears once in the input gradient and once in the weight gradient. torch's
    formula (2.14) gets the weight gradient of a grouped convolution `groups` times too large;
    w_shape already holds in_channels / groups, so the forward count is right."""
    forward_flops = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward_flops * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


class Counter(FlopCounterMode):
    """FlopCounterMode with the corrected convolution_backward formula; `stock_flops` is what
    torch's own formula would have totalled (the same pass: one trace, not two)."""

    def __init__(self):
        self.stock_excess = 0

        def corrected(*args, out_shape=None, **kwargs):
            flops = conv_backward_flop(*args, out_shape=out_shape, **kwargs)
            stock = stock_conv_backward_flop(*args, out_val=out_shape, **kwargs)
            self.stock_excess += stock - flops
            return flops

        super().__init__(display=False,
                         custom_mapping={torch.ops.aten.convolution_backward: corrected})

    @property
    def stock_flops(self) -> int:
        return self.get_total_flops() + self.stock_excess


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops(backbone: torch.nn.Module, side: int) -> int:
    """FLOPs of the backbone (pooled features, no classifier) on one 3 x side x side image."""
    backbone.eval()
    flops = Counter()
    with torch.no_grad(), flops:
        backbone(torch.randn(1, 3, side, side))
    return flops.get_total_flops()


def training_step(model: Classifier, device: str, side: int):
    """One forward + backward of the pipeline's training step on random inputs: uint8 images
    through cxrfusion.scoring.forward (normalising on the device), report vectors, labels."""
    images = torch.randint(0, 256, (TRAIN_BATCH, side, side), dtype=torch.uint8, device=device)
    text = torch.randn(TRAIN_BATCH, TEXT_DIM, device=device)
    labels = torch.arange(TRAIN_BATCH, device=device) % 2
    loss = F.cross_entropy(forward(model, images, text, amp=False), labels)
    loss.backward()
    return loss


def train_step_flops(fake: FakeTensorMode, fake_model: Classifier, side: int) -> tuple[int, int]:
    """(corrected, torch's stock) FLOPs per image of one training step, on fake tensors built
    in `fake`: shapes only, no arithmetic and no activation memory (B7 at 600 px would need
    gigabytes). Fake rather than meta tensors: they say "cpu", so the pipeline's autocast
    blocks run unchanged."""
    fake_model.train()
    flops = Counter()
    with fake, flops:
        training_step(fake_model, "cpu", side)
        fake_model.zero_grad(set_to_none=True)
    # every count is proportional to the batch, so the division is exact
    return flops.get_total_flops() // TRAIN_BATCH, flops.stock_flops // TRAIN_BATCH


def cpu_train_step(name: str, steps: int) -> dict:
    """Median seconds of one training step (forward, backward, Adam) of the fusion classifier on
    this CPU at batch 2 and 64 px, after one warm-up step."""
    torch.manual_seed(0)
    model = Classifier("fusion", TEXT_DIM, name).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    seconds = []
    for i in range(steps + 1):
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss = training_step(model, "cpu", CPU_STEP_SIDE)
        optimiser.step()
        if i:  # the first step is the warm-up (allocations, Adam's state)
            seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "steps": steps, "batch": TRAIN_BATCH,
            "side": CPU_STEP_SIDE, "threads": torch.get_num_threads(),
            "loss_finite": math.isfinite(loss.item()),
            "what": "CPU, tiny batch and size: not a GPU estimate"}


def measure_model(name: str, sides: list[int], steps: int) -> dict:
    import timm

    start = time.perf_counter()
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = backbone.pretrained_cfg
    default_side = cfg["input_size"][-1]
    fusion = Classifier("fusion", TEXT_DIM, name)
    image = Classifier("image", 0, name)
    fake = FakeTensorMode()
    with fake:
        fake_fusion = Classifier("fusion", TEXT_DIM, name)
    result = {
        "architecture": cfg.get("architecture") or name.split(".")[0],
        "tag": cfg.get("tag"),
        "has_imagenet_weights": bool(cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")),
        "backbone_params": parameters(backbone),
        "classifier_params": {"fusion": parameters(fusion), "image": parameters(image)},
        "num_features": backbone.num_features,
        "input_size": list(cfg["input_size"]),
        "test_input_size": list(cfg["test_input_size"]) if cfg.get("test_input_size") else None,
        "default_side": default_side,
        "sides": {},
    }
    del fusion, image
    for side in sorted({default_side, *sides}):
        log.info("%s: counting FLOPs at %d px", name, side)
        flops = forward_flops(backbone, side)
        train, stock = train_step_flops(fake, fake_fusion, side)
        cache = STUDY_IMAGES * side * side
        result["sides"][str(side)] = {
            "forward_flops": flops, "forward_gflops": flops / 1e9, "forward_gmacs": flops / 2e9,
            "train_step_flops": train, "train_step_gflops": train / 1e9,
            "train_vs_forward": train / flops,
            "train_step_flops_torch_formula": stock,
            "image_cache_bytes": cache, "image_cache_gb": cache / 1e9}
    if steps:
        log.info("%s: timing %d CPU training steps at batch %d, %d px", name, steps, TRAIN_BATCH,
                 CPU_STEP_SIDE)
        result["cpu_train_step"] = cpu_train_step(name, steps)
    result["measure_s"] = time.perf_counter() - start
    return result


def ratios(models: dict) -> dict:
    """Every model against the first: parameters, FLOPs at each side both count, and each at
    its own default side against the reference at its own (e.g. B7 at 600 px vs B1 at 240 px)."""
    names = list(models)
    ref = models[names[0]]
    out = {}
    for name in names[1:]:
        m = models[name]
        r = {"params": m["backbone_params"] / ref["backbone_params"],
             "fusion_classifier_params": m["classifier_params"]["fusion"]
             / ref["classifier_params"]["fusion"]}
        for side in sorted(set(m["sides"]) & set(ref["sides"]), key=int):
            r[f"forward_flops_at_{side}"] = (m["sides"][side]["forward_flops"]
                                             / ref["sides"][side]["forward_flops"])
        own, ref_own = m["sides"][str(m["default_side"])], ref["sides"][str(ref["default_side"])]
        r["forward_flops_default_vs_default"] = own["forward_flops"] / ref_own["forward_flops"]
        r["image_cache_default_vs_default"] = (own["image_cache_bytes"]
                                               / ref_own["image_cache_bytes"])
        r["sides_default_vs_default"] = f"{m['default_side']} px vs {ref['default_side']} px"
        if "cpu_train_step" in m and "cpu_train_step" in ref:
            r["cpu_train_step"] = (m["cpu_train_step"]["median_s"]
                                   / ref["cpu_train_step"]["median_s"])
        out[f"{name} / {names[0]}"] = r
    return out


def num(x: float) -> str:
    """3 significant digits, without exponents: 0.0462, 1.37, 12.5, 226, 3,829."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{float(f'{x:.3g}'):g}"


def markdown(result: dict) -> str:
    """The models table (one row a model and side), the ratios table and how it was measured;
    the CPU step's columns only when it was timed (--steps)."""
    timed = any("cpu_train_step" in m for m in result["models"].values())

    def size(m):
        test = f" (test {m['test_input_size'][-1]})" if m["test_input_size"] else ""
        return f"{m['input_size'][-1]}{test}"

    head = ["model", "ImageNet weights", "backbone params", "fusion / image classifier params",
            "num_features", "input_size", "side (px)", "forward GFLOPs (GMACs) / image",
            "train-step GFLOPs / image (x forward)", "image cache, 7,466 images"]
    head += ["CPU train step (batch 2, 64 px)"] if timed else []
    lines = [table_row(head), table_row(["---"] * 2 + ["---:"] * (len(head) - 2))]
    for name, m in result["models"].items():
        weights = "yes" if m["has_imagenet_weights"] else "no (untrained)"
        params = m["classifier_params"]
        for side, s in sorted(m["sides"].items(), key=lambda kv: int(kv[0])):
            default = " (default)" if int(side) == m["default_side"] else ""
            cells = [f"`{name}`", weights, f"{m['backbone_params']:,}",
                     f"{params['fusion']:,} / {params['image']:,}", f"{m['num_features']:,}",
                     size(m), f"{side}{default}",
                     f"{num(s['forward_gflops'])} ({num(s['forward_gmacs'])})",
                     f"{num(s['train_step_gflops'])} ({s['train_vs_forward']:.2f} x)",
                     f"{num(s['image_cache_gb'])} GB"]
            if timed:
                cells.append(f"{m['cpu_train_step']['median_s']:.2f} s" if "cpu_train_step" in m
                             else "-")
            lines.append(table_row(cells))
    head = ["ratio", "params", "forward FLOPs at the same side",
            "forward FLOPs, each at its default side", "image cache, each at its default side"]
    head += ["CPU train step"] if timed else []
    lines += ["", table_row(head), table_row(["---"] + ["---:"] * (len(head) - 1))]
    for pair, r in result["ratios"].items():
        same = ", ".join(f"{num(v)} x at {k.rsplit('_', 1)[1]} px" for k, v in r.items()
                         if k.startswith("forward_flops_at_"))
        cells = [f"`{pair}`", f"{num(r['params'])} x", same or "-",
                 f"{num(r['forward_flops_default_vs_default'])} x "
                 f"({r['sides_default_vs_default']})",
                 f"{num(r['image_cache_default_vs_default'])} x"]
        if timed:
            cells.append(f"{num(r['cpu_train_step'])} x" if "cpu_train_step" in r else "-")
        lines.append(table_row(cells))
    v = result["versions"]
    note = (f"Measured {result['date']} with torch {v['torch']} and timm {v['timm']} on "
            f"{result['device']} ({result['cpu_count']} cores, {result['torch_threads']} threads; "
            f"the run took {result['bench_s']:.0f} s), random weights (FLOPs and parameters do "
            f"not depend on them). FLOPs: {FLOPS_NOTE}. Forward: the backbone alone, one image, "
            "torch.no_grad. Train step: forward + backward of the fusion classifier (backbone + "
            "head) through cxrfusion.scoring.forward, batch 2, per image, with the "
            "convolution-backward formula corrected for grouped convolutions (torch's own counts "
            "their weight gradients `groups` times). Image cache: 7,466 x side^2 bytes (uint8 "
            "grayscale), 1 GB = 10^9 bytes.")
    if timed:
        note += (f" CPU train step: forward, backward and Adam on this CPU, median of "
                 f"{_steps(result)} after a warm-up step, 1-minute load average "
                 f"{result['load_average_at_start']:.1f} at the start: tiny, noisy, says nothing "
                 "about a GPU.")
    return "\n".join(lines + ["", note]) + "\n"


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _steps(result: dict) -> str:
    steps = {m["cpu_train_step"]["steps"] for m in result["models"].values()
             if "cpu_train_step" in m}
    return ", ".join(map(str, sorted(steps)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, metavar="NAME",
                        help="timm model names (name or name.tag); the first is the reference "
                             "of the ratios (default: %(default)s)")
    parser.add_argument("--sides", nargs="*", type=int, default=SIDES, metavar="PX",
                        help="image sides counted besides each tag's default (default: 240)")
    parser.add_argument("--steps", type=int, default=0,
                        help="also time N CPU training steps a model (batch 2, 64 px) after one "
                             "warm-up (default 0: none; noisy where other work shares the CPU)")
    parser.add_argument("--markdown", action="store_true", help="a markdown table instead of JSON")
    args = parser.parse_args(argv)
    import timm

    for name in args.models:  # before any measurement: a typo costs nothing
        try:
            timm.models.get_pretrained_cfg(name, allow_unregistered=False)
        except RuntimeError as err:
            base = name.split(".")[0].removeprefix("tf_")
            parser.error(f"{name}: {err} Tags timm knows: "
                         f"{', '.join(timm.list_pretrained(f'*{base}*')) or 'none'}")
    setup_logging()
    started = time.perf_counter()
    result = {"what": "backbone costs, random weights, counted on the CPU",
              "date": date.today().isoformat(), "device": device_name(torch.device("cpu")),
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "load_average_at_start": os.getloadavg()[0],  # other work slows the CPU step
              "versions": versions(), "flops_note": FLOPS_NOTE,
              "study": {"images": STUDY_IMAGES, "text_dim": TEXT_DIM, "cached_side": 240},
              "models": {}}
    for name in args.models:
        log.info("%s", name)
        result["models"][name] = measure_model(name, args.sides, args.steps)
    result["ratios"] = ratios(result["models"])
    result["bench_s"] = time.perf_counter() - started
    log.info("done in %.0f s", result["bench_s"])
    if args.markdown:
        sys.stdout.write(markdown(result))
    else:
        json.dump(rounded(result), sys.stdout, indent=2)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
