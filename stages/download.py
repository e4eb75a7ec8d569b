"""Stage `download`: the raw dataset under data/raw/ in the Kaggle layout.

    params  data.source (demo | kaggle | openi | local | mimic_cxr), data.local_dir,
            data.openi_url, demo.*
    writes  data/raw/indiana_reports.csv        one row per study (uid, MeSH, ..., impression)
            data/raw/indiana_projections.csv    one row per image (uid, filename, projection)
            data/raw/images/images_normalized/  the images (kaggle, local, mimic_cxr: a link)

Each source is a module of cxrfusion.sources, named in its table `SOURCES`. The real images
(14 GB) are never copied: data/raw/images links to the Kaggle cache or to `data.local_dir`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cxrfusion import params
from cxrfusion.common import atomic_path, main
from cxrfusion.formats import RAW
from cxrfusion.params import Params
from cxrfusion.sources import SOURCES

log = logging.getLogger("download")


def download(p: Params, out: Path = RAW) -> None:
    source = p.data.source
    with atomic_path(out) as tmp:  # a failed download leaves the previous data/raw intact
        SOURCES[source](p, tmp)
    log.info("data/raw ready from source %r", source)


if __name__ == "__main__":
    main(lambda: download(params.load()))
