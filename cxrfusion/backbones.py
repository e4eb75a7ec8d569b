"""What timm knows of a backbone's weights: its tagged sets and the side they were trained at.

params.py resolves image.size `auto` with `default_input_size`, and model.py names the tags a
misspelt model.backbone could have meant with `weight_tags`: a module of its own, since
params.py may import it (model.py imports params) and every stage depends on what params.py
imports. timm is imported inside each function: every stage reads its parameters, few need
timm.
"""
from __future__ import annotations

from cxrfusion.common import PipelineError


def default_input_size(name: str) -> int:
    """The side of the images timm's weights for `name` (name.tag) were trained at: what
    image.size `auto` caches (e.g. 240 for efficientnet_b1.ra4_e3600_r240_in1k)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise PipelineError(f"model.backbone={name!r} has no timm pretrained config, so "
                            "image.size=auto has no default input to follow: set image.size "
                            f"to a number of px, or name a timm model.tag ({weight_tags(name)}).")
    return int(cfg.input_size[-1])


def weight_tags(name: str) -> str:
    """The name.tag of every set of weights timm knows for `name`'s architecture, and where
    else a family's weights live (EfficientNet-B7's ImageNet weights are TensorFlow ports)."""
    import timm

    arch = name.split(".")[0]
    tags = timm.list_pretrained(arch + ".*") or timm.list_pretrained("tf_" + arch + ".*")
    return ", ".join(tags[:8]) or "none"
