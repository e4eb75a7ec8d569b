"""Stage `study_report` (stages/study_report.py, cxrfusion/study_report.py): every count of the
participant flow equals what the stages wrote, recomputed here from their files; a dataset with
patients, or with unreadable images, gives the rows that apply; the balance check flags a bad
split and not noise; the report is the same bytes when run again."""
from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import built_project
from test_bootstrap_groups import write_runs

from cxrfusion import study_report, tfidf
from cxrfusion.formats import IMAGES, IMAGES_COUNTS, PREPARED_COUNTS, STUDIES, runs
from cxrfusion.params import Params, row
from cxrfusion.tuning import tune
from stages.prepare import split_counts
from stages.study_report import MARKDOWN, SUBGROUPS, write_study_report


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny project through cache_images, and the model.json of each run the report reads."""
    folder = tmp_path_factory.mktemp("report")
    p = built_project(folder, {})
    with pytest.MonkeyPatch.context() as mp:  # what evaluate writes, synthetic: test_compare's
        mp.chdir(folder)
        test = pd.read_csv(STUDIES).query("split == 'test'")
        write_runs(p, test["uid"].to_numpy(), test["label"].to_numpy())
    for run in runs(p):
        if row(run.variant).trained_once:
            continue  # the TF-IDF baseline records no weights: fitted below
        (folder / run.models).mkdir(parents=True, exist_ok=True)
        (folder / run.models / "model.json").write_text(json.dumps(
            {"backbone": None if run.variant == "text" else "tinynet_e.in1k",
             "pretrained": False, "text_model": "models/demo_encoder", "text_revision": None}))
    with pytest.MonkeyPatch.context() as mp:  # each arm's choice (no grid: empty)
        mp.chdir(folder)
        for run in runs(p):
            if row(run.variant).trained_once:
                tfidf.train(run, p)  # its model and its choice, as stage train_tfidf
            elif run.seed == p.train.seeds[0]:
                tune(run, p)
    return folder, p


@pytest.fixture
def inside(project, monkeypatch):
    folder, p = project
    monkeypatch.chdir(folder)
    return p


def _rows(text: str, header: str) -> dict:
    """The rows of the markdown table under the line starting `header`: first cell -> cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def test_every_count_of_the_flow_is_the_stage_outputs(inside):
    text = write_study_report(inside)
    studies, images = pd.read_csv(STUDIES), pd.read_csv(IMAGES)
    prepared = json.loads(PREPARED_COUNTS.read_text())
    steps = _rows(text, "| step |")
    dropped = prepared["dropped"]
    read = len(studies) + dropped["studies_unindexed"] + dropped["studies_without_mesh"]
    assert steps["read from the dataset"] == [str(read), str(len(images)
                                               + dropped["images_of_dropped_studies"])]
    assert read == inside.demo.studies  # the demo writes this many studies
    assert steps["kept"] == [str(len(studies)), str(len(images))]
    assert steps["dropped: No Indexing (never labelled)"][0] == str(dropped["studies_unindexed"])
    for text_input in inside.text.inputs:
        fields = text_input.split("+")
        empty = studies[fields].fillna("").apply(lambda r: "".join(r).strip() == "", axis=1)
        assert steps[f"kept with an empty {text_input}"][0] == str(int(empty.sum()))
    splits = _rows(text, "| split |")
    for split in ("train", "val", "test"):
        mine = studies[studies["split"] == split]
        assert splits[split][:3] == [str(len(mine)), str(int(mine["label"].sum())),
                                     str(int((images["split"] == split).sum()))]
        assert splits[split][3] == "0"  # every image readable
    assert "Patients are not named by this dataset" in text
    assert (Path("metrics/study_report/flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n")


def test_studies_without_a_readable_image_are_counted_where_they_are(inside):
    images = pd.read_csv(IMAGES)
    test_study = images[images["split"] == "test"]["uid"].iloc[0]
    lost = images.loc[images["uid"] == test_study, "filename"].tolist()
    one_more = images.loc[images["split"] == "train", "filename"].iloc[0]  # one image of many
    before = IMAGES_COUNTS.read_text()
    try:
        IMAGES_COUNTS.write_text(json.dumps({"skipped_images": lost + [one_more]}))
        flowed = study_report.flow(pd.read_csv(STUDIES), images,
                                   json.loads(PREPARED_COUNTS.read_text()),
                                   json.loads(IMAGES_COUNTS.read_text()))
    finally:
        IMAGES_COUNTS.write_text(before)
    assert flowed["images_skipped"] == len(lost) + 1
    n_train = images[images["filename"] == one_more]["uid"].map(
        images.groupby("uid").size()).iloc[0]
    assert flowed["by_split"]["test"]["no_readable_image"] == 1
    assert flowed["by_split"]["train"]["no_readable_image"] == (1 if n_train == 1 else 0)
    assert flowed["by_split"]["val"]["no_readable_image"] == 0


def test_patients_are_counted_per_split_where_the_data_names_them(inside):
    """prepare counts each split's patients (split_counts; tests/test_mimic.py runs it on a
    dataset with patients); the flow carries its counts."""
    studies, images = pd.read_csv(STUDIES), pd.read_csv(IMAGES)
    studies["patient"] = [f"p{i // 2}" for i in range(len(studies))]  # two studies a patient
    prepared = json.loads(PREPARED_COUNTS.read_text())
    prepared["by_split"] = {s: split_counts(studies, images, s, by_patient=True)
                            for s in ("train", "val", "test")}
    flowed = study_report.flow(studies, images, prepared, json.loads(IMAGES_COUNTS.read_text()))
    for split in ("train", "val", "test"):
        assert flowed["by_split"][split]["patients"] == (
            studies.loc[studies["split"] == split, "patient"].nunique())
    table = study_report.characteristics(studies, inside.text.inputs)
    text = study_report.markdown(inside, flowed, table, study_report.balance(
        table, {s: v["studies"] for s, v in flowed["by_split"].items()}),
        {"changed": {}, "versions": {}, "pins": {}})
    assert "Split by patient" in text and "| split | studies | abnormal | images | studies with " \
        "no readable image | patients |" in text
    assert "Patients are not named" not in text


def test_the_balance_check_flags_a_bad_split_not_noise():
    a, b = {"mean": 0.6, "sd": 0.49}, {"mean": 0.3, "sd": 0.458}
    assert study_report.standardised_difference(a, b) == pytest.approx(0.3 / np.sqrt(
        (0.49 ** 2 + 0.458 ** 2) / 2))
    table = {s: {"abnormal": a if s == "train" else b, "images per study": {"mean": 2, "sd": 0}}
             for s in ("train", "val", "test")}
    checked = study_report.balance(table, {"train": 300, "val": 60, "test": 100})
    assert checked["train vs test"]["characteristic"] == "abnormal"
    assert checked["train vs test"]["bound"] == pytest.approx(1.96 * np.sqrt(1 / 300 + 1 / 100))
    assert abs(checked["train vs test"]["difference"]) > checked["train vs test"]["bound"]
    close = {s: {"abnormal": {"mean": 0.6 - 0.01 * (s != "train"), "sd": 0.49}}
             for s in ("train", "val", "test")}
    quiet = study_report.balance(close, {"train": 300, "val": 60, "test": 100})
    assert all(abs(v["difference"]) < v["bound"] for v in quiet.values())


def test_reproducibility_names_what_changed_and_what_was_read(inside):
    changed = study_report.changed_parameters(inside)
    assert changed["demo.studies"] == 60 and changed["image.size"] == 32  # TINY's
    assert "train.lr" not in changed
    text = write_study_report(inside)
    assert "`demo.studies=60`" in text and "torch " in text
    assert "backbone `tinynet_e.in1k`" in text and "None" not in text
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|\bcommit [0-9a-f]{7,}", text)  # no dates, commits
    assert "| Ground truth: source, annotators and their qualifications | not filled" in text


def test_the_report_is_the_same_bytes_again(inside):
    write_study_report(inside)
    first = (MARKDOWN.read_bytes(), Path("metrics/study_report/flow.png").read_bytes())
    write_study_report(inside)
    assert (MARKDOWN.read_bytes(), Path("metrics/study_report/flow.png").read_bytes()) == first


def _seed_means(p: Params, variant: str, text_input) -> pd.Series:
    rows = [pd.read_csv(run.predictions).groupby("uid")["probability"].mean()
            for run in runs(p) if run.variant == variant
            and run.text_input in (text_input, None)]
    return pd.concat(rows, axis=1).mean(axis=1)


def test_failure_analysis_lists_the_largest_disagreements_and_the_studies_every_run_misses(
        inside):
    studies = pd.read_csv(STUDIES)
    explained = pd.DataFrame({"file": ["false_positive_1.png"], "uid": [int(
        studies.query("split == 'test'")["uid"].iloc[0])]})
    from stages.study_report import scored_runs

    failed = study_report.failures(studies, scored_runs(inside), explained, inside.text.inputs)
    for text_input in inside.text.inputs:
        fusion = _seed_means(inside, "fusion", text_input)
        for other in ("image", "text"):
            gap = (fusion - _seed_means(inside, other, None if other == "image" else
                                        text_input)).abs().sort_values(ascending=False)
            rows = failed["disagreements"][text_input, other]
            assert [r["uid"] for r in rows] == gap.index[:study_report.FAILURES].tolist()
            assert [r["gap"] for r in rows] == pytest.approx(gap.iloc[:study_report.FAILURES])
    # every run of every model wrong at its own threshold, by hand
    wrong = None
    for run in runs(inside):
        df = pd.read_csv(run.predictions).groupby("uid").agg(label=("label", "first"),
                                                             probability=("probability", "mean"))
        threshold = json.loads(run.test_metrics.read_text())["threshold"]
        mine = set(df.index[(df["probability"] >= threshold).astype(int) != df["label"]])
        wrong = mine if wrong is None else wrong & mine
    assert [r["uid"] for r in failed["always_wrong"]] == sorted(wrong)
    # words, not uids alone; the Grad-CAM file where explain drew the study
    row = next(r for rows in failed["disagreements"].values() for r in rows)
    study = studies.set_index("uid").loc[row["uid"]]
    text = " ".join(str(study[f]) for f in ("findings", "impression") if isinstance(study[f], str))
    first = " ".join(text.split()[:study_report.WORDS])
    assert row["words"]["findings+impression"].startswith(first)
    drawn = [r for rows in failed["disagreements"].values() for r in rows if r["gradcam"]]
    assert all(r["uid"] == explained["uid"].iloc[0] for r in drawn)
    text = write_study_report(inside)
    assert "## Failure analysis" in text and "not for publication as is" in text
    assert f"every model, each at its own validation threshold: {len(wrong)} studies" in text


# --- robustness by subgroup ---------------------------------------------------------------------

def _tables(text: str) -> dict:
    """The subgroup tables: text input -> {subgroup: cells}."""
    out = {}
    for line in text.splitlines():
        if line.startswith("**Text input "):
            text_input = line.split("**")[1].removeprefix("Text input ")
            out[text_input] = _rows(text[text.index(line):], "| subgroup |")
    return out


def test_subgroups_are_listed_or_scored_with_their_counts(inside, monkeypatch):
    p = copy.deepcopy(inside)
    studies = pd.read_csv(STUDIES).set_index("uid")
    test = studies[studies["split"] == "test"]
    lateral = test["views"].str.contains("Lateral")
    for minimum in (inside.study_report.min_per_label, 1):
        p.study_report.min_per_label = minimum
        tables = _tables(write_study_report(p))
        saved = json.loads(SUBGROUPS.read_text())
        assert set(tables) == set(p.text.inputs) == set(saved["subgroups"])
        rows = tables[p.text.inputs[0]]
        assert rows["with a lateral view"][0] == f"{lateral.sum()} ({test['label'][lateral].sum()})"
        assert rows["one image"][0] == (f"{(test['n_images'] == 1).sum()} "
                                        f"({test['label'][test['n_images'] == 1].sum()})")
        for name, cells in rows.items():
            members = saved["subgroups"][p.text.inputs[0]][name]
            few = min(members["abnormal"], members["studies"] - members["abnormal"]) < minimum
            assert (cells[2] == f"not scored: fewer than {minimum} of a label") == few, name
            if not few:
                assert cells[2] == results_cell(members["models"]["fusion"])
    # report length tertiles for each text input, on each input's table
    assert sum(name.startswith(f"{i}: ") for i in p.text.inputs for name in rows) >= 4


def results_cell(s: dict) -> str:
    from cxrfusion.results import cell
    return cell(s)


def test_a_scored_subgroup_is_each_runs_auroc_on_its_members_averaged_over_seeds(inside):
    from sklearn.metrics import roc_auc_score

    p = copy.deepcopy(inside)
    p.study_report.min_per_label = 1
    write_study_report(p)
    saved = json.loads(SUBGROUPS.read_text())["subgroups"]
    studies = pd.read_csv(STUDIES).set_index("uid")
    text_input = p.text.inputs[0]
    name = "one image" if "rounds" in saved[text_input]["one image"] else "several images"
    for variant in ("fusion", "image", "text"):
        aurocs = []
        for run in runs(p):
            if run.variant == variant and run.text_input in (text_input, None):
                df = pd.read_csv(run.predictions).groupby("uid").agg(
                    label=("label", "first"), probability=("probability", "mean"))
                n = studies.loc[df.index, "n_images"]
                mine = df[(n == 1) if name == "one image" else (n > 1)]
                aurocs.append(roc_auc_score(mine["label"], mine["probability"]))
        assert saved[text_input][name]["models"][variant]["mean"] == pytest.approx(
            np.mean(aurocs), abs=1e-12)


def test_one_text_input_no_views_and_no_subgroups_give_the_sections_that_apply(inside):
    p = copy.deepcopy(inside)
    first = p.text.inputs[0]
    p.text.inputs = [first]
    p.compare = replace(p.compare, primary=f"fusion-image/{first}", secondary=[],
                        encoders=[])
    studies = pd.read_csv(STUDIES)
    before = STUDIES.read_bytes()
    try:
        studies.assign(views="Unknown").to_csv(STUDIES, index=False)
        text = write_study_report(p)
    finally:
        STUDIES.write_bytes(before)
    tables = _tables(text)
    assert list(tables) == [first]
    assert "Left out: view: the dataset names no image's view (every view Unknown)." in text
    assert "fusion − image (primary)" in text and "fusion − text" not in text.split(
        "## Robustness by subgroup")[1].split("## Failure analysis")[0]
    assert not any("lateral" in name for name in tables[first])
    p.study_report.subgroups = []
    text = write_study_report(p)
    assert "No subgroup declared (`study_report.subgroups: []`)." in text
    assert "| Robustness and subgroup analysis | Robustness by subgroup" in text
