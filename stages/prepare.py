"""Stage `prepare`: validate and merge the two CSVs, label, keep the report fields, split by study.

The split is by study (uid); when the reports CSV has a `patient` column (mimic_cxr) it is by
patient instead (every study of a patient in one split; studies.csv then keeps `patient`), or,
with `split.official`, the dataset's own split (column `official_split`).

Writes the contract every later stage reads (see cxrfusion/formats.py):
  data/prepared/studies.csv, data/prepared/images.csv, data/prepared/report.json
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfusion import params
from cxrfusion.params import TEXT_FIELDS, fields_of
from cxrfusion.common import PipelineError, atomic_path, main, write_json
from cxrfusion.formats import (DATA_REPORT, IMAGE_COLUMNS, IMAGES, IMAGES_SUBDIR, PREPARED,
                               PROJECTIONS_CSV, RAW, REPORTS_CSV, SPLITS, STUDIES, STUDY_COLUMNS,
                               load_csv)
from cxrfusion.studies import (UNINDEXED, check_split_sizes, join_text, label_of, split_patients,
                               split_studies)

log = logging.getLogger("prepare")

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
        raise PipelineError(f"{path}: with split.official=true every study needs official_split "
                            f"{', '.join(SPLITS)}; lines {_rows(bad)} have {values[bad].iloc[0]!r}. "
                            "Fix the split file or set split.official=false.")
    return values[keep]


def split_counts(studies: pd.DataFrame, images: pd.DataFrame, split: str,
                 by_patient: bool) -> dict:
    """What one split holds: studies, abnormal studies, images and, when the data name them,
    patients (the participant flow of the study report reads these)."""
    mine = studies["split"] == split
    counts = {"studies": int(mine.sum()), "images": int((images["split"] == split).sum()),
              "abnormal_studies": int((mine & (studies["label"] == 1)).sum())}
    if by_patient:
        counts["patients"] = int(studies.loc[mine, "patient"].nunique())
    return counts


def prepare(p: dict, raw: Path = RAW, out: Path = PREPARED) -> dict:
    inputs = p["text"]["inputs"]
    fields = [f for f in TEXT_FIELDS if any(f in fields_of(i) for i in inputs)]  # all inputs'
    reports = read_csv(raw / REPORTS_CSV, ["uid", "MeSH", *fields])
    projections = read_csv(raw / PROJECTIONS_CSV, ["uid", "filename", "projection"])
    rpath, ppath = raw / REPORTS_CSV, raw / PROJECTIONS_CSV

    dup = reports["uid"].duplicated(keep=False)
    if dup.any():
        raise PipelineError(f"{rpath}: duplicate uids {sorted(set(reports.loc[dup, 'uid']))[:MAX_LISTED]} "
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

    by_patient = "patient" in reports.columns
    if by_patient:
        reports["patient"] = reports["patient"].fillna("").str.strip()
        nameless = reports["patient"] == ""
        if nameless.any():
            raise PipelineError(f"{rpath}: column patient is empty on lines {_rows(nameless)}; "
                                "every study needs its patient for the split by patient.")

    reports["label"] = reports["MeSH"].map(lambda m: label_of(m, p["data"]["keep_unindexed"]))
    unlabelled = reports["label"].isna()
    unindexed = reports["MeSH"].fillna("").str.strip().str.lower() == UNINDEXED
    for f in fields:  # each field as text, "" when the report has none; joined per text input
        reports[f] = reports[f].fillna("").astype(str).str.strip()
    studies = reports.loc[~unlabelled].copy()
    if studies.empty:
        raise PipelineError(f"{rpath}: none of its {len(reports)} studies has a label (MeSH empty"
                            f" or No Indexing on every line); nothing to train on.")
    studies["label"] = studies["label"].astype(int)
    if p["split"].get("official", False):
        studies["split"] = official_split(reports, ~unlabelled, rpath)
        if by_patient and (mixed := studies.groupby("patient")["split"].nunique().gt(1).sum()):
            log.warning("the official split puts %d patients in more than one split", mixed)
    elif by_patient:
        studies["split"] = split_patients(studies["label"].to_numpy(),
                                          studies["patient"].to_numpy(), p["split"]["test"],
                                          p["split"]["val"], p["split"]["seed"])
    else:
        studies["split"] = split_studies(studies["uid"].to_numpy(), studies["label"].to_numpy(),
                                         p["split"]["test"], p["split"]["val"], p["split"]["seed"])
    check_split_sizes(studies, p["split"])
    studies = studies.sort_values("uid")

    images = projections.merge(studies[["uid", "label", "split"]], on="uid", how="inner")
    images = images.rename(columns={"projection": "view"}).sort_values(["uid", "filename"])
    per_study = images.groupby("uid")["view"]
    studies["n_images"] = studies["uid"].map(per_study.size())
    studies["views"] = studies["uid"].map(per_study.agg(lambda v: "+".join(sorted(v))))
    studies["mesh"] = studies["MeSH"].str.strip()

    report = {
        "studies": len(studies), "images": len(images),
        "abnormal_fraction": round(float(studies["label"].mean()), 4),
        "dropped": {
            "studies_unindexed": int((unlabelled & unindexed).sum()),
            "studies_without_mesh": int((unlabelled & ~unindexed).sum()),
            "images_of_dropped_studies": int(len(projections) - len(images)),
        },
        "studies_with_empty_text": {i: int((studies.apply(join_text, axis=1, fields=fields_of(i))
                                            == "").sum()) for i in inputs},
        "by_split": {s: split_counts(studies, images, s, by_patient) for s in SPLITS},
        "by_view": {v: int(n) for v, n in images["view"].value_counts().sort_index().items()},
    }
    if by_patient:
        report["patients"] = int(studies["patient"].nunique())
    with atomic_path(out) as tmp:
        tmp.mkdir()
        columns = STUDY_COLUMNS + fields + (["patient"] if by_patient else [])
        studies[columns].to_csv(tmp / STUDIES.name, index=False)
        images[IMAGE_COLUMNS].to_csv(tmp / IMAGES.name, index=False)
        write_json(tmp / DATA_REPORT.name, report)
    for text_input, empty in report["studies_with_empty_text"].items():
        if empty:
            log.warning("%d studies have no %s: the encoder sees an empty report for them",
                        empty, text_input)
    log.info("prepared %d studies, %d images; split %s", len(studies), len(images),
             {s: v["studies"] for s, v in report["by_split"].items()})
    return report


if __name__ == "__main__":
    main(lambda: prepare(params.load()))
