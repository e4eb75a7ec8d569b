"""Stage `prepare`: labels, report fields, the split by study, input validation and the data
report."""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrfusion.common import PipelineError
from cxrfusion.formats import IMAGES_SUBDIR, PROJECTIONS_CSV, REPORTS_CSV, STUDY_COLUMNS
from cxrfusion.params import TEXT_FIELDS, fields_of
from cxrfusion.studies import join_text, label_of, split_studies
from stages.prepare import prepare

REPORT_COLUMNS = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
                  "impression"]


@pytest.fixture
def params(params) -> dict:
    """Hand-made tables of a few studies: no minimum split size (tested on its own below)."""
    params.split = replace(params.split, min_studies=0, min_per_label=0)
    return params


# --- helpers: a hand-made raw folder in the Kaggle layout --------------------------------------

def report(uid, mesh, findings="The lungs are clear.", impression="No acute disease.",
           indication="Cough.", comparison=None) -> dict:
    problems = mesh.split("/")[0] if isinstance(mesh, str) else None
    return {"uid": uid, "MeSH": mesh, "Problems": problems, "image": "Xray Chest PA and Lateral",
            "indication": indication, "comparison": comparison, "findings": findings,
            "impression": impression}


def image(uid, n, view="Frontal") -> dict:
    return {"uid": uid, "filename": f"{uid}_IM-{n:04d}-1001.dcm.png", "projection": view}


def write_raw(root: Path, reports: list[dict], projections: list[dict],
              skip_images: tuple[str, ...] = ()) -> Path:
    """indiana_reports.csv, indiana_projections.csv and one tiny PNG per projection row."""
    (root / IMAGES_SUBDIR).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(reports).to_csv(root / REPORTS_CSV, index=False)
    pd.DataFrame(projections, columns=["uid", "filename", "projection"]).to_csv(
        root / PROJECTIONS_CSV, index=False)
    for row in projections:
        if row["filename"] not in skip_images:
            Image.fromarray(np.full((4, 4), 7, np.uint8)).save(
                root / IMAGES_SUBDIR / row["filename"])
    return root


def basic_raw(root: Path) -> tuple[list[dict], list[dict]]:
    """Six studies: two normal, two abnormal, one `No Indexing` (two images), one more normal."""
    reports = [report(1, "normal"), report(2, "Cardiomegaly/mild"),
               report(3, "normal", findings=None, impression="Normal chest."),
               report(5, "No Indexing"),
               report(7, "Opacity/lung/base/right;Pleural Effusion/left "),
               report(8, "Normal")]
    projections = [image(1, 1), image(1, 2, "Lateral"), image(2, 3), image(3, 4),
                   image(5, 5), image(5, 6, "Lateral"), image(7, 7), image(8, 8, "Lateral")]
    return reports, projections


def read_out(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    studies = pd.read_csv(out / "studies.csv", keep_default_na=False,
                          dtype={f: str for f in TEXT_FIELDS})
    images = pd.read_csv(out / "images.csv", keep_default_na=False)
    return studies, images, json.loads((out / "counts.json").read_text())


# --- the label rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("mesh, expected", [
    ("normal", 0.0), (" Normal ", 0.0), ("NORMAL", 0.0), ("Cardiomegaly/mild", 1.0),
    ("Opacity/lung/base/right;Pleural Effusion/left ", 1.0),
    ("Calcified Granuloma/lung/upper lobe/right", 1.0),
])
def test_label_of_normal_and_abnormal(mesh, expected):
    assert label_of(mesh, keep_unindexed=False) == expected
    assert label_of(mesh, keep_unindexed=True) == expected


@pytest.mark.parametrize("mesh", ["No Indexing", " no indexing ", "NO INDEXING"])
def test_label_of_no_indexing(mesh):
    assert math.isnan(label_of(mesh, keep_unindexed=False))
    assert label_of(mesh, keep_unindexed=True) == 1.0


@pytest.mark.parametrize("mesh", [np.nan, None, "", "   "])
@pytest.mark.parametrize("keep", [False, True])
def test_label_of_missing_mesh_is_unlabelled(mesh, keep):
    assert math.isnan(label_of(mesh, keep_unindexed=keep))


# --- No Indexing: dropped by default, kept as abnormal on request -----------------------------

def test_prepare_drops_no_indexing_by_default(tmp_path, params):
    raw = write_raw(tmp_path / "raw", *basic_raw(tmp_path))
    rep = prepare(params, raw=raw, out=tmp_path / "prepared")
    studies, images, on_disk = read_out(tmp_path / "prepared")

    assert sorted(studies["uid"]) == [1, 2, 3, 7, 8]
    assert 5 not in set(images["uid"])
    assert sorted(images["uid"]) == [1, 1, 2, 3, 7, 8]
    assert dict(zip(studies["uid"], studies["label"])) == {1: 0, 2: 1, 3: 0, 7: 1, 8: 0}
    assert rep == on_disk
    assert rep["dropped"] == {"studies_unindexed": 1, "studies_without_mesh": 0,
                              "images_of_dropped_studies": 2}
    assert rep["studies"] == 5 and rep["images"] == 6
    assert rep["abnormal_fraction"] == pytest.approx(2 / 5, abs=1e-4)
    # trailing spaces of MeSH terms are removed in the contract
    assert studies.loc[studies["uid"] == 7, "mesh"].item() == \
        "Opacity/lung/base/right;Pleural Effusion/left"


def test_prepare_keeps_no_indexing_as_abnormal_on_request(tmp_path, params):
    params.data.keep_unindexed = True
    raw = write_raw(tmp_path / "raw", *basic_raw(tmp_path))
    rep = prepare(params, raw=raw, out=tmp_path / "prepared")
    studies, images, _ = read_out(tmp_path / "prepared")

    assert sorted(studies["uid"]) == [1, 2, 3, 5, 7, 8]
    assert studies.loc[studies["uid"] == 5, "label"].item() == 1
    assert studies.loc[studies["uid"] == 5, "n_images"].item() == 2
    assert sorted(images.loc[images["uid"] == 5, "label"]) == [1, 1]
    assert rep["dropped"] == {"studies_unindexed": 0, "studies_without_mesh": 0,
                              "images_of_dropped_studies": 0}
    assert rep["studies"] == 6 and rep["images"] == 8


def test_prepare_drops_studies_without_mesh(tmp_path, params):
    reports, projections = basic_raw(tmp_path)
    reports[0]["MeSH"] = None  # uid 1, two images
    raw = write_raw(tmp_path / "raw", reports, projections)
    rep = prepare(params, raw=raw, out=tmp_path / "prepared")
    studies, images, _ = read_out(tmp_path / "prepared")
    assert 1 not in set(studies["uid"]) and 1 not in set(images["uid"])
    assert rep["dropped"] == {"studies_unindexed": 1, "studies_without_mesh": 1,
                              "images_of_dropped_studies": 4}


# --- text -------------------------------------------------------------------------------------

FIELDS = ["indication", "findings", "impression"]


@pytest.mark.parametrize("row, expected", [
    ({"indication": "Cough.", "findings": "Clear.", "impression": "Normal."},
     "Cough. Clear. Normal."),
    ({"indication": np.nan, "findings": "Clear.", "impression": "Normal."}, "Clear. Normal."),
    ({"indication": None, "findings": np.nan, "impression": " Normal. "}, "Normal."),
    ({"indication": "", "findings": "   ", "impression": "Normal."}, "Normal."),
    ({"indication": "Cough.", "findings": "\t\n", "impression": np.nan}, "Cough."),
    ({"indication": np.nan, "findings": "", "impression": None}, ""),
])
def test_join_text_leaves_out_missing_fields(row, expected):
    text = join_text(pd.Series(row, dtype=object), FIELDS)
    assert text == expected
    assert "nan" not in text.lower() and "none" not in text.lower()


def test_join_text_follows_field_order():
    row = pd.Series({"indication": "A.", "findings": "B.", "impression": "C."})
    assert join_text(row, ["impression", "indication"]) == "C. A."
    assert join_text(row, ["findings"]) == "B."


def test_prepare_text_default_fields(tmp_path, params):
    """The default text inputs (findings+impression, indication): one column per field, each
    as the report has it (stripped, "" when missing); the text of an input is its fields
    joined, as embed_text joins them."""
    assert params.text.inputs == ["findings+impression", "indication"]
    raw = write_raw(tmp_path / "raw", *basic_raw(tmp_path))
    prepare(params, raw=raw, out=tmp_path / "prepared")
    studies, _, _ = read_out(tmp_path / "prepared")
    assert list(studies.columns) == STUDY_COLUMNS + ["indication", "findings", "impression"]
    by_uid = studies.set_index("uid")
    assert by_uid.loc[1, ["findings", "impression", "indication"]].tolist() == [
        "The lungs are clear.", "No acute disease.", "Cough."]
    assert by_uid.loc[3, "findings"] == ""  # missing: empty, no "nan"
    text = {uid: join_text(row, fields_of("findings+impression")) for uid, row in by_uid.iterrows()}
    assert text[1] == "The lungs are clear. No acute disease."
    assert text[3] == "Normal chest."  # findings missing: left out, no "nan"
    for field in ("indication", "findings", "impression"):
        assert not any("nan" in t.lower() for t in studies[field])


def test_prepare_text_fields_indication_only(tmp_path, params):
    params.text.inputs = ["indication"]
    reports, projections = basic_raw(tmp_path)
    reports[1]["indication"] = "  Shortness of breath. "
    reports[2]["indication"] = None
    raw = write_raw(tmp_path / "raw", reports, projections)
    rep = prepare(params, raw=raw, out=tmp_path / "prepared")
    studies, _, _ = read_out(tmp_path / "prepared")

    assert list(studies.columns) == STUDY_COLUMNS + ["indication"]  # no other report field
    text = dict(zip(studies["uid"], studies["indication"]))
    assert text == {1: "Cough.", 2: "Shortness of breath.", 3: "", 7: "Cough.", 8: "Cough."}
    assert "text_fields" not in rep
    assert rep["studies_with_empty_text"] == {"indication": 1}


def test_prepare_indication_only_needs_no_findings_column(tmp_path, params):
    """Only the columns that are read are required."""
    params.text.inputs = ["indication"]
    reports, projections = basic_raw(tmp_path)
    reports = [{k: v for k, v in r.items() if k not in ("findings", "impression")} for r in reports]
    raw = write_raw(tmp_path / "raw", reports, projections)
    prepare(params, raw=raw, out=tmp_path / "prepared")
    studies, _, _ = read_out(tmp_path / "prepared")
    assert list(studies["indication"]) == ["Cough."] * 5


def test_prepare_needs_the_columns_of_every_input(tmp_path, params):
    """An input's field absent from the reports CSV is named, as any missing column."""
    reports, projections = basic_raw(tmp_path)
    reports = [{k: v for k, v in r.items() if k != "indication"} for r in reports]
    raw = write_raw(tmp_path / "raw", reports, projections)
    with pytest.raises(PipelineError, match=r"missing column.*indication"):
        prepare(params, raw=raw, out=tmp_path / "prepared")


# --- the split --------------------------------------------------------------------------------

def _population(n=400, p_abnormal=0.64, seed=3):
    rng = np.random.default_rng(seed)
    uids = rng.choice(np.arange(1, 3 * n), size=n, replace=False)
    labels = (rng.random(n) < p_abnormal).astype(int)
    return uids, labels


def test_split_each_uid_one_split_with_the_fractions():
    uids, labels = _population()
    split = split_studies(uids, labels, test=0.2, val=0.15, seed=42)
    assert len(split) == len(uids)
    assert set(split) == {"train", "val", "test"}  # no None: every uid has a split
    n = len(uids)
    assert (split == "test").sum() == pytest.approx(0.2 * n, abs=2)
    assert (split == "val").sum() == pytest.approx(0.15 * 0.8 * n, abs=2)


def test_split_is_stratified_by_label():
    uids, labels = _population()
    split = split_studies(uids, labels, test=0.2, val=0.15, seed=42)
    overall = labels.mean()
    for s in ("train", "val", "test"):
        assert labels[split == s].mean() == pytest.approx(overall, abs=0.02), s


def test_split_reproducible_for_a_seed_and_different_for_another():
    uids, labels = _population()
    a = split_studies(uids, labels, 0.2, 0.15, seed=42)
    b = split_studies(uids, labels, 0.2, 0.15, seed=42)
    c = split_studies(uids, labels, 0.2, 0.15, seed=43)
    assert list(a) == list(b)
    assert list(a) != list(c)
    assert (a != c).sum() > 0.2 * len(uids)


def test_split_does_not_depend_on_row_order():
    uids, labels = _population()
    split = split_studies(uids, labels, 0.2, 0.15, seed=42)
    perm = np.random.default_rng(0).permutation(len(uids))
    shuffled = split_studies(uids[perm], labels[perm], 0.2, 0.15, seed=42)
    assert dict(zip(uids[perm], shuffled)) == dict(zip(uids, split))


def test_prepare_split_does_not_depend_on_csv_row_order(tmp_path, params):
    reports = [report(u, "normal" if u % 3 else "Cardiomegaly") for u in range(1, 41)]
    projections = [image(u, u) for u in range(1, 41)]
    write_raw(tmp_path / "a", reports, projections)
    write_raw(tmp_path / "b", reports[::-1], projections[::-1])
    prepare(params, raw=tmp_path / "a", out=tmp_path / "pa")
    prepare(params, raw=tmp_path / "b", out=tmp_path / "pb")
    sa, ia, _ = read_out(tmp_path / "pa")
    sb, ib, _ = read_out(tmp_path / "pb")
    pd.testing.assert_frame_equal(sa, sb)
    pd.testing.assert_frame_equal(ia, ib)


def test_prepared_demo_split_is_by_study(prepared):
    studies = pd.read_csv("data/prepared/studies.csv", keep_default_na=False)
    images = pd.read_csv("data/prepared/images.csv", keep_default_na=False)
    assert studies["uid"].is_unique
    assert set(studies["split"]) == {"train", "val", "test"}
    assert images.groupby("uid")["split"].nunique().max() == 1
    merged = images.merge(studies[["uid", "split", "label"]], on="uid", how="left",
                          suffixes=("", "_study"), validate="many_to_one")
    assert merged["split_study"].notna().all()  # every image belongs to a kept study
    assert (merged["split"] == merged["split_study"]).all()
    assert (merged["label"] == merged["label_study"]).all()
    assert (studies["n_images"] == studies["uid"].map(images.groupby("uid").size())).all()


# --- validation errors ------------------------------------------------------------------------

def _break(kind, reports, projections):
    """Damage a good raw folder in one way; returns (reports, projections, skip_images)."""
    skip = ()
    if kind == "missing column":
        reports = [{k: v for k, v in r.items() if k != "MeSH"} for r in reports]
    elif kind == "uid not integer":
        reports[2]["uid"] = "3a"
    elif kind == "uid not whole":
        reports[2]["uid"] = 3.5
    elif kind == "duplicate uid":
        reports[3]["uid"] = 2
        projections = [p for p in projections if p["uid"] != 5]
    elif kind == "image file missing":
        skip = (projections[3]["filename"],)
    elif kind == "study without image":
        projections = [p for p in projections if p["uid"] != 3]
    elif kind == "uid without report":
        projections.append(image(99, 99))
    elif kind == "duplicate filename":
        projections.append({**projections[0], "projection": "Lateral"})
    elif kind == "bad projection":
        projections[1]["projection"] = "Oblique"
    elif kind == "empty filename":
        projections[3]["filename"] = None
        skip = (None,)
    elif kind == "no labelled study":
        reports = [{**r, "MeSH": "No Indexing"} for r in reports]
    return reports, projections, skip


# kind -> (file named in the message, regexes the message must match)
ERRORS = {
    "missing column": (REPORTS_CSV, [r"missing column", r"MeSH"]),
    "uid not integer": (REPORTS_CSV, [r"uid", r"integer", r"\blines? 4\b", r"3a"]),
    "uid not whole": (REPORTS_CSV, [r"uid", r"integer", r"\blines? 4\b"]),
    "duplicate uid": (REPORTS_CSV, [r"duplicate", r"\b2\b", r"\blines? 3, 5\b"]),
    "image file missing": (PROJECTIONS_CSV,
                           [r"missing", r"3_IM-0004-1001\.dcm\.png", r"\blines? 5\b"]),
    "study without image": (REPORTS_CSV, [r"no image", r"\blines? 4\b"]),
    "uid without report": (PROJECTIONS_CSV, [r"no report", r"\blines? 10\b"]),
    "duplicate filename": (PROJECTIONS_CSV, [r"filename", r"\blines? 2, 10\b"]),
    "bad projection": (PROJECTIONS_CSV, [r"projection", r"\blines? 3\b"]),
    "empty filename": (PROJECTIONS_CSV, [r"filename is empty", r"\blines? 5\b"]),
    "no labelled study": (REPORTS_CSV, [r"none of its 6 studies has a label", r"No Indexing"]),
}


@pytest.mark.parametrize("kind", list(ERRORS))
def test_prepare_validation_errors_name_file_and_problem(tmp_path, params, kind):
    reports, projections, skip = _break(kind, *basic_raw(tmp_path))
    raw = write_raw(tmp_path / "raw", reports, projections, skip_images=skip)
    with pytest.raises(PipelineError) as err:
        prepare(params, raw=raw, out=tmp_path / "prepared")
    message = str(err.value)
    name, patterns = ERRORS[kind]
    assert name in message
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    assert not (tmp_path / "prepared").exists()  # nothing half-written


@pytest.mark.parametrize("uid", ["inf", "1e30", "nan"])
def test_prepare_uid_not_a_finite_int64(tmp_path, params, uid):
    """Non-finite or out-of-range uids are a PipelineError naming the line, not a pandas error
    or a silently wrapped number."""
    reports, projections, _ = _break(None, *basic_raw(tmp_path))
    reports[2]["uid"] = uid
    raw = write_raw(tmp_path / "raw", reports, projections)
    with pytest.raises(PipelineError, match=r"uid.*\blines? 4\b"):
        prepare(params, raw=raw, out=tmp_path / "prepared")


@pytest.mark.parametrize("damage", ["latin-1", "empty", "ragged"])
def test_prepare_unreadable_csv_names_the_file(tmp_path, params, damage):
    raw = write_raw(tmp_path / "raw", *basic_raw(tmp_path))
    path = raw / (PROJECTIONS_CSV if damage == "empty" else REPORTS_CSV)
    if damage == "latin-1":  # e.g. re-saved by a spreadsheet program
        path.write_bytes(path.read_text().replace("clear", "cl\u00e9ar").encode("latin-1"))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_text(path.read_text() + "9,normal,x,x,x,x,x,x,one too many\n")
    with pytest.raises(PipelineError,
                       match=re.escape(str(path)) + r": cannot be read as CSV .*UTF-8"):
        prepare(params, raw=raw, out=tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_prepare_missing_csv(tmp_path, params):
    with pytest.raises(PipelineError, match=re.escape(REPORTS_CSV)):
        prepare(params, raw=tmp_path / "nothing", out=tmp_path / "prepared")


def test_prepare_error_keeps_previous_output(tmp_path, params):
    raw = write_raw(tmp_path / "raw", *basic_raw(tmp_path))
    prepare(params, raw=raw, out=tmp_path / "prepared")
    before = {p.name: p.read_bytes() for p in (tmp_path / "prepared").iterdir()}
    reports, projections, _ = _break("uid without report", *basic_raw(tmp_path))
    write_raw(raw, reports, projections)
    with pytest.raises(PipelineError):
        prepare(params, raw=raw, out=tmp_path / "prepared")
    assert {p.name: p.read_bytes() for p in (tmp_path / "prepared").iterdir()} == before


# --- the data report --------------------------------------------------------------------------

def test_prepared_demo_report_is_consistent(prepared):
    rep = json.loads(Path("data/prepared/counts.json").read_text())
    studies = pd.read_csv("data/prepared/studies.csv", keep_default_na=False)
    images = pd.read_csv("data/prepared/images.csv", keep_default_na=False)
    raw_reports = pd.read_csv("data/raw/indiana_reports.csv")
    raw_images = pd.read_csv("data/raw/indiana_projections.csv")

    assert rep["studies"] == len(studies) == sum(v["studies"] for v in rep["by_split"].values())
    assert rep["images"] == len(images) == sum(v["images"] for v in rep["by_split"].values())
    assert rep["images"] == sum(rep["by_view"].values())
    assert rep["by_view"] == images["view"].value_counts().to_dict()
    for s, v in rep["by_split"].items():
        assert v["studies"] == (studies["split"] == s).sum()
        assert v["images"] == (images["split"] == s).sum()
        assert v["abnormal_studies"] == ((studies["split"] == s) & (studies["label"] == 1)).sum()
    assert rep["abnormal_fraction"] == pytest.approx(studies["label"].mean(), abs=1e-4)
    unindexed = (raw_reports["MeSH"].str.strip().str.lower() == "no indexing").sum()
    assert rep["dropped"]["studies_unindexed"] == unindexed
    assert rep["studies"] + sum(v for k, v in rep["dropped"].items() if k.startswith("studies")) \
        == len(raw_reports)
    assert rep["images"] + rep["dropped"]["images_of_dropped_studies"] == len(raw_images)
    fields = {i: fields_of(i) for i in prepared.text.inputs}
    assert rep["studies_with_empty_text"] == {
        i: (studies.apply(join_text, axis=1, fields=f) == "").sum() for i, f in fields.items()}
    assert "text_fields" not in rep


# --- a split too small to answer the question -------------------------------------------------

def _many(n_normal: int, n_abnormal: int) -> tuple[list[dict], list[dict]]:
    reports = [report(u, "normal") for u in range(1, n_normal + 1)] + [
        report(u, "Cardiomegaly/mild") for u in range(n_normal + 1, n_normal + n_abnormal + 1)]
    return reports, [image(r["uid"], r["uid"]) for r in reports]


def test_prepare_refuses_a_split_too_small_before_any_training(tmp_path, params):
    # 5 studies (as a first try with real data might have): a 3 / 1 / 1 split
    params.split = replace(params.split, min_studies=10, min_per_label=2)
    raw = write_raw(tmp_path / "raw", *_many(2, 3))
    with pytest.raises(PipelineError) as err:
        prepare(params, raw=raw, out=tmp_path / "prepared")
    message = str(err.value)
    assert re.search(r"the (train|val|test) split has \d+ studies \(\d+ normal, \d+ abnormal\)",
                     message), message
    assert "split.min_studies=10" in message and "split.min_per_label=2" in message
    assert not (tmp_path / "prepared").exists()  # nothing half-written


@pytest.mark.parametrize("normal, abnormal, refused", [
    (40, 60, None),          # 100 studies: test 20, val 12, train 68, both labels everywhere
    (4, 96, "test"),         # 4 normal studies: test gets 1 normal study (< 2 of each label)
    (30, 30, "val"),         # val holds 4 + 4 = 8 studies (< 10)
])
def test_prepare_split_minimum_names_the_split_and_its_counts(tmp_path, params, normal, abnormal,
                                                               refused):
    params.split = replace(params.split, min_studies=10, min_per_label=2)
    raw = write_raw(tmp_path / "raw", *_many(normal, abnormal))
    if refused is None:
        rep = prepare(params, raw=raw, out=tmp_path / "prepared")
        assert rep["by_split"]["test"]["studies"] == 20
        return
    with pytest.raises(PipelineError, match=f"the {refused} split has") as err:
        prepare(params, raw=raw, out=tmp_path / "prepared")
    key = "split.test" if refused == "test" else "split.val"
    assert f"Raise {key}=" in str(err.value)


def test_split_minimum_is_checked_as_a_parameter(params):
    from cxrfusion.params import as_dict, validate

    for bad in (-1, 2.5, "10"):
        p = as_dict(params)
        p["split"]["min_studies"] = bad
        with pytest.raises(PipelineError, match="split.min_studies"):
            validate(p)
