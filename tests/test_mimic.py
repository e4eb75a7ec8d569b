"""data.source=mimic_cxr: the MIMIC-CXR-JPG layout, its labels, views and reports, the split
by patient, the official split, the error messages, and `dvc repro` end to end."""
from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mimic_layout import make_mimic
from repos import dvc, make_repo
from test_prepare import basic_raw, write_raw

from cxrfusion import params as params_mod
from cxrfusion.common import PipelineError
from cxrfusion.formats import IMAGES_SUBDIR, PROJECTIONS_CSV, REPORTS_CSV, STUDY_COLUMNS
from cxrfusion.imaging import cache_images
from cxrfusion.sources import mimic
from cxrfusion.studies import label_of
from stages.download import download
from stages.evaluate import evaluate_all
from stages.prepare import prepare

SPLIT_OF = {"train": "train", "validate": "val", "test": "test"}


@pytest.fixture
def params(params) -> dict:
    """The miniature MIMIC folder holds a few studies per split: no minimum split size."""
    params.split = replace(params.split, min_studies=0, min_per_label=0)
    return params


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict:
    """One generated folder for the tests that only read it."""
    return make_mimic(tmp_path_factory.mktemp("mimic") / "mimic-cxr-jpg")


@pytest.fixture
def fresh(tmp_path) -> dict:
    """A generated folder of its own, for tests that damage it."""
    return make_mimic(tmp_path / "mimic-cxr-jpg")


def mimic_params(params: params_mod.Params, folder: Path,
                 official: bool = False) -> params_mod.Params:
    params.data = replace(params.data, source="mimic_cxr", local_dir=str(folder))
    params.split.official = official
    return params_mod.validate(params)


def read_raw(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.read_csv(raw / REPORTS_CSV, dtype=str, keep_default_na=False),
            pd.read_csv(raw / PROJECTIONS_CSV, dtype=str, keep_default_na=False))


# --- report sections --------------------------------------------------------------------------

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites
   // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.  The cardiomediastinal
 silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_parse_sections_of_a_hand_written_report():
    assert mimic.parse_sections(REPORT) == {
        "EXAMINATION": "CHEST (PA AND LAT)",
        "INDICATION": "___F with new onset ascites // eval for infection",
        "TECHNIQUE": "Chest PA and lateral",
        "COMPARISON": "None.",
        "FINDINGS": "There is no focal consolidation, pleural effusion or pneumothorax. "
                    "Bilateral nodular opacities that most likely represent nipple shadows. "
                    "The cardiomediastinal silhouette is normal.",
        "IMPRESSION": "No acute cardiopulmonary process.",
    }
    assert mimic.report_fields(REPORT) == {
        "indication": "___F with new onset ascites // eval for infection",
        "comparison": "None.",
        "findings": "There is no focal consolidation, pleural effusion or pneumothorax. "
                    "Bilateral nodular opacities that most likely represent nipple shadows. "
                    "The cardiomediastinal silhouette is normal.",
        "impression": "No acute cardiopulmonary process.",
    }


def test_report_fields_missing_sections_aliases_and_repeats():
    text = ("WET READ: ___ 3:14 PM no pneumothorax\nHISTORY: Fall.\nIMPRESSION: Rib fracture.\n"
            "Mid-sentence words: not a heading. PA and lateral views:\nstill the impression.\n"
            "CONCLUSION:   Follow up.\n")
    assert mimic.parse_sections(text) == {
        "WET READ": "___ 3:14 PM no pneumothorax", "HISTORY": "Fall.",
        "IMPRESSION": "Rib fracture. Mid-sentence words: not a heading. PA and lateral views: "
                      "still the impression.",
        "CONCLUSION": "Follow up."}
    assert mimic.report_fields(text) == {"indication": "Fall.", "comparison": None,
                                         "findings": None,
                                         "impression": "Rib fracture. Mid-sentence words: not a "
                                         "heading. PA and lateral views: still the impression. "
                                         "Follow up."}
    assert mimic.report_fields("FINAL REPORT\nno headings at all") == dict.fromkeys(
        ["indication", "comparison", "findings", "impression"])
    assert mimic.report_fields("") == dict.fromkeys(
        ["indication", "comparison", "findings", "impression"])
    assert mimic.report_fields("FINDINGS:\n\nIMPRESSION: Clear.")["findings"] is None
    # headings with "AND", "/" or parentheses (common in MIMIC-CXR)
    assert mimic.report_fields("INDICATION: cough\n\n"
                               "FINDINGS AND IMPRESSION: Small left effusion.") == {
        "indication": "cough", "comparison": None, "findings": "Small left effusion.",
        "impression": None}
    assert mimic.report_fields("COMPARISON: None.\nFINDINGS/IMPRESSION: Clear lungs.\n"
                               "PROVISIONAL FINDINGS IMPRESSION (PFI): Clear.") == {
        "indication": None, "comparison": "None.", "findings": "Clear lungs.", "impression": None}


# --- the label rule and the views --------------------------------------------------------------

@pytest.mark.parametrize("row, mesh, label", [
    ({"No Finding": "1.0"}, "normal", 0),
    ({"No Finding": "1.0", "Support Devices": "1.0"}, "normal", 0),
    ({"No Finding": 1.0, "Cardiomegaly": "-1.0"}, "normal", 0),
    ({"Cardiomegaly": "1.0", "Edema": "-1.0", "Atelectasis": "0.0"}, "Cardiomegaly", 1),
    ({"Pleural Effusion": "1.0", "Atelectasis": "1.0"}, "Atelectasis;Pleural Effusion", 1),
    ({"Support Devices": "1.0"}, "Support Devices", 1),
    ({"Edema": "-1.0", "Pneumonia": "-1.0"}, "abnormal", 1),
    ({"No Finding": "-1.0"}, "abnormal", 1),
    ({"No Finding": "0.0"}, "abnormal", 1),
    ({"No Finding": ""}, "abnormal", 1),
    ({}, "abnormal", 1),
])
def test_label_rule(row, mesh, label):
    full = {name: "" for name in ("No Finding", *mimic.FINDINGS)} | row
    assert mimic.mesh_of(full) == mesh
    assert label_of(mesh, keep_unindexed=False) == label


def test_no_chexpert_row_is_unlabelled():
    assert mimic.mesh_of(None) == ""
    assert math.isnan(label_of(mimic.mesh_of(None), keep_unindexed=True))


@pytest.mark.parametrize("position, view", [
    ("PA", "Frontal"), ("AP", "Frontal"), ("AP AXIAL", "Frontal"), ("PA LLD", "Frontal"),
    ("ap", "Frontal"), (" PA ", "Frontal"), ("LATERAL", "Lateral"), ("LL", "Lateral"),
    ("", "Unknown"), (None, "Unknown"), (float("nan"), "Unknown"), ("LAO", "Unknown"),
    ("SWIMMERS", "Unknown"), ("XTABLE LATERAL", "Unknown"), ("APPLE", "Unknown"),
])
def test_view_mapping(position, view):
    assert mimic.view_of(position) == view


def test_paths_follow_the_physionet_layout():
    assert mimic.image_path("10000032", "50414267", "02aa804e-bde0afdd") == \
        "files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg"
    assert mimic.report_path("19999987", "55368167") == "files/p19/p19999987/s55368167.txt"


# --- the conversion ---------------------------------------------------------------------------

def test_convert_writes_the_raw_contract(layout, tmp_path, caplog):
    raw = tmp_path / "raw"
    with caplog.at_level(logging.WARNING, logger="mimic"):
        summary = mimic.convert(layout["folder"], raw)
    reports, projections = read_raw(raw)
    studies = {s["study_id"]: s for s in layout["studies"]}

    assert list(reports.columns) == ["uid", "patient", "MeSH", "indication", "comparison",
                                     "findings", "impression", "official_split"]
    assert sorted(reports["uid"]) == sorted(studies)
    assert list(reports["uid"]) == sorted(studies, key=int)
    for row in reports.itertuples():
        s = studies[row.uid]
        assert row.patient == s["subject_id"]
        assert row.MeSH == s["mesh"]
        assert row.official_split == SPLIT_OF[s["official"]]
        if s["report"] is not None:  # the fields the generator wrote into the report
            for field, expected in s["fields"].items():
                assert getattr(row, field) == (expected or ""), (row.uid, field)
    assert reports.set_index("uid").loc[layout["uncertain"], "MeSH"] == "abnormal"
    assert reports.set_index("uid").loc[layout["no_chexpert"], "MeSH"] == ""
    empty = reports.set_index("uid").loc[layout["no_report"]]
    assert (empty[["indication", "comparison", "findings", "impression"]] == "").all()
    assert summary == {"studies": 64, "images": 125, "images_absent": 0,
                       "studies_without_report": 1, "studies_without_chexpert": 1}
    assert any("1 of 64 studies have no report file" in r.getMessage() for r in caplog.records)

    # one row per image; filenames relative to local_dir, found through the link
    expected = {d["filename"]: (s["study_id"], mimic.view_of(d["view"]))
                for s in layout["studies"] for d in s["images"]}
    assert {f: (u, v) for u, f, v in projections.itertuples(index=False)} == expected
    for f, uid in zip(projections["filename"], projections["uid"]):
        subject = studies[uid]["subject_id"]
        assert re.fullmatch(rf"files/p{subject[:2]}/p{subject}/s{uid}/[0-9a-f-]{{44}}\.jpg", f), f
    # images/ is a real folder holding only the link to local_dir: nothing is copied
    assert (raw / "images").is_dir() and not (raw / "images").is_symlink()
    assert list((raw / "images").iterdir()) == [raw / IMAGES_SUBDIR]
    assert (raw / IMAGES_SUBDIR).is_symlink()
    assert Path(os.readlink(raw / IMAGES_SUBDIR)) == layout["folder"].resolve()
    assert all((raw / IMAGES_SUBDIR / f).is_file() for f in projections["filename"])
    assert sorted(p.name for p in raw.iterdir()) == sorted(["images", REPORTS_CSV, PROJECTIONS_CSV])


def test_plain_csvs_give_the_same_result(tmp_path):
    a = make_mimic(tmp_path / "gz", gz=True)
    b = make_mimic(tmp_path / "plain", gz=False)
    assert not list(b["folder"].glob("*.gz")) and len(list(b["folder"].glob("*.csv"))) == 3
    mimic.convert(a["folder"], tmp_path / "raw_a")
    mimic.convert(b["folder"], tmp_path / "raw_b")
    for name in (REPORTS_CSV, PROJECTIONS_CSV):
        assert (tmp_path / "raw_a" / name).read_bytes() == (tmp_path / "raw_b" / name).read_bytes()


def test_partial_download_leaves_out_absent_images(fresh, tmp_path, caplog):
    folder = fresh["folder"]
    gone = next(s for s in fresh["studies"] if len(s["images"]) == 1 and s["label"] == 0)
    (folder / gone["images"][0]["filename"]).unlink()
    other = next(s for s in fresh["studies"] if len(s["images"]) == 3)
    (folder / other["images"][2]["filename"]).unlink()
    with caplog.at_level(logging.WARNING, logger="mimic"):
        summary = mimic.convert(folder, tmp_path / "raw")
    reports, projections = read_raw(tmp_path / "raw")
    assert gone["study_id"] not in set(reports["uid"])  # no image left: no study
    assert (projections["uid"] == other["study_id"]).sum() == 2
    assert summary["images_absent"] == 2 and summary["images"] == 123
    assert any("2 of 125 images" in r.getMessage() for r in caplog.records)


# --- download + prepare: the split by patient and the official split ---------------------------

def _prepared(workdir: Path, params: params_mod.Params) -> tuple[pd.DataFrame, dict]:
    download(params)
    report = prepare(params)
    studies = pd.read_csv("data/prepared/studies.csv", dtype={"patient": str, "uid": str},
                          keep_default_na=False)
    return studies, report


def test_split_by_patient(layout, workdir, params):
    studies, report = _prepared(workdir, mimic_params(params, layout["folder"]))
    truth = {s["study_id"]: s for s in layout["studies"]}

    assert list(studies.columns) == STUDY_COLUMNS + ["indication", "findings", "impression",
                                                     "patient"]  # the text inputs' fields
    assert (studies["patient"] == studies["uid"].map(lambda u: truth[u]["subject_id"])).all()
    assert studies.groupby("patient")["split"].nunique().max() == 1  # no subject in two splits
    for split in ("train", "val", "test"):  # both labels everywhere (stratified by patient)
        assert set(studies.loc[studies["split"] == split, "label"]) == {0, 1}, split
    assert (studies["label"] == studies["uid"].map(lambda u: truth[u]["label"])).all()
    assert layout["no_chexpert"] not in set(studies["uid"])
    assert report["dropped"]["studies_without_mesh"] == 1
    assert report["studies"] == 63 and report["patients"] == studies["patient"].nunique() == 30
    empty = report["studies_with_empty_text"]  # per text input
    assert set(empty) == set(params.text.inputs)
    assert all(n >= 1 for n in empty.values())  # the study without a report
    n_test = (studies["split"] == "test").sum()
    assert 0.1 * 63 < n_test < 0.35 * 63

    # seeded: the same seed gives the same split, another seed another one
    again, _ = _prepared(workdir, params)
    assert list(again["split"]) == list(studies["split"])
    params.split.seed = 7
    other, _ = _prepared(workdir, params)
    assert list(other["split"]) != list(studies["split"])
    assert other.groupby("patient")["split"].nunique().max() == 1


def test_image_cache_reads_filenames_with_folders(layout, workdir, params):
    download(mimic_params(params, layout["folder"]))
    prepare(params)
    images = pd.read_csv("data/prepared/images.csv", keep_default_na=False)
    assert images["filename"].str.startswith("files/p").all()
    report = cache_images(images["filename"].tolist(), Path("data/raw") / IMAGES_SUBDIR,
                          Path("features/images.h5"), size=32, fit="pad", skip_bad=False,
                          workers=1)
    assert report == {"cached": len(images), "skipped": 0, "skipped_files": [],
                      "skipped_images": []}


def test_official_split(layout, workdir, params):
    studies, report = _prepared(workdir, mimic_params(params, layout["folder"], official=True))
    truth = {s["study_id"]: SPLIT_OF[s["official"]] for s in layout["studies"]}
    assert dict(zip(studies["uid"], studies["split"])) == \
        {u: s for u, s in truth.items() if u != layout["no_chexpert"]}
    assert set(studies["split"]) == {"train", "val", "test"}  # validate -> val
    assert report["by_split"]["val"]["studies"] == sum(s == "val" for s in truth.values())
    assert studies.groupby("patient")["split"].nunique().max() == 1


def test_official_split_needs_a_value_for_every_study(fresh, workdir, params):
    path = fresh["folder"] / "mimic-cxr-2.0.0-split.csv.gz"
    split = pd.read_csv(path, dtype=str)
    victim = fresh["studies"][0]["study_id"]
    split.loc[split["study_id"] != victim].to_csv(path, index=False)
    with pytest.raises(PipelineError, match=r"official_split.*\blines? 2 have ''"):
        _prepared(workdir, mimic_params(params, fresh["folder"], official=True))
    _prepared(workdir, mimic_params(params, fresh["folder"], official=False))  # not needed here


def test_official_split_refused_without_the_column(tmp_path, params):
    params.split.official = True  # prepare alone (params.validate would refuse earlier)
    raw = write_raw(tmp_path / "raw", *basic_raw(tmp_path))
    with pytest.raises(PipelineError, match=r"indiana_reports\.csv.*official_split.*mimic_cxr"):
        prepare(params, raw=raw, out=tmp_path / "prepared")


def test_kaggle_layout_keeps_the_split_by_study(tmp_path, params):
    """Without a patient column nothing changes: no patient column, no patient count."""
    raw = write_raw(tmp_path / "raw", *basic_raw(tmp_path))
    report = prepare(params, raw=raw, out=tmp_path / "prepared")
    assert "patients" not in report
    header = (tmp_path / "prepared" / "studies.csv").read_text().splitlines()[0]
    assert header.split(",") == STUDY_COLUMNS + ["indication", "findings", "impression"]


# --- error messages ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["metadata", "chexpert", "split"])
def test_missing_csv(fresh, tmp_path, name):
    (fresh["folder"] / f"mimic-cxr-2.0.0-{name}.csv.gz").unlink()
    with pytest.raises(PipelineError) as err:
        mimic.convert(fresh["folder"], tmp_path / "raw")
    message = str(err.value)
    assert f"mimic-cxr-2.0.0-{name}.csv.gz not found" in message
    assert str(fresh["folder"].resolve()) in message and "PhysioNet" in message
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("name, column", [("metadata", "ViewPosition"), ("metadata", "dicom_id"),
                                          ("chexpert", "No Finding"), ("chexpert", "Edema"),
                                          ("split", "split")])
def test_missing_column(fresh, tmp_path, name, column):
    path = fresh["folder"] / f"mimic-cxr-2.0.0-{name}.csv.gz"
    pd.read_csv(path, dtype=str).drop(columns=[column]).to_csv(path, index=False)
    with pytest.raises(PipelineError) as err:
        mimic.convert(fresh["folder"], tmp_path / "raw")
    message = str(err.value)
    assert str(path.resolve()) in message
    assert re.search(rf"missing column\(s\) {re.escape(column)};", message), message


def test_bad_official_split_value(fresh, tmp_path):
    path = fresh["folder"] / "mimic-cxr-2.0.0-split.csv.gz"
    split = pd.read_csv(path, dtype=str)
    split.loc[3, "split"] = "holdout"
    split.to_csv(path, index=False)
    with pytest.raises(PipelineError, match=r"split\.csv\.gz: column split must be one of "
                                            r"train, validate, test; e\.g\. 'holdout'"):
        mimic.convert(fresh["folder"], tmp_path / "raw")


def test_corrupt_gzip(fresh, tmp_path):
    path = fresh["folder"] / "mimic-cxr-2.0.0-chexpert.csv.gz"
    path.write_bytes(gzip.compress(b"subject_id,study_id\n")[:12])
    with pytest.raises(PipelineError, match=r"chexpert\.csv\.gz: cannot be read"):
        mimic.convert(fresh["folder"], tmp_path / "raw")


def test_local_dir_not_a_folder(workdir, params):
    mimic_params(params, workdir / "nowhere")
    with pytest.raises(PipelineError, match=r"data\.local_dir=.*nowhere.*is not a folder.*MIMIC"):
        download(params)
    (workdir / "a_file").write_text("x")
    params.data.local_dir = str(workdir / "a_file")
    with pytest.raises(PipelineError, match=r"is not a folder"):
        download(params)
    assert not Path("data/raw").exists()


def test_no_image_at_all(fresh, tmp_path):
    for jpg in fresh["folder"].rglob("*.jpg"):
        jpg.unlink()
    with pytest.raises(PipelineError, match=r"none of the 125 images .* files/"):
        mimic.convert(fresh["folder"], tmp_path / "raw")


# --- parameters -------------------------------------------------------------------------------

def test_params_split_official(params):
    assert params.split.official is False  # the default in params.yaml
    params_mod.validate(params)
    for value in ("yes", 1, None, "true"):
        params.split.official = value
        with pytest.raises(PipelineError, match=r"split\.official=.*true or false"):
            params_mod.validate(params)
    params.split.official = True
    with pytest.raises(PipelineError, match=r"split\.official=True.*only data\.source=mimic_cxr"):
        params_mod.validate(params)  # the demo has no official split
    params.data = replace(params.data, source="mimic_cxr", local_dir="/data/mimic-cxr-jpg")
    params_mod.validate(params)
    older = params_mod.as_dict(params)
    del older["split"]["official"]  # an older params.yaml: the seeded split
    params_mod.validate(older)
    assert params_mod.built(older).split.official is False


def test_params_mimic_needs_a_folder(params):
    params.data.source = "mimic_cxr"
    with pytest.raises(PipelineError, match=r"data\.local_dir=None.*mimic_cxr.*MIMIC-CXR-JPG"):
        params_mod.validate(params)
    params.data.local_dir = "/data/mimic-cxr-jpg"
    assert params_mod.validate(params).data.source == "mimic_cxr"


# --- end to end -------------------------------------------------------------------------------

@pytest.mark.pipeline
def test_dvc_repro_on_mimic(tmp_path):
    """`dvc repro` of the whole pipeline (the suite's one: tests/test_pipeline.py runs the
    demo's stages in one process), on the generated folder, with the official split (the test
    studies are known in advance). First one trained and evaluated model: `dvc repro
    train_text@findings+impression-0` runs download, prepare, the encoder, both caches (JPGs
    decoded) and train; stages.evaluate, given the run as its command line gives it, scores
    it. Then `dvc repro`: the other runs, evaluate, compare, explain and the report. One text
    input and one seed: the source is what is tested here, and the cost stays three runs
    whatever the demo trains. No frozen image encoder (frozen_image.encoders: {}): a study
    without frozen arms runs through, their stages absent."""
    repo = make_repo(tmp_path)
    layout = make_mimic(tmp_path / "mimic-cxr-jpg")
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["data"].update(source="mimic_cxr", local_dir=str(layout["folder"]))
    p["split"].update(official=True, min_studies=0, min_per_label=0)  # a miniature dataset
    p["text"]["inputs"] = ["findings+impression"]  # one text input and one seed: 3 runs
    p["train"]["seeds"] = [0]
    p["compare"].update(primary="fusion-image/findings+impression", secondary=[],
                        encoders=[])
    # no frozen image encoder: its arms read the same images through the same load_xray, and
    # their six processes (test_pipeline runs them) would double this test's time
    p["frozen_image"]["encoders"] = {}
    assert p["train"]["epochs"] == 1
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))

    dvc(repo, "repro", "train_text@findings+impression-0")
    with pytest.MonkeyPatch.context() as mp:  # `python -m stages.evaluate text 0 ...`'s call
        mp.chdir(repo)
        evaluate_all(["text", "0", "findings+impression"], params_mod.load())

    expected_test = sum(s["official"] == "test" and s["label"] is not None
                        for s in layout["studies"])
    scores = json.loads((repo / "metrics/test/text/findings+impression/seed-0.json").read_text())
    assert scores["run"] == {"variant": "text", "seed": 0, "text_input": "findings+impression"}
    trained = [m.parent.relative_to(repo / "models").as_posix()
               for variant in ("fusion", "image", "text")
               for m in (repo / "models" / variant).rglob("model.safetensors")]
    assert trained == ["text/findings+impression/seed-0"]  # only what was asked
    assert scores["study"]["n"] == expected_test == 16
    images = json.loads((repo / "features/images_counts.json").read_text())
    assert images["cached"] == len(pd.read_csv(repo / "data/prepared/images.csv"))
    studies = pd.read_csv(repo / "data/prepared/studies.csv", dtype=str, keep_default_na=False)
    assert studies.groupby("patient")["split"].nunique().max() == 1
    assert (studies["split"] == "test").sum() == expected_test
    report = json.loads((repo / "data/prepared/counts.json").read_text())
    assert report["patients"] == 30 and report["by_split"]["test"]["studies"] == expected_test
    # the images were read through the link, never copied, and are still there
    raw = repo / "data/raw"
    assert (raw / IMAGES_SUBDIR).is_symlink()
    assert list((raw / "images").iterdir()) == [raw / IMAGES_SUBDIR]
    assert len(list(layout["folder"].rglob("*.jpg"))) == 125

    # then the rest: every variant trained and scored, compared by patient, and the study report
    # (with one text input: the sections that apply)
    dvc(repo, "repro")
    comparison = json.loads((repo / "metrics/comparison.json").read_text())
    assert comparison["resampled"] == "patients" and comparison["test_studies"] == 16
    text = (repo / "metrics/study_report.md").read_text()
    assert "The dataset's official split" in text and "Patients are not named" not in text
    flow = {}
    for line in text.split("| split | studies |")[1].splitlines()[2:5]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        flow[cells[0]] = cells[1:]
    for split in ("train", "val", "test"):
        mine = studies[studies["split"] == split]
        assert flow[split][0] == str(len(mine)) == str(report["by_split"][split]["studies"])
        assert flow[split][4] == str(mine["patient"].nunique()) == str(
            report["by_split"][split]["patients"])
    for text_input in p["text"]["inputs"]:
        assert f"**Text input {text_input}**" in text
        assert f"**Fusion against the image model, text input {text_input}**" in text
    assert "| with a lateral view |" in text  # MIMIC names views: PA, AP, LATERAL, LL
    assert (repo / "metrics/study_report/flow.png").stat().st_size > 0
