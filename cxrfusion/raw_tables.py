"""The raw tables every source writes (cxrfusion/formats.py: REPORTS_CSV, PROJECTIONS_CSV),
read and checked before anything is computed from them: each bad row is named by its CSV line
(the header is line 1) with what to do about it. Stage `prepare` reads through here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrfusion.common import PipelineError
from cxrfusion.formats import IMAGES_SUBDIR, PROJECTIONS_CSV, REPORTS_CSV, SPLITS, load_csv

VIEWS = ("Frontal", "Lateral", "Unknown")
MAX_LISTED = 10


def _rows(mask: pd.Series) -> str:
    """CSV line numbers (header is line 1) of the rows where mask holds, shortened."""
    lines = [str(i + 2) for i in np.flatnonzero(mask.to_numpy())]
    more = f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return ", ".join(lines[:MAX_LISTED]) + more


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro download` first.")
    df = load_csv(path, "it must be comma-separated UTF-8 text with a header line, as in the "
                  "Kaggle download (`dvc repro -f download` fetches it again).", na_values=[""])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {', '.join(missing)}; "
                            f"the file has {', '.join(df.columns)}.")
    uid = pd.to_numeric(df["uid"].str.strip(), errors="coerce")
    bad = uid.isna() | ~np.isfinite(uid) | (uid != uid.round()) | (uid.abs() >= 2**62)
    if bad.any():
        raise PipelineError(f"{path}: column uid must hold integers; lines {_rows(bad)} do not "
                            f"(e.g. {df.loc[bad, 'uid'].iloc[0]!r}).")
    df["uid"] = uid.astype(np.int64)
    return df


def official_split(reports: pd.DataFrame, keep: pd.Series, path: Path) -> pd.Series:
    """The `official_split` column (train, val or test) of the kept studies."""
    if "official_split" not in reports.columns:
        raise PipelineError(f"{path}: split.official=true needs an official_split column, which "
                            "only data.source=mimic_cxr writes; set split.official=false.")
    values = reports["official_split"].fillna("").str.strip()
    bad = keep & ~values.isin(SPLITS)
    if bad.any():
        raise PipelineError(f"{path}: with split.official=true every study needs "
                            f"official_split {', '.join(SPLITS)}; lines {_rows(bad)} have "
                            f"{values[bad].iloc[0]!r}. Fix the split file or set "
                            "split.official=false.")
    return values[keep]


def check_tables(reports: pd.DataFrame, projections: pd.DataFrame, raw: Path) -> None:
    """Each study once, each image once with a known view, a report and a file on disk; each
    study with an image; and with a patient column, a patient for every study."""
    rpath, ppath = raw / REPORTS_CSV, raw / PROJECTIONS_CSV
    dup = reports["uid"].duplicated(keep=False)
    if dup.any():
        raise PipelineError(f"{rpath}: duplicate uids "
                            f"{sorted(set(reports.loc[dup, 'uid']))[:MAX_LISTED]} "
                            f"on lines {_rows(dup)}; each study must appear once.")
    nameless = projections["filename"].isna()
    if nameless.any():
        raise PipelineError(f"{ppath}: column filename is empty on lines {_rows(nameless)}; "
                            "every image row needs its file name.")
    dup = projections["filename"].duplicated(keep=False)
    if dup.any():
        raise PipelineError(f"{ppath}: the same filename on lines {_rows(dup)}; "
                            "each image must appear once.")
    bad = ~projections["projection"].isin(VIEWS)
    if bad.any():
        raise PipelineError(f"{ppath}: projection must be one of {', '.join(VIEWS)}; "
                            f"lines {_rows(bad)} are not.")
    orphan = ~projections["uid"].isin(reports["uid"])
    if orphan.any():
        raise PipelineError(f"{ppath}: lines {_rows(orphan)} name uids with no report in {rpath}.")
    image_dir = raw / IMAGES_SUBDIR
    absent = ~projections["filename"].map(lambda f: (image_dir / f).is_file())
    if absent.any():
        raise PipelineError(f"{ppath}: the images of lines {_rows(absent)} are missing from "
                            f"{image_dir}/ (first: {projections.loc[absent, 'filename'].iloc[0]}); "
                            "the download is incomplete: run `dvc repro -f download`.")
    imageless = ~reports["uid"].isin(projections["uid"])
    if imageless.any():
        raise PipelineError(f"{rpath}: the studies on lines {_rows(imageless)} have no image in "
                            f"{ppath}; fix the download or remove those rows.")
    if "patient" in reports.columns:
        reports["patient"] = reports["patient"].fillna("").str.strip()
        nameless = reports["patient"] == ""
        if nameless.any():
            raise PipelineError(f"{rpath}: column patient is empty on lines {_rows(nameless)}; "
                                "every study needs its patient for the split by patient.")
