"""MIMIC-CXR-JPG (PhysioNet) -> the project's raw contract: the one home of the MIMIC layout.

The `download` stage calls `convert` for `data.source: mimic_cxr`. MIMIC is never downloaded
here (PhysioNet needs credentialed access): `data.local_dir` is the user's folder, laid out as

    mimic-cxr-2.0.0-metadata.csv.gz   one row per image: dicom_id, subject_id, study_id,
                                      ViewPosition, ...
    mimic-cxr-2.0.0-chexpert.csv.gz   one row per study: subject_id, study_id, 14 CheXpert labels
    mimic-cxr-2.0.0-split.csv.gz      one row per image: dicom_id, study_id, subject_id, split
    files/p10/p10000032/s50414267/<dicom_id>.jpg   the images (MIMIC-CXR-JPG)
    files/p10/p10000032/s50414267.txt              the reports (MIMIC-CXR, mimic-cxr-reports.zip)

(the CSVs gzipped or plain). It writes, under `out`:

    indiana_reports.csv      uid (= study_id), patient (= subject_id), MeSH, indication,
                             comparison, findings, impression, official_split (train|val|test)
    indiana_projections.csv  uid, filename (files/p../p../s../<dicom_id>.jpg), projection
    images/images_normalized -> a symbolic link to local_dir: the images are never copied

Label: a study is normal iff CheXpert's `No Finding` is 1.0. MeSH is `normal`, else the
positive findings joined by `;` (`abnormal` when none is positive); a study without a CheXpert
row gets an empty MeSH, so `prepare` drops it and counts it as unlabelled.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cxrfusion.common import PipelineError
from cxrfusion.formats import IMAGES_SUBDIR, PROJECTIONS_CSV, REPORTS_CSV, load_csv

log = logging.getLogger("mimic")

METADATA = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
NO_FINDING = "No Finding"
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
            "Fracture", "Lung Lesion", "Lung Opacity", "Pleural Effusion", "Pleural Other",
            "Pneumonia", "Pneumothorax", "Support Devices")
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "test": "test"}  # MIMIC -> the project's
REPORT_FIELDS = ("indication", "comparison", "findings", "impression")
SECTION_FIELDS = {  # report heading -> field of indiana_reports.csv (other sections are left out)
    "INDICATION": "indication", "HISTORY": "indication", "CLINICAL HISTORY": "indication",
    "REASON FOR EXAMINATION": "indication", "REASON FOR EXAM": "indication",
    "COMPARISON": "comparison", "COMPARISONS": "comparison",
    "FINDINGS": "findings", "FINDINGS AND IMPRESSION": "findings",
    "FINDINGS/IMPRESSION": "findings",
    "IMPRESSION": "impression", "CONCLUSION": "impression",
}
# upper-case words, also with / ( ) & , - (FINDINGS/IMPRESSION,
# PROVISIONAL FINDINGS IMPRESSION (PFI))
HEADING = re.compile(r"^[ \t]*([A-Z(][A-Z()/&,-]*(?: [A-Z()/&,-]+)*):", re.MULTILINE)
WHITESPACE = re.compile(r"\s+")


# --- paths ------------------------------------------------------------------------------------

def study_dir(subject_id: str, study_id: str) -> str:
    """files/p10/p10000032/s50414267: `p` + the first two digits of subject_id, ..."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


def image_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    return f"{study_dir(subject_id, study_id)}/{dicom_id}.jpg"


def report_path(subject_id: str, study_id: str) -> str:
    return f"{study_dir(subject_id, study_id)}.txt"


# --- labels, views, reports -------------------------------------------------------------------

def _value(v) -> float | None:
    """A CheXpert cell: 1.0, 0.0, -1.0 or None (not mentioned)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    v = str(v).strip()
    return float(v) if v else None


def mesh_of(chexpert_row: dict | None) -> str:
    """`normal` iff No Finding is 1.0; else the positive findings, `;`-joined, or `abnormal`.
    No CheXpert row: '' (unlabelled)."""
    if chexpert_row is None:
        return ""
    if _value(chexpert_row.get(NO_FINDING)) == 1.0:
        return "normal"
    positive = [f for f in FINDINGS if _value(chexpert_row.get(f)) == 1.0]
    return ";".join(positive) or "abnormal"


def view_of(view_position) -> str:
    """PA, AP (also AP AXIAL, PA LLD, ...) -> Frontal; LATERAL, LL -> Lateral; else Unknown."""
    words = str(view_position).upper().split() if isinstance(view_position, str) else []
    if words and words[0] in ("PA", "AP"):
        return "Frontal"
    if words in (["LATERAL"], ["LL"]):
        return "Lateral"
    return "Unknown"


def parse_sections(text: str) -> dict[str, str]:
    """Heading (`WORD( WORD)*:` at the start of a line) -> its text up to the next heading,
    whitespace collapsed. Text before the first heading (e.g. `FINAL REPORT`) is left out; a
    heading that occurs twice gets both texts, joined by a space."""
    sections: dict[str, str] = {}
    matches = list(HEADING.finditer(text))
    for m, nxt in zip(matches, matches[1:] + [None]):
        body = WHITESPACE.sub(" ", text[m.end():nxt.start() if nxt else len(text)]).strip()
        name = m.group(1)
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def report_fields(text: str) -> dict[str, str | None]:
    """indication, comparison, findings, impression of a report (None when absent or empty)."""
    parts: dict[str, list[str]] = {f: [] for f in REPORT_FIELDS}
    for heading, body in parse_sections(text).items():
        if heading in SECTION_FIELDS and body:
            parts[SECTION_FIELDS[heading]].append(body)
    return {f: " ".join(v) or None for f, v in parts.items()}


# --- the CSVs ---------------------------------------------------------------------------------

def find_csv(root: Path, name: str) -> Path:
    for path in (root / f"{name}.gz", root / name):
        if path.is_file():
            return path
    raise PipelineError(f"{root / (name + '.gz')} not found (nor {name}): download it from "
                        "PhysioNet (MIMIC-CXR-JPG 2.x, "
                        "https://physionet.org/content/mimic-cxr-jpg/) "
                        "and put it in data.local_dir, beside files/.")


def read_table(root: Path, name: str, required: list[str]) -> tuple[pd.DataFrame, Path]:
    """The CSV `name` (gzipped or plain) with the `required` columns (only those it reads)."""
    path = find_csv(root, name)
    df = load_csv(path, "download it again from PhysioNet.")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {', '.join(missing)}; the file has "
                            f"{', '.join(df.columns)}. Is it the MIMIC-CXR-JPG 2.x file?")
    for col in ("subject_id", "study_id"):
        if col in required:
            df[col] = df[col].str.strip()
            bad = ~df[col].str.fullmatch(r"\d+")
            if bad.any():
                lines = [str(i + 2) for i in bad.to_numpy().nonzero()[0][:10]]
                example = df.loc[bad, col].iloc[0]
                raise PipelineError(f"{path}: column {col} must hold integers; lines "
                                    f"{', '.join(lines)} do not (e.g. {example!r}).")
    return df, path


def _one_per_study(df: pd.DataFrame, path: Path, column: str) -> pd.Series:
    """study_id -> the one value of `column` (refuses a study with two different values)."""
    values = df.drop_duplicates(["study_id", column])
    dup = values["study_id"].duplicated(keep=False)
    if dup.any():
        raise PipelineError(f"{path}: studies {sorted(set(values.loc[dup, 'study_id']))[:10]} have "
                            f"more than one {column}; each study must have one.")
    return values.set_index("study_id")[column]


# --- the conversion ---------------------------------------------------------------------------

def convert(local_dir: str | Path, out: Path) -> dict:
    """Write the raw contract for the MIMIC-CXR-JPG folder `local_dir` under `out` (new)."""
    local_dir = Path(local_dir).expanduser()
    if not local_dir.is_dir():
        raise PipelineError(f"data.local_dir={str(local_dir)!r} is not a folder: set it to the "
                            f"MIMIC-CXR-JPG folder that holds {METADATA}.gz and files/.")
    root = local_dir.resolve()
    meta, meta_path = read_table(root, METADATA,
                                 ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    labels, chexpert_path = _labels(root)
    official_of = _official_splits(root)
    patient_of = _one_per_study(meta, meta_path, "subject_id")
    meta, absent = _images_on_disk(meta, meta_path, root)
    projections = pd.DataFrame({"uid": meta["study_id"].astype("int64"),
                                "filename": meta["filename"],
                                "projection": meta["ViewPosition"].map(view_of)})
    projections = projections.sort_values(["uid", "filename"])
    reports, no_report, unlabelled = _reports(sorted(set(meta["study_id"]), key=int), root,
                                              patient_of, labels, official_of)
    if unlabelled:
        log.warning("%d studies have no row in %s: left unlabelled (prepare drops them)",
                    unlabelled, chexpert_path.name)

    out.mkdir(parents=True)
    reports.to_csv(out / REPORTS_CSV, index=False)
    projections.to_csv(out / PROJECTIONS_CSV, index=False)
    (out / IMAGES_SUBDIR).parent.mkdir(parents=True)
    os.symlink(root, out / IMAGES_SUBDIR, target_is_directory=True)
    summary = {"studies": len(reports), "images": len(projections), "images_absent": absent,
               "studies_without_report": no_report, "studies_without_chexpert": unlabelled}
    log.info("mimic_cxr: %s", summary)
    return summary


def _official_splits(root: Path) -> dict:
    """study_id -> train | val | test, from the split file."""
    splits, split_path = read_table(root, SPLIT, ["study_id", "split"])
    split = splits["split"].str.strip()
    bad = ~split.isin(OFFICIAL_SPLITS)
    if bad.any():
        raise PipelineError(f"{split_path}: column split must be one of "
                            f"{', '.join(OFFICIAL_SPLITS)}; "
                            f"e.g. {splits.loc[bad, 'split'].iloc[0]!r} is not.")
    splits["split"] = split.map(OFFICIAL_SPLITS)
    return _one_per_study(splits, split_path, "split")


def _labels(root: Path) -> tuple[dict, Path]:
    """study_id -> its CheXpert row, one per study; and the file's path."""
    chexpert, chexpert_path = read_table(root, CHEXPERT, ["study_id", NO_FINDING, *FINDINGS])
    dup = chexpert["study_id"].duplicated(keep=False)
    if dup.any():
        dups = sorted(set(chexpert.loc[dup, "study_id"]))[:10]
        raise PipelineError(f"{chexpert_path}: studies {dups} have more than one row; "
                            "each study must have one.")
    return chexpert.set_index("study_id").to_dict("index"), chexpert_path


def _images_on_disk(meta: pd.DataFrame, meta_path: Path, root: Path) -> tuple[pd.DataFrame, int]:
    """The metadata rows whose JPG is under root/files/ (a partial download of files/ is
    common), one row per image with its `filename`; and how many were absent."""
    meta["dicom_id"] = meta["dicom_id"].str.strip()
    meta = meta.drop_duplicates("dicom_id")
    meta["filename"] = [image_path(s, t, d) for s, t, d in
                        zip(meta["subject_id"], meta["study_id"], meta["dicom_id"])]
    present = [(root / f).is_file() for f in tqdm(meta["filename"], desc="images", unit="img")]
    absent = len(meta) - sum(present)
    if absent == len(meta):
        first = meta["filename"].iloc[0] if len(meta) else "-"
        raise PipelineError(f"none of the {len(meta)} images listed in {meta_path} is under "
                            f"{root}/files/ (first: {first}): "
                            "download the JPGs from PhysioNet into data.local_dir/files/.")
    if absent:
        log.warning("%d of %d images listed in %s are not under %s (first: %s): left out "
                    "(a partial download?)", absent, len(meta), meta_path.name, root,
                    meta.loc[[not p for p in present], "filename"].iloc[0])
    return meta.loc[present], absent


def _reports(study_ids: list, root: Path, patient_of: dict, labels: dict,
             official_of: dict) -> tuple[pd.DataFrame, int, int]:
    """One row per study: its patient, label (as MeSH), report fields and official split;
    with the count of studies without a report file and without a CheXpert row."""
    rows, no_report, unlabelled = [], [], 0
    for study_id in tqdm(study_ids, desc="reports", unit="report"):
        subject_id = patient_of[study_id]
        path = root / report_path(subject_id, study_id)
        if path.is_file():
            fields = report_fields(path.read_text(encoding="utf-8", errors="replace"))
        else:
            no_report.append(path)
            fields = dict.fromkeys(REPORT_FIELDS)
        unlabelled += study_id not in labels
        rows.append({"uid": int(study_id), "patient": int(subject_id),
                     "MeSH": mesh_of(labels.get(study_id)), **fields,
                     "official_split": official_of.get(study_id, "")})
    if no_report:
        log.warning("%d of %d studies have no report file (first: %s): kept with empty text; "
                    "unzip mimic-cxr-reports.zip (MIMIC-CXR) into %s", len(no_report), len(rows),
                    no_report[0], root)
    reports = pd.DataFrame(rows, columns=["uid", "patient", "MeSH", *REPORT_FIELDS,
                                          "official_split"])
    return reports, len(no_report), unlabelled
