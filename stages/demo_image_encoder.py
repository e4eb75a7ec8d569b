"""Stage `demo_image_encoder`: a tiny DINOv2 ViT built offline, so the demo's frozen image arms
run with no model hub.

    params  demo_image_encoder.{image_size, patch_size, hidden_size, layers, heads, seed}
    writes  models/demo_image_encoder/ (save_pretrained: embed_images loads it as it loads
            RAD-DINO)
"""
from __future__ import annotations

from cxrfusion import params
from cxrfusion.common import main
from cxrfusion.demo_encoder import build_image
from cxrfusion.formats import DEMO_IMAGE_ENCODER
from cxrfusion.params import Params


def demo_image_encoder(p: Params) -> None:
    e = p.demo_image_encoder
    build_image(DEMO_IMAGE_ENCODER, e.image_size, e.patch_size, e.hidden_size, e.layers, e.heads,
                e.seed)


if __name__ == "__main__":
    main(lambda: demo_image_encoder(params.load()))
