"""Stage `prepare`: check the two raw CSVs (cxrfusion/raw_tables.py), label, keep the report
fields, split by study, join the images, summarise.

The split is by study (uid); when the reports CSV has a `patient` column (mimic_cxr) it is by
patient instead (every study of a patient in one split; studies.csv then keeps `patient`), or,
with `split.official`, the dataset's own split (column `official_split`).

Writes the contract every later stage reads (see cxrfusion/formats.py):
  data/prepared/studies.csv, data/prepared/images.csv, data/prepared/counts.json
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxrfusion import params
from cxrfusion.common import PipelineError, atomic_path, main, write_json
from cxrfusion.formats import (
    IMAGE_COLUMNS,
    IMAGES,
    PREPARED,
    PREPARED_COUNTS,
    PROJECTIONS_CSV,
    RAW,
    REPORTS_CSV,
    SPLITS,
    STUDIES,
    STUDY_COLUMNS,
)
from cxrfusion.params import TEXT_FIELDS, Params, fields_of
from cxrfusion.raw_tables import check_tables, official_split, read_csv
from cxrfusion.studies import (
    UNINDEXED,
    check_split_sizes,
    join_text,
    label_of,
    split_patients,
    split_studies,
)

log = logging.getLogger("prepare")


# --- the steps: label, split, join the images, summarise -------------------------------------

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


def label(reports: pd.DataFrame, fields: list[str], keep_unindexed: bool,
          path: Path) -> pd.DataFrame:
    """The labelled studies, each report field as text ("" when the report has none; the
    fields are joined per text input later). `reports` gains `label` (NaN: unlabelled)."""
    reports["label"] = reports["MeSH"].map(lambda m: label_of(m, keep_unindexed))
    for f in fields:
        reports[f] = reports[f].fillna("").astype(str).str.strip()
    studies = reports.loc[reports["label"].notna()].copy()
    if studies.empty:
        raise PipelineError(f"{path}: none of its {len(reports)} studies has a label (MeSH empty"
                            f" or No Indexing on every line); nothing to train on.")
    studies["label"] = studies["label"].astype(int)
    return studies


def assign_split(reports: pd.DataFrame, studies: pd.DataFrame, split: params.Split,
                 path: Path) -> pd.Series:
    """train | val | test per study: the official split, or by patient, or by study."""
    by_patient = "patient" in studies.columns
    if split.official:
        assigned = official_split(reports, reports["label"].notna(), path)
        if by_patient and (mixed := studies.assign(split=assigned).groupby("patient")["split"]
                           .nunique().gt(1).sum()):
            log.warning("the official split puts %d patients in more than one split", mixed)
        return assigned
    if by_patient:
        return split_patients(studies["label"].to_numpy(), studies["patient"].to_numpy(),
                              split.test, split.val, split.seed)
    return split_studies(studies["uid"].to_numpy(), studies["label"].to_numpy(),
                         split.test, split.val, split.seed)


def join_images(studies: pd.DataFrame, projections: pd.DataFrame) -> pd.DataFrame:
    """The kept studies' images with their label and split; `studies` gains n_images, views
    and mesh."""
    images = projections.merge(studies[["uid", "label", "split"]], on="uid", how="inner")
    images = images.rename(columns={"projection": "view"}).sort_values(["uid", "filename"])
    per_study = images.groupby("uid")["view"]
    studies["n_images"] = studies["uid"].map(per_study.size())
    studies["views"] = studies["uid"].map(per_study.agg(lambda v: "+".join(sorted(v))))
    studies["mesh"] = studies["MeSH"].str.strip()
    return images


def summarise(reports: pd.DataFrame, projections: pd.DataFrame, studies: pd.DataFrame,
              images: pd.DataFrame, inputs: list[str]) -> dict:
    """counts.json: what was read, dropped and kept, and what each split holds."""
    unlabelled = reports["label"].isna()
    unindexed = reports["MeSH"].fillna("").str.strip().str.lower() == UNINDEXED
    by_patient = "patient" in studies.columns
    counts = {
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
        counts["patients"] = int(studies["patient"].nunique())
    return counts


def prepare(p: Params, raw: Path = RAW, out: Path = PREPARED) -> dict:
    inputs = p.text.inputs
    fields = [f for f in TEXT_FIELDS if any(f in fields_of(i) for i in inputs)]  # all inputs'
    reports = read_csv(raw / REPORTS_CSV, ["uid", "MeSH", *fields])
    projections = read_csv(raw / PROJECTIONS_CSV, ["uid", "filename", "projection"])
    check_tables(reports, projections, raw)
    studies = label(reports, fields, p.data.keep_unindexed, raw / REPORTS_CSV)
    studies["split"] = assign_split(reports, studies, p.split, raw / REPORTS_CSV)
    check_split_sizes(studies, p.split)
    studies = studies.sort_values("uid")
    images = join_images(studies, projections)
    counts = summarise(reports, projections, studies, images, inputs)

    with atomic_path(out) as tmp:
        tmp.mkdir()
        columns = STUDY_COLUMNS + fields + (["patient"] if "patient" in studies.columns else [])
        studies[columns].to_csv(tmp / STUDIES.name, index=False)
        images[IMAGE_COLUMNS].to_csv(tmp / IMAGES.name, index=False)
        write_json(tmp / PREPARED_COUNTS.name, counts)
    for text_input, empty in counts["studies_with_empty_text"].items():
        if empty:
            log.warning("%d studies have no %s: the encoder sees an empty report for them",
                        empty, text_input)
    log.info("prepared %d studies, %d images; split %s", len(studies), len(images),
             {s: v["studies"] for s, v in counts["by_split"].items()})
    return counts


if __name__ == "__main__":
    main(lambda: prepare(params.load()))
