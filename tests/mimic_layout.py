"""A miniature MIMIC-CXR-JPG folder (SYNTHETIC: no patient data) in PhysioNet's layout.

    mimic-cxr-2.0.0-{metadata,chexpert,split}.csv.gz   (or plain .csv with gz=False)
    files/p1X/p1XXXXXXX/sYYYYYYYY/<dicom_id>.jpg       48 px grayscale JPGs
    files/p1X/p1XXXXXXX/sYYYYYYYY.txt                  free-text reports with sections

30 patients, about 60 studies, 1 to 3 images each; patients are normal-only, abnormal-only or
mixed, and every official split holds all three kinds (so both labels). Quirks: uncertain
(-1.0) and negative (0.0) CheXpert values, normal studies with Support Devices, one abnormal
study with no positive finding, one study without a CheXpert row, one without a report file,
reports with and without `FINAL REPORT`, FINDINGS or IMPRESSION.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription",
                    "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime",
                    "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                    "PatientOrientationCodeSequence_CodeMeaning"]
LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
          "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
          "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
ABNORMAL = [name for name in LABELS if name not in ("No Finding", "Support Devices")]
PATIENTS = 30
OFFICIAL = ["train"] * 21 + ["validate"] * 3 + ["test"] * 6   # by patient, as MIMIC's
VIEWS = [("PA", "postero-anterior"), ("LATERAL", "lateral"), ("AP", "antero-posterior"),
         ("LL", "left lateral"), ("", ""), ("AP AXIAL", "")]
SIZE = 48


def _report(rng, kind: str, positives: list[str], sections: int) -> tuple[str, dict]:
    """The report's text, and the fields a parser must find in it (written independently)."""
    findings = ("Heart size is normal. Lungs are clear. No pleural effusion or pneumothorax."
                if kind == "normal" else
                " ".join(f"There is evidence of {p.lower()}." for p in positives) or
                "Possible subtle opacity at the left base.")
    impression = ("No acute cardiopulmonary process." if kind == "normal" else
                  f"{', '.join(positives) or 'Indeterminate opacity'}, new since prior.")
    reason = rng.choice(["pneumonia", "effusion"])
    sentences = [f"{s.strip()}." for s in findings.split(".") if s.strip()]
    expected = {"indication": f"___M with cough // eval for {reason}",
                "comparison": "___" if sections != 1 else None,
                "findings": " ".join(sentences) if sections != 2 else None,
                "impression": impression if sections != 3 else None}
    lines = []
    if sections % 2 == 0:
        lines.append("                                 FINAL REPORT")
    lines += [" EXAMINATION:  CHEST (PA AND LAT)", "",
              f" INDICATION:  ___M with cough // eval for {reason}", "",
              " TECHNIQUE:  Chest PA and lateral", ""]
    if sections != 1:
        lines += [" COMPARISON:  ___", ""]
    if sections != 2:  # some reports have no FINDINGS section
        lines += [" FINDINGS: ", ""] + [f" {s}" for s in sentences]
        lines.append("")
    if sections != 3:  # ... or no IMPRESSION
        lines += [" IMPRESSION: ", "", f" {impression}", ""]
    return "\n".join(lines), expected


def _image(rng, abnormal: bool) -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    pixels = 90 + 60 * np.exp(-(((x - 24) / 14) ** 2)) + rng.normal(0, 8, (SIZE, SIZE))
    if abnormal:  # a bright blob in a lung field
        pixels += 70 * np.exp(-(((x - 14) ** 2 + (y - 28) ** 2) / 40))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


def make_mimic(root: Path, seed: int = 0, gz: bool = True) -> dict:
    """Write the folder; returns what is in it: `studies` (one dict per study), `no_chexpert`,
    `no_report` (study ids) and `folder`."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    meta, chexpert, split, studies = [], [], [], []
    study_id = 50000000
    for i in range(PATIENTS):
        subject = str([10, 11, 12, 19][i % 4] * 1_000_000 + 1000 + 37 * i)
        kind = ("normal", "abnormal", "mixed")[i % 3]
        n_studies = int(rng.integers(1, 4))
        if kind == "mixed":
            n_studies = max(n_studies, 2)
        for j in range(n_studies):
            study_id += int(rng.integers(1, 5000))
            abnormal = kind == "abnormal" or (kind == "mixed" and j > 0)
            row = {"subject_id": subject, "study_id": str(study_id)}
            positives = []
            if abnormal:
                positives = sorted(str(p) for p in
                                   rng.choice(ABNORMAL, size=int(rng.integers(1, 3)),
                                              replace=False))
                row.update({p: 1.0 for p in positives})
                row[str(rng.choice([a for a in ABNORMAL if a not in positives]))] = -1.0
                row[str(rng.choice([a for a in ABNORMAL if a not in row]))] = 0.0
            else:
                row["No Finding"] = 1.0
                if rng.random() < 0.3:
                    row["Support Devices"] = 1.0
            chexpert.append(row)
            folder = f"files/p{subject[:2]}/p{subject}/s{study_id}"
            dicoms = []
            for k in range(int(rng.integers(1, 4))):
                dicom = "-".join(f"{int(rng.integers(0, 16 ** 8)):08x}" for _ in range(5))
                # PA or AP first, then LATERAL or LL, then empty or AP AXIAL
                view, meaning = VIEWS[(0, 1, 4)[k] + (2 if k < 2 else 1) * (i % 2)]
                meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": str(study_id),
                             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                             "ViewPosition": view, "Rows": SIZE, "Columns": SIZE,
                             "StudyDate": 21800101 + j, "StudyTime": 120000.0,
                             "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                             "ViewCodeSequence_CodeMeaning": meaning,
                             "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
                split.append({"dicom_id": dicom, "study_id": str(study_id), "subject_id": subject,
                              "split": OFFICIAL[i]})
                (root / folder).mkdir(parents=True, exist_ok=True)
                _image(rng, abnormal).save(root / folder / f"{dicom}.jpg", quality=90)
                dicoms.append({"dicom_id": dicom, "view": view,
                               "filename": f"{folder}/{dicom}.jpg"})
            report, fields = _report(rng, "abnormal" if abnormal else "normal", positives,
                                     len(studies) % 5)
            (root / f"{folder}.txt").write_text(report)
            studies.append({"subject_id": subject, "study_id": str(study_id),
                            "official": OFFICIAL[i], "label": int(abnormal), "images": dicoms,
                            "report": report, "fields": fields,
                            "mesh": ";".join(positives) if abnormal else "normal"})

    # quirks: an abnormal study with only uncertain findings, one without a CheXpert row,
    # one without a report file (all in the training split)
    train = [s for s in studies if s["official"] == "train"]
    uncertain = next(s for s in train if s["label"] == 1)
    no_chexpert, no_report = [s for s in train if s is not uncertain][2:4]
    row = next(r for r in chexpert if r["study_id"] == uncertain["study_id"])
    for name in LABELS:
        if row.get(name) == 1.0:
            row[name] = -1.0
    uncertain["mesh"] = "abnormal"
    chexpert = [r for r in chexpert if r["study_id"] != no_chexpert["study_id"]]
    no_chexpert["label"], no_chexpert["mesh"] = None, ""
    (root / f"files/p{no_report['subject_id'][:2]}/p{no_report['subject_id']}/"
            f"s{no_report['study_id']}.txt").unlink()
    no_report["report"] = None

    suffix = ".csv.gz" if gz else ".csv"
    options = {"index": False}
    if gz:
        options["compression"] = {"method": "gzip", "mtime": 0}  # the same bytes for a seed
    pd.DataFrame(meta, columns=METADATA_COLUMNS).to_csv(
        root / f"mimic-cxr-2.0.0-metadata{suffix}", **options)
    pd.DataFrame(chexpert, columns=["subject_id", "study_id", *LABELS]).to_csv(
        root / f"mimic-cxr-2.0.0-chexpert{suffix}", **options)
    pd.DataFrame(split, columns=["dicom_id", "study_id", "subject_id", "split"]).to_csv(
        root / f"mimic-cxr-2.0.0-split{suffix}", **options)
    return {"folder": root, "studies": studies, "no_chexpert": no_chexpert["study_id"],
            "no_report": no_report["study_id"], "uncertain": uncertain["study_id"]}
