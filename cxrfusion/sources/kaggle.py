"""Kaggle's `raddar/chest-xrays-indiana-university` (and a local folder in the same layout):
the two CSVs copied, the images linked where they already are (no 14 GB copy)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from cxrfusion.common import PipelineError
from cxrfusion.formats import IMAGES_SUBDIR, PROJECTIONS_CSV, REPORTS_CSV

KAGGLE_DATASET = "raddar/chest-xrays-indiana-university"


def link_kaggle_layout(src: Path, out: Path) -> None:
    """Copy the two CSVs from a Kaggle-layout folder and link (not copy) its images."""
    missing = [str(p) for p in (REPORTS_CSV, PROJECTIONS_CSV, IMAGES_SUBDIR)
               if not (src / p).exists()]
    if missing:
        raise PipelineError(f"{src} does not hold the Kaggle layout: missing {', '.join(missing)}. "
                            f"Expected {REPORTS_CSV}, {PROJECTIONS_CSV} and {IMAGES_SUBDIR}/*.png.")
    out.mkdir(parents=True)
    for name in (REPORTS_CSV, PROJECTIONS_CSV):
        shutil.copyfile(src / name, out / name)
    os.symlink((src / "images").resolve(), out / "images", target_is_directory=True)


def from_kaggle(out: Path) -> None:
    try:
        import kagglehub

        src = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as err:  # kagglehub raises many types: network, auth, HTTP
        # name the error type only: its text may echo request details
        raise PipelineError(
            f"could not download Kaggle dataset {KAGGLE_DATASET} ({type(err).__name__}). "
            "Check the network, then give Kaggle credentials: create an API token on "
            "kaggle.com (Settings > API) and save it as ~/.kaggle/kaggle.json, or export "
            "KAGGLE_USERNAME and KAGGLE_KEY. Or download the dataset by hand and set "
            "data.source=local and data.local_dir=<folder>.") from None
    link_kaggle_layout(src, out)
