"""The cluster bootstrap: where the split is by patient (mimic_cxr), the intervals resample
patients, each with all of their test studies, not studies one by one."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_layout import make_mimic
from stages import compare as compare_mod
from cxrfusion import figures, params as params_mod
from cxrfusion.common import PipelineError
from stages.download import download
from cxrfusion.formats import STUDIES, STUDY_COLUMNS
from cxrfusion.metrics import bootstrap_interval, paired_bootstrap, resamples
from stages.prepare import prepare


def _patients(n_patients=40, seed=0):
    """Studies of patients with 1 to 4 studies each, patient ids neither sorted nor numbers."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_patients)
    ids = np.array([f"p{i}" for i in rng.permutation(n_patients)])
    groups = np.repeat(ids, sizes)
    order = rng.permutation(len(groups))                  # a patient's studies are not adjacent
    groups = groups[order]
    labels = rng.integers(0, 2, len(groups))
    return labels, groups


def _old_resamples(labels, n, seed):
    """resamples() as it was before groups: the reference for groups=None."""
    rng = np.random.default_rng(seed)
    while n:
        idx = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[idx])) == 2:
            n -= 1
            yield idx


def test_every_resample_holds_all_or_none_of_a_patients_studies():
    labels, groups = _patients()
    ids = np.unique(groups)
    for idx in resamples(labels, 200, seed=3, groups=groups):
        copies = np.bincount(idx, minlength=len(labels))  # how often each study was drawn
        drawn = {}
        for patient in ids:
            of_patient = copies[groups == patient]
            assert (of_patient == of_patient[0]).all(), patient  # all studies, same multiplicity
            drawn[patient] = of_patient[0]
        assert sum(drawn.values()) == len(ids)           # as many draws as there are patients
        assert len(idx) == sum(k * (groups == p).sum() for p, k in drawn.items())
        assert len(np.unique(labels[idx])) == 2


def test_groups_none_gives_the_resamples_of_before():
    for labels in (np.array([0, 1] * 40), np.array([0] * 10 + [1] * 2)):  # the latter redraws
        old = list(_old_resamples(labels, 300, seed=5))
        for new in (list(resamples(labels, 300, seed=5)),
                    # one study per group, ids in study order: the same draws
                    list(resamples(labels, 300, seed=5, groups=np.arange(len(labels))))):
            assert len(new) == len(old)
            assert all(a.dtype == b.dtype and a.tobytes() == b.tobytes()
                       for a, b in zip(old, new))


def test_two_patients_by_hand():
    # patient 7: a normal study (0.5) and an abnormal one (0.4); patient 9: an abnormal (0.9).
    # Resamples: {7, 7}: AUROC 0; {7, 9} or {9, 7}: 0.5; {9, 9} holds label 1 only (redrawn).
    # Studies one by one would also give e.g. normal 0.5 with abnormal 0.9 only: AUROC 1.
    y, p = np.array([0, 1, 1]), np.array([0.5, 0.4, 0.9])
    groups = np.array([7, 7, 9])
    by_patient = [sorted(idx.tolist()) for idx in resamples(y, 300, seed=0, groups=groups)]
    assert {tuple(r) for r in by_patient} == {(0, 0, 1, 1), (0, 1, 2)}
    share = by_patient.count([0, 0, 1, 1]) / len(by_patient)
    assert share == pytest.approx(1 / 3, abs=0.08)      # 1 of the 3 accepted draws
    r = bootstrap_interval(y, p, "auroc", n=300, seed=0, groups=groups)
    assert r["value"] == 0.5 and r["ci95"] == [0.0, 0.5]
    assert bootstrap_interval(y, p, "auroc", n=300, seed=0)["ci95"][1] == 1.0


def test_paired_and_single_intervals_share_the_patient_resamples():
    labels, groups = _patients(seed=1)
    rng = np.random.default_rng(2)
    noisy = np.clip(0.2 * labels + 0.8 * rng.random(len(labels)), 0, 1)
    single = bootstrap_interval(labels, noisy, "auroc", n=100, seed=4, groups=groups)
    paired = paired_bootstrap(labels, noisy, 1 - noisy, "auroc", n=100, seed=4, groups=groups)
    assert paired["ci95"] == pytest.approx([2 * v - 1 for v in single["ci95"]])
    assert single["ci95"] != bootstrap_interval(labels, noisy, "auroc", n=100, seed=4)["ci95"]


def test_one_group_id_per_study():
    with pytest.raises(ValueError, match="one per study"):
        next(resamples(np.array([0, 1, 1]), 1, seed=0, groups=[1, 2]))


# --- compare ----------------------------------------------------------------------------------

@pytest.fixture
def no_figures(monkeypatch):
    """compare without drawing: these tests are about its intervals."""
    for name in ("training_curves", "comparison", "roc", "intervals", "confusion_matrices"):
        monkeypatch.setattr(figures, name, lambda *args: None)


def _scored(uids, labels, seed=0) -> None:
    """predictions.csv, history.json and model.json of the three variants, as evaluate and
    train write them (one image per study)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    row = {k: 0.5 for k in ("loss", "accuracy", "precision", "recall", "f1", "auroc")}
    for variant in ("fusion", "image", "text"):
        Path(f"metrics/{variant}").mkdir(parents=True, exist_ok=True)
        Path(f"models/{variant}").mkdir(parents=True, exist_ok=True)
        probs = np.clip(0.3 * labels + 0.7 * rng.random(len(labels)), 0, 1)
        pd.DataFrame({"uid": uids, "filename": [f"{u}.png" for u in uids], "label": labels,
                      "probability": probs}).to_csv(f"metrics/{variant}/predictions.csv",
                                                    index=False)
        Path(f"models/{variant}/history.json").write_text(
            json.dumps([{"epoch": 1, "train": row, "val": row}]))
        Path(f"models/{variant}/model.json").write_text(json.dumps({"epoch": 1}))


def _prepared_table(uids, labels, patients=None) -> None:
    """data/prepared as prepare writes it (studies.csv rows shuffled: compare aligns by uid)."""
    studies = pd.DataFrame({"uid": uids, "label": labels, "split": "test", "n_images": 1,
                            "views": "Frontal", "mesh": "", "text": "report"})
    if patients is not None:
        studies["patient"] = patients
    studies = studies.sample(frac=1, random_state=0)
    STUDIES.parent.mkdir(parents=True, exist_ok=True)
    studies.to_csv(STUDIES, index=False)
    studies.assign(filename=studies["uid"].astype(str) + ".png", view="Frontal")[
        ["uid", "filename", "view", "label", "split"]].to_csv(STUDIES.parent / "images.csv",
                                                             index=False)


def test_compare_resamples_patients_when_studies_name_them(workdir, params, no_figures, caplog):
    labels, groups = _patients(n_patients=25, seed=6)
    uids = np.arange(100, 100 + len(labels))
    _scored(uids, labels)
    _prepared_table(uids, labels, groups)
    with caplog.at_level(logging.INFO, logger="compare"):
        result = compare_mod.compare(params)
    assert result["resampled"] == "patients" and result["resampled_units"] == 25
    assert "resample the 25 test patients" in caplog.text
    written = json.loads(Path("metrics/comparison.json").read_text())
    assert written["resampled"] == "patients" and written["resampled_units"] == 25

    e = params["evaluate"]
    fusion = pd.read_csv("metrics/fusion/predictions.csv")
    by_patient = bootstrap_interval(labels, fusion["probability"], "auroc", e["bootstrap"],
                                    e["seed"], e["threshold"], groups)
    ci = written["variants"]["fusion"]["ci95"]["auroc"]
    assert [ci["low"], ci["high"]] == by_patient["ci95"]
    by_study = bootstrap_interval(labels, fusion["probability"], "auroc", e["bootstrap"],
                                  e["seed"], e["threshold"])
    assert by_study["ci95"] != by_patient["ci95"]


def test_compare_resamples_studies_without_patients(workdir, params, no_figures):
    labels, _ = _patients(n_patients=25, seed=6)
    uids = np.arange(100, 100 + len(labels))
    _scored(uids, labels)
    _prepared_table(uids, labels)
    result = compare_mod.compare(params)
    assert result["resampled"] == "studies" and result["resampled_units"] == len(uids)
    e = params["evaluate"]
    fusion = pd.read_csv("metrics/fusion/predictions.csv")
    same = bootstrap_interval(labels, fusion["probability"], "f1", e["bootstrap"], e["seed"],
                              e["threshold"])  # the intervals of before: demo numbers stay
    ci = result["variants"]["fusion"]["ci95"]["f1"]
    assert [ci["low"], ci["high"]] == same["ci95"]


def test_compare_refuses_test_studies_missing_from_studies_csv(workdir, params, no_figures):
    labels, groups = _patients(n_patients=10)
    uids = np.arange(len(labels))
    _scored(uids, labels)
    _prepared_table(uids[1:], labels[1:], groups[1:])
    with pytest.raises(PipelineError, match=r"metrics/fusion/predictions.csv.*"
                                            r"data/prepared/studies.csv.*\[0\].*dvc repro"):
        compare_mod.compare(params)
    assert not Path("metrics/comparison.json").exists()


def test_compare_on_a_prepared_mimic_layout(tmp_path, workdir, params, no_figures):
    layout = make_mimic(tmp_path / "mimic-cxr-jpg")
    params["data"].update(source="mimic_cxr", local_dir=str(layout["folder"]))
    download(params_mod.validate(params))
    prepare(params)
    studies = pd.read_csv(STUDIES)
    assert list(studies.columns) == STUDY_COLUMNS + ["patient"]
    test = studies[studies["split"] == "test"].sort_values("uid")
    _scored(test["uid"], test["label"])
    result = compare_mod.compare(params)
    assert result["resampled"] == "patients"
    assert result["resampled_units"] == test["patient"].nunique() < len(test)
