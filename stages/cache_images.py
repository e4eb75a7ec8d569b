"""Stage `cache_images`: decode every X-ray once into features/images.h5.

    params  image.size, image.fit (pad | crop | stretch), image.skip_bad
    reads   data/prepared/images.csv, data/raw/images/images_normalized/
    writes  features/images.h5 (uint8, N x S x S), features/images_counts.json

Decoding a 2,000 px PNG costs ~50-85 ms; doing it once here instead of in every epoch is what
lets training read only small arrays. All CPU cores decode in parallel
(`cxrfusion.imaging.cache_images`).
"""
from __future__ import annotations

from cxrfusion import imaging, params
from cxrfusion.common import main, write_json
from cxrfusion.formats import IMAGES_COUNTS, IMAGES_H5, IMAGES_SUBDIR, RAW, read_prepared
from cxrfusion.params import Params


def cache_images(p: Params) -> None:
    i = p.image
    _, images = read_prepared()
    counts = imaging.cache_images(images["filename"].tolist(), RAW / IMAGES_SUBDIR, IMAGES_H5,
                                  i.size, i.fit, i.skip_bad)
    write_json(IMAGES_COUNTS, counts)


if __name__ == "__main__":
    main(lambda: cache_images(params.load()))
