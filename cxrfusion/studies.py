"""The study table's rules: the label from MeSH, the report text, the split by study or patient.

`prepare` applies them to the raw CSVs; `cxrfusion.predict` joins a new report's fields as
`prepare` joined the training reports'.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrfusion import params
from cxrfusion.common import PipelineError

UNINDEXED = "no indexing"


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


def report_words(studies: pd.DataFrame, fields: list[str]) -> pd.Series:
    """How many words each study's report holds in the named fields (0 when they are empty)."""
    texts = pd.Series([join_text(row, fields) for _, row in studies.iterrows()],
                      index=studies.index, dtype=object)
    return texts.str.split().str.len().astype(int)


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


def check_split_sizes(studies: pd.DataFrame, s: params.Split) -> None:
    """Refuse, before any training, a split too small to select a model on or to test it: fewer
    than split.min_studies studies, or fewer than split.min_per_label of either label (AUROC
    needs both; with one class a whole validation run logs nan and the test fails at the end)."""
    for name in ("test", "val", "train"):
        labels = studies.loc[studies["split"] == name, "label"]
        normal, abnormal = int((labels == 0).sum()), int((labels == 1).sum())
        if len(labels) >= s.min_studies and min(normal, abnormal) >= s.min_per_label:
            continue
        if s.official:
            change = "use the seeded split (split.official=false) or more data"
        elif name == "train":
            change = (f"lower split.test={s.test} or split.val={s.val}, or use more "
                      "studies")
        else:
            key = "split.test" if name == "test" else "split.val"
            change = f"raise {key}={getattr(s, name)} or use more studies"
        raise PipelineError(
            f"the {name} split has {len(labels)} studies ({normal} normal, {abnormal} abnormal), "
            f"too few to answer the question: it needs at least split.min_studies="
            f"{s.min_studies} studies and split.min_per_label={s.min_per_label} of each "
            f"label. {change[0].upper() + change[1:]} (or lower split.min_studies / "
            "split.min_per_label for a smoke test).")
