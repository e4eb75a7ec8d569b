"""The cluster bootstrap: where the split is by patient (mimic_cxr), the intervals resample
patients, each with all of their test studies, not studies one by one."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bootstrap_reference import bootstrap_interval, paired_bootstrap
from mimic_layout import make_mimic

from cxrfusion import figures, formats
from cxrfusion import params as params_mod
from cxrfusion.common import PipelineError
from cxrfusion.formats import STUDIES, STUDY_COLUMNS
from cxrfusion.statistics import resamples
from stages import compare as compare_mod
from stages.download import download
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
# compare reads, for every run of formats.runs (the image model per seed; fusion and text per text
# input and seed), metrics/<run>/predictions.csv and test.json (evaluate) and models/<run>/
# history.json and model.json (train). write_runs writes them, synthetic and seeded;
# prepared_table writes data/prepared as prepare does. tests/test_compare.py uses both.

import zlib  # noqa: E402

from cxrfusion.formats import IMAGES, Run  # noqa: E402
from cxrfusion.metrics import choose_threshold, study_predictions  # noqa: E402
from cxrfusion.statistics import SEED_METRICS, over_seeds, seed_mean_difference  # noqa: E402
from cxrfusion.verdicts import t_test  # noqa: E402

FIGURE_FUNCTIONS = ("forest", "roc_by_input", "reliability", "training_curves")
VAL_OFFSET = 10**6  # validation uids: a test study's uid + VAL_OFFSET (its label, another draw)
STRENGTH = {"fusion": 1.6, "text": 1.1, "image": 0.8}  # how well each variant separates labels


@pytest.fixture
def no_figures(monkeypatch):
    """compare without drawing (seconds saved): these tests are about its numbers. raising:
    a figure function renamed in compare's module fails here, not silently."""
    for name in FIGURE_FUNCTIONS:
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: None)


def run_rng(run: Run, seed: int = 0) -> np.random.Generator:
    """One generator per run, from its path: adding a seed or an input leaves the others'
    numbers as they were."""
    return np.random.default_rng([seed, zlib.crc32(run.path.encode())])


def write_run(run: Run, uids, labels, images_per_study=1, seed: int = 0,
              val=None) -> pd.DataFrame:
    """What evaluate and train write for one run: its test and validation predictions (one row
    per image, rows shuffled; the validation studies are the test studies' uids +
    VAL_OFFSET, with their labels; `val`: (uids, labels) of other ones, an image each), its
    test.json (the youden threshold of those validation
    predictions, study brier and ece), models/<run>/history.json and model.json. Returns the
    test predictions as written."""
    rng = run_rng(run, seed)
    uids, labels = np.asarray(uids), np.asarray(labels).astype(int)
    counts = np.broadcast_to(np.asarray(images_per_study), uids.shape)
    # the indication says little: text-only on it falls clearly below the image model
    strength = (STRENGTH.get(run.variant, 1.0)  # an arm added later: between text and fusion
                * (0.3 if run.text_input == "indication" else 1.0))

    def scored(uids, labels=labels, counts=counts) -> pd.DataFrame:
        study_logit = strength * (2 * labels - 1) + rng.normal(0, 1.0, len(uids))
        logit = np.repeat(study_logit, counts) + rng.normal(0, 0.8, int(counts.sum()))
        images = pd.DataFrame({
            "uid": np.repeat(uids, counts),
            "filename": [f"{u}_{k}.png" for u, c in zip(uids, counts) for k in range(c)],
            "label": np.repeat(labels, counts), "probability": 1 / (1 + np.exp(-logit))})
        return images.iloc[rng.permutation(len(images))].reset_index(drop=True)

    images = scored(uids)
    val_images = (scored(uids + VAL_OFFSET) if val is None else
                  scored(np.asarray(val[0]), np.asarray(val[1]).astype(int),
                         np.ones(len(val[0]), int)))
    for path in (run.predictions, run.validation, run.test_metrics):
        path.parent.mkdir(parents=True, exist_ok=True)
    images.to_csv(run.predictions, index=False)
    val_images.to_csv(run.validation, index=False)
    val = study_predictions(val_images)
    both = val["label"].nunique() == 2  # one label only (a refusal's test): a fixed threshold
    run.test_metrics.write_text(json.dumps({
        "run": {"variant": run.variant, "seed": run.seed, "text_input": run.text_input},
        "threshold": choose_threshold(val["label"], val["probability"], "youden") if both
        else 0.5, "threshold_rule": "youden" if both else "fixed",
        "study": {"brier": float(0.1 + 0.15 * rng.random()),
                  "ece": float(0.02 + 0.1 * rng.random())}}))
    run.models.mkdir(parents=True, exist_ok=True)
    history = [{"epoch": e, "train": {"loss": float(1 / e + 0.1 * rng.random())},
                "val": {"loss": float(1 / e + 0.2 * rng.random()),
                        "auroc": float(0.5 + 0.4 * rng.random())}} for e in (1, 2, 3)]
    (run.models / "history.json").write_text(json.dumps(history))
    (run.models / "model.json").write_text(json.dumps({"epoch": int(rng.integers(1, 4))}))
    return images


def write_runs(p: params_mod.Params, uids, labels, images_per_study=1, seed: int = 0,
               skip=(), val=None) -> dict:
    """write_run for every run of formats.runs(p) but those in `skip`: {run: predictions}."""
    return {run: write_run(run, uids, labels, images_per_study, seed, val)
            for run in formats.runs(p) if run not in skip}


def prepared_table(uids, labels, patients=None, images: pd.DataFrame | None = None) -> None:
    """data/prepared as prepare writes it: studies.csv (STUDY_COLUMNS, one column per report
    field, then patient where the data names patients; rows shuffled: compare aligns by uid)
    and images.csv (`images`: uid and filename per image; default one image a study). The test
    studies `uids` and, as write_run scores them, their validation twins (uid + VAL_OFFSET,
    patient + "v")."""
    uids, labels = np.asarray(uids), np.asarray(labels)
    if images is None:
        images = pd.DataFrame({"uid": uids, "filename": [f"{u}_0.png" for u in uids]})
    n_images = images.groupby("uid").size().reindex(uids, fill_value=0).to_numpy()
    studies = pd.DataFrame({"uid": np.r_[uids, uids + VAL_OFFSET], "label": np.r_[labels, labels],
                            "split": ["test"] * len(uids) + ["val"] * len(uids),
                            "n_images": np.r_[n_images, n_images],
                            "views": "Frontal", "mesh": "",
                            "indication": "cough", "findings": "Lungs are clear.",
                            "impression": "No acute process."})
    if patients is not None:
        studies["patient"] = np.r_[np.asarray(patients, dtype=object),
                                   [f"{g}v" for g in patients]]
    studies = studies.sample(frac=1, random_state=0)
    STUDIES.parent.mkdir(parents=True, exist_ok=True)
    studies.to_csv(STUDIES, index=False)
    label = dict(zip(uids, labels))
    (images[["uid", "filename"]].assign(view="Frontal", label=images["uid"].map(label),
                                        split="test").to_csv(IMAGES, index=False))


def scored_models(p: params_mod.Params, text_input: str) -> tuple[np.ndarray, dict, np.ndarray]:
    """over_seeds' inputs for one text input, from the files (as compare should read them):
    the test labels, {variant: probs (seeds x studies), val_probs, thresholds, rule} and the
    validation labels."""
    models, labels, val_labels = {}, None, None
    for variant in params_mod.arms(p):  # every arm: compare draws for each
        rows = []
        for run in formats.runs_of(variant, text_input, p.train.seeds):  # TF-IDF: one run
            studies = study_predictions(pd.read_csv(run.predictions))
            val = study_predictions(pd.read_csv(run.validation))
            labels, val_labels = studies["label"].to_numpy(), val["label"].to_numpy()
            rows.append((studies["probability"].to_numpy(), val["probability"].to_numpy(),
                         json.loads((run.test_metrics).read_text())))
        models[variant] = {"probs": np.stack([r[0] for r in rows]),
                           "val_probs": np.stack([r[1] for r in rows]),
                           "thresholds": np.array([t["threshold"] for _, _, t in rows]),
                           "rule": "youden"}
    return labels, models, val_labels


def bootstrap_of(p: params_mod.Params, y, models, val_labels, groups=None, val_groups=None) -> dict:
    """over_seeds as compare calls it with `p`'s compare section."""
    c = p.compare
    return over_seeds(y, models, params_mod.pairs(p),
                      c.bootstrap, c.seed, groups, specificity=p.evaluate.specificity,
                      validation={"labels": val_labels, "groups": val_groups},
                      level=1 - c.alpha)


def intervals(stats: dict) -> dict:
    """(low, high) of every model's and pair's metric in an over_seeds result (the descriptive
    ones: a pair's AUROC difference is tested, `t_intervals`)."""
    out = {}
    for kind in ("models", "pairs"):
        for name, metrics in stats[kind].items():
            for metric, s in metrics.items():
                if (kind, metric) != ("pairs", "auroc"):
                    out[kind, name, metric] = (s["low"], s["high"])
    return out


def t_intervals(p, y, models: dict, groups=None) -> dict:
    """(low, high) of each pair's AUROC difference, as compare tests it."""
    out = {}
    for a, b in params_mod.pairs(p):
        row = seed_mean_difference(y, models[a]["probs"], models[b]["probs"], groups)
        t = t_test(row, p.compare.alpha, p.compare.margin, None)
        out[f"{a} - {b}"] = (t["low"], t["high"])
    return out


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, err_msg=str(key))


def written_intervals(result: dict, text_input: str, tested: bool = False) -> dict:
    """The same keys as intervals() (tested: as t_intervals()), read from
    comparison.json's layout."""
    differences = result["differences"][text_input]
    if tested:
        return {name.replace("_minus_", " - "): (m["auroc"]["low"], m["auroc"]["high"])
                for name, m in differences.items()}
    out = {}
    for name, metrics in result["models"][text_input].items():
        for metric in SEED_METRICS:
            out["models", name, metric] = (metrics[metric]["low"], metrics[metric]["high"])
    for name, metrics in differences.items():
        for metric in SEED_METRICS:
            if metric != "auroc":
                out["pairs", name.replace("_minus_", " - "), metric] = (metrics[metric]["low"],
                                                                        metrics[metric]["high"])
    return out


def test_compare_resamples_patients_when_studies_name_them(workdir, params, no_figures):
    labels, groups = _patients(n_patients=25, seed=6)
    uids = np.arange(100, 100 + len(labels))
    write_runs(params, uids, labels)
    prepared_table(uids, labels, groups)
    result = compare_mod.compare(params)
    assert result["resampled"] == "patients" and result["resampled_units"] == 25
    written = json.loads(Path("metrics/comparison.json").read_text())
    assert written["resampled"] == "patients" and written["resampled_units"] == 25
    assert "bootstrap over test patients and seeds" in Path("metrics/comparison.md").read_text()

    val_groups = np.array([f"{g}v" for g in groups], dtype=object)
    for text_input in params.text.inputs:
        y, models, yv = scored_models(params, text_input)
        by_patient = intervals(bootstrap_of(params, y, models, yv, groups, val_groups))
        assert written_intervals(written, text_input) == by_patient
        by_study = intervals(bootstrap_of(params, y, models, yv))
        assert by_study["models", "fusion", "auroc"] != by_patient["models", "fusion", "auroc"]
        tested = t_intervals(params, y, models, groups)
        _same(written_intervals(written, text_input, tested=True), tested)
        assert not np.allclose(tested["fusion - image"], t_intervals(params, y, models)[
            "fusion - image"])  # clustered by patient


def test_compare_resamples_studies_without_patients(workdir, params, no_figures):
    labels, _ = _patients(n_patients=25, seed=6)
    uids = np.arange(100, 100 + len(labels))
    write_runs(params, uids, labels)
    prepared_table(uids, labels)
    result = compare_mod.compare(params)
    assert result["resampled"] == "studies" and result["resampled_units"] == len(uids)
    assert "bootstrap over test studies and seeds" in Path("metrics/comparison.md").read_text()
    for text_input in params.text.inputs:
        y, models, yv = scored_models(params, text_input)
        assert written_intervals(result, text_input) == intervals(bootstrap_of(params, y, models,
                                                                               yv))
        _same(written_intervals(result, text_input, tested=True), t_intervals(params, y, models))


def test_compare_refuses_test_studies_missing_from_studies_csv(workdir, params, no_figures):
    labels, groups = _patients(n_patients=10)
    uids = np.arange(len(labels))
    write_runs(params, uids, labels)
    prepared_table(uids[1:], labels[1:], groups[1:])
    with pytest.raises(PipelineError, match=r"the predictions score studies that "
                                            r"data/prepared/studies.csv does not hold "
                                            r"\(uids \[0\]\).*`dvc repro`"):
        compare_mod.compare(params)
    for written in ("metrics/comparison.json", "metrics/comparison.md", "metrics/figures"):
        assert not Path(written).exists(), written


def test_compare_on_a_prepared_mimic_layout(tmp_path, workdir, params, no_figures):
    layout = make_mimic(tmp_path / "mimic-cxr-jpg")
    params.data = replace(params.data, source="mimic_cxr", local_dir=str(layout["folder"]))
    download(params_mod.validate(params))
    prepare(params)
    studies = pd.read_csv(STUDIES)
    fields = [f for f in params_mod.TEXT_FIELDS
              if any(f in params_mod.fields_of(i) for i in params.text.inputs)]
    assert list(studies.columns) == STUDY_COLUMNS + fields + ["patient"]
    test = studies[studies["split"] == "test"].sort_values("uid")
    images = pd.read_csv(IMAGES)
    per_study = images[images["split"] == "test"].groupby("uid").size()
    assert per_study.max() > 1  # studies of several images: compare scores the study
    val = studies[studies["split"] == "val"].sort_values("uid")
    write_runs(params, test["uid"], test["label"], per_study.loc[test["uid"]].to_numpy(),
               val=(val["uid"], val["label"]))
    result = compare_mod.compare(params)
    assert result["resampled"] == "patients" and result["test_studies"] == len(test)
    assert result["resampled_units"] == test["patient"].nunique() < len(test)
