"""Stage `prepare`: validate and merge the two CSVs, label, join text, split by study.

The split is by study (uid); when the reports CSV has a `patient` column (mimic_cxr) it is by
patient instead (every study of a patient in one split; studies.csv then keeps `patient`), or,
with `split.official`, the dataset's own split (column `official_split`).

Writes the contract every later stage reads (see stages/formats.py):
  data/prepared/studies.csv, data/prepared/images.csv, data/prepared/report.json
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from stages import params
from stages.common import PipelineError, atomic_path, main, write_json
from stages.formats import (DATA_REPORT, IMAGE_COLUMNS, IMAGES, IMAGES_SUBDIR, PREPARED, SPLITS,
                            PROJECTIONS_CSV, RAW, REPORTS_CSV, STUDIES, STUDY_COLUMNS, load_csv)

log = logging.getLogger("prepare")

UNINDEXED = "no indexing"
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


def label_of(mesh: str | float, keep_unindexed: bool) -> float:
    """0 normal, 1 abnormal (the original rule), NaN unlabelled (dropped)."""
    if not isinstance(mesh, str) or not mesh.strip():
        return np.nan
    term = mesh.strip().lower()
    if term == UNINDEXED and not keep_unindexed:
        return np.nan
    return 0.0 if term == "normal" else 1.0


def join_text(row: pd.Series, fields: list[str]) -> str:
    """Join the named report fields with a space; empty or missing fields are left out."""
    parts = [row[f].strip() for f in fields if isinstance(row[f], str) and row[f].strip()]
    return " ".join(parts)


def split_studies(uids: np.ndarray, labels: np.ndarray, test: float, val: float,
                  seed: int) -> np.ndarray:
    """Assign train/val/test per study, stratified by label, reproducible for a seed.

    Within each label: shuffle the (sorted) uids, the first round(n * test) go to test, then
    round(rest * val) of the rest to val. Each uid gets exactly one split.
    """
    rng = np.random.default_rng(seed)
    split = np.empty(len(uids), dtype=object)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort(uids[idx])]
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test))
        n_val = int(round((len(idx) - n_test) * val))
        split[idx[:n_test]] = "test"
        split[idx[n_test:n_test + n_val]] = "val"
        split[idx[n_test + n_val:]] = "train"
    return split


def split_patients(labels: np.ndarray, patients: np.ndarray, test: float, val: float,
                   seed: int) -> np.ndarray:
    """Assign train/val/test per patient: every study of a patient gets the same split.

    Patients are stratified by whether any of their studies is abnormal and split by
    `split_studies` (seeded, independent of row order); each study takes its patient's split.
    """
    any_abnormal = pd.Series(labels).groupby(pd.Series(patients)).max()  # sorted by patient
    ids = any_abnormal.index.to_numpy()
    split_of = dict(zip(ids, split_studies(ids, any_abnormal.to_numpy(), test, val, seed)))
    return np.array([split_of[patient] for patient in patients], dtype=object)


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


def check_split_sizes(studies: pd.DataFrame, s: dict) -> None:
    """Refuse, before any training, a split too small to select a model on or to test it: fewer
    than split.min_studies studies, or fewer than split.min_per_label of either label (AUROC
    needs both; with one class a whole validation run logs nan and the test fails at the end)."""
    for name in ("test", "val", "train"):
        labels = studies.loc[studies["split"] == name, "label"]
        normal, abnormal = int((labels == 0).sum()), int((labels == 1).sum())
        if len(labels) >= s["min_studies"] and min(normal, abnormal) >= s["min_per_label"]:
            continue
        if s.get("official", False):
            change = "use the seeded split (split.official=false) or more data"
        elif name == "train":
            change = (f"lower split.test={s['test']} or split.val={s['val']}, or use more "
                      "studies")
        else:
            key = "split.test" if name == "test" else "split.val"
            change = f"raise {key}={s[name]} or use more studies"
        raise PipelineError(
            f"the {name} split has {len(labels)} studies ({normal} normal, {abnormal} abnormal), "
            f"too few to answer the question: it needs at least split.min_studies="
            f"{s['min_studies']} studies and split.min_per_label={s['min_per_label']} of each "
            f"label. {change[0].upper() + change[1:]} (or lower split.min_studies / "
            "split.min_per_label for a smoke test).")


def prepare(p: dict, raw: Path = RAW, out: Path = PREPARED) -> dict:
    fields = p["text"]["fields"]
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
    reports["text"] = reports.apply(join_text, axis=1, fields=fields)
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
        "studies_with_empty_text": int((studies["text"] == "").sum()),
        "text_fields": fields,
        "by_split": {s: {"studies": int((studies["split"] == s).sum()),
                         "images": int((images["split"] == s).sum()),
                         "abnormal_studies": int(((studies["split"] == s) & (studies["label"] == 1)).sum())}
                     for s in SPLITS},
        "by_view": {v: int(n) for v, n in images["view"].value_counts().sort_index().items()},
    }
    if by_patient:
        report["patients"] = int(studies["patient"].nunique())
    with atomic_path(out) as tmp:
        tmp.mkdir()
        columns = STUDY_COLUMNS + (["patient"] if by_patient else [])
        studies[columns].to_csv(tmp / STUDIES.name, index=False)
        images[IMAGE_COLUMNS].to_csv(tmp / IMAGES.name, index=False)
        write_json(tmp / DATA_REPORT.name, report)
    if report["studies_with_empty_text"]:
        log.warning("%d studies have no text in %s: the encoder sees an empty report for them",
                    report["studies_with_empty_text"], fields)
    log.info("prepared %d studies, %d images; split %s", len(studies), len(images),
             {s: v["studies"] for s, v in report["by_split"].items()})
    return report


if __name__ == "__main__":
    main(lambda: prepare(params.load()))
