"""The placebo's reports (stage `shuffle_reports`): each study is given another study's report
vector, so that a model fed them has fusion's inputs and capacity but none of the report's
content about that study.

The permutation never reads a label and stays inside each split (a test study is given a
test study's report: no vector crosses from training to test). Where the data names patients
(MIMIC-CXR), a study is never given its own patient's report, which would still describe that
patient's chest.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrfusion.common import PipelineError
from cxrfusion.formats import SPLITS, STUDIES


def donors(studies: pd.DataFrame, seed: int) -> np.ndarray:
    """For each row of `studies` (uid, split, and patient where the data names patients), the
    row whose report vector it is given: a row of the same split, never itself, never one of
    its patient's.

    Within a split the studies are put in a seeded random order that keeps each patient's
    studies together (patients in random order), and each study is given the vector of the
    study m places on, cyclically, m the most studies one patient has (1 without patients): a
    patient's studies are consecutive, so m places on is always another patient's, as long
    as no patient has more than half the split's studies.
    """
    rng = np.random.default_rng(seed)
    given = np.full(len(studies), -1, dtype=np.int64)
    split = studies["split"].to_numpy()
    has_patients = "patient" in studies.columns
    for name in [s for s in SPLITS if s in set(split)] + sorted(set(split) - set(SPLITS)):
        rows = np.flatnonzero(split == name)
        patient = (studies["patient"].to_numpy()[rows] if has_patients
                   else np.arange(len(rows)))
        order = rng.permutation(len(rows))
        first_seen = pd.Series(patient[order]).factorize()[0]  # patients in the random order
        grouped = order[np.argsort(first_seen, kind="stable")]
        most = int(pd.Series(patient).value_counts().max())
        if len(rows) < 2 * most:
            whose = (f"one patient has {most} of its {len(rows)} studies" if has_patients
                     else f"it has {len(rows)} study")
            raise PipelineError(f"{STUDIES}: split {name!r} cannot give each study another "
                                f"{'patient' if has_patients else 'study'}'s report: {whose}. "
                                "Use a larger dataset or split (split.test, split.val).")
        given[rows[grouped]] = rows[np.roll(grouped, -most)]
    return given
