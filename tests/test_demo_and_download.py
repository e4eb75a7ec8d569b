"""Stage `download` (demo, local, kaggle, openi sources), the synthetic demo data and params."""
from __future__ import annotations

import io
import os
import tarfile
import traceback
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cxrfusion import params as params_mod
from cxrfusion.common import PipelineError
from cxrfusion.formats import IMAGES_SUBDIR, PROJECTIONS_CSV, REPORTS_CSV
from cxrfusion.sources import demo as demo_data
from cxrfusion.sources import kaggle
from cxrfusion.sources.openi import parse_openi_report, safe_extract
from cxrfusion.studies import join_text, label_of
from stages.download import download
from stages.prepare import prepare

REPORT_COLUMNS = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
                  "impression"]
PROJECTION_COLUMNS = ["uid", "filename", "projection"]



@pytest.fixture
def params(params) -> dict:
    """Downloads of a few hand-made studies go through prepare: no minimum split size."""
    params.split = replace(params.split, min_studies=0, min_per_label=0)
    return params

def snapshot(folder: Path) -> dict:
    """Every file below `folder` (following links) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# --- the synthetic demo -----------------------------------------------------------------------

def test_demo_is_deterministic_for_a_seed(tmp_path):
    demo_data.generate(tmp_path / "a", 25, 24, 0.05, 7)
    demo_data.generate(tmp_path / "b", 25, 24, 0.05, 7)
    demo_data.generate(tmp_path / "c", 25, 24, 0.05, 8)
    a, b, c = (snapshot(tmp_path / x) for x in "abc")
    assert len(a) > 25 + 3  # the CSVs, SYNTHETIC.txt and at least one PNG per study
    assert a == b
    assert a[REPORTS_CSV] != c[REPORTS_CSV]
    assert a[PROJECTIONS_CSV] != c[PROJECTIONS_CSV]
    pngs = [k for k in a if k.endswith(".png")]
    shared = [k for k in pngs if k in c]
    assert all(a[k] != c[k] for k in shared)  # same name by chance: still other pixels


@pytest.fixture(scope="module")
def demo300(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo300")
    demo_data.generate(out, 300, 16, 0.05, 0)
    return out


def test_demo_schema_is_the_real_one(demo300):
    reports = pd.read_csv(demo300 / REPORTS_CSV)
    projections = pd.read_csv(demo300 / PROJECTIONS_CSV)
    assert list(reports.columns) == REPORT_COLUMNS
    assert list(projections.columns) == PROJECTION_COLUMNS
    assert len(reports) == 300 and reports["uid"].is_unique
    assert reports["uid"].dtype.kind == "i" and projections["uid"].dtype.kind == "i"
    assert reports["uid"].max() > 300  # gaps in the uids, as real
    assert projections["filename"].is_unique
    assert set(projections["uid"]) == set(reports["uid"])
    for name in projections["filename"]:
        assert (demo300 / IMAGES_SUBDIR / name).is_file()


def test_demo_images_per_study_and_views(demo300):
    projections = pd.read_csv(demo300 / PROJECTIONS_CSV)
    per_study = projections.groupby("uid").size()
    assert per_study.min() >= 1 and per_study.max() <= 5
    assert per_study.mode().item() == 2
    assert set(projections["projection"]) == {"Frontal", "Lateral"}


def test_demo_labels_and_quirks(demo300):
    reports = pd.read_csv(demo300 / REPORTS_CSV)
    mesh = reports["MeSH"]
    assert (mesh == "No Indexing").sum() >= 1
    labels = mesh.map(lambda m: label_of(m, keep_unindexed=False)).dropna()
    assert 0.55 <= labels.mean() <= 0.75
    text = reports["findings"].fillna("") + " " + reports["impression"].fillna("")
    assert text.str.contains("XXXX").any()
    assert reports["findings"].isna().sum() >= 10  # empty findings occur (13 % in the real data)


def test_demo_is_marked_synthetic(demo300):
    assert "SYNTHETIC" in (demo300 / "SYNTHETIC.txt").read_text()
    png = next((demo300 / IMAGES_SUBDIR).glob("*.png"))
    with Image.open(png) as img:
        assert "SYNTHETIC" in img.text["Description"]
        assert img.mode == "L" and img.size == (16, 16)


def test_download_demo_writes_the_layout(workdir, params):
    params.demo.studies = 12
    download(params)
    raw = Path("data/raw")
    assert (raw / REPORTS_CSV).is_file() and (raw / PROJECTIONS_CSV).is_file()
    assert len(pd.read_csv(raw / REPORTS_CSV)) == 12
    assert (raw / "SYNTHETIC.txt").is_file()
    assert sorted(os.listdir("data")) == ["raw"]  # no temporary folder left behind


# --- local source -----------------------------------------------------------------------------

def kaggle_folder(root: Path, uids=(1, 2, 3)) -> Path:
    """A small folder in the Kaggle layout (labels alternate normal / abnormal)."""
    (root / IMAGES_SUBDIR).mkdir(parents=True)
    reports, projections = [], []
    for uid in uids:
        reports.append({"uid": uid, "MeSH": "normal" if uid % 2 else "Cardiomegaly/mild",
                        "Problems": "normal", "image": "Xray", "indication": "Cough.",
                        "comparison": None, "findings": "Clear.", "impression": "Normal."})
        for view in ("Frontal", "Lateral"):
            name = f"{uid}_IM-0001-{view}.dcm.png"
            Image.fromarray(np.full((8, 8), uid, np.uint8)).save(root / IMAGES_SUBDIR / name)
            projections.append({"uid": uid, "filename": name, "projection": view})
    pd.DataFrame(reports).to_csv(root / REPORTS_CSV, index=False)
    pd.DataFrame(projections).to_csv(root / PROJECTIONS_CSV, index=False)
    return root


def test_download_local_links_images_and_copies_csvs(workdir, params):
    src = kaggle_folder(workdir / "kaggle")
    params.data = replace(params.data, source="local", local_dir=str(src))
    download(params)
    raw = Path("data/raw")
    assert (raw / "images").is_symlink()
    assert (raw / "images").resolve() == (src / "images").resolve()
    for name in (REPORTS_CSV, PROJECTIONS_CSV):
        assert (raw / name).is_file() and not (raw / name).is_symlink()
        assert (raw / name).read_bytes() == (src / name).read_bytes()
    rep = prepare(params)
    assert rep["studies"] == 3 and rep["images"] == 6


def test_download_again_keeps_linked_images(workdir, params):
    """Replacing a data/raw that links to the user's images must not delete those images."""
    src = kaggle_folder(workdir / "kaggle")
    before = snapshot(src)
    params.data = replace(params.data, source="local", local_dir=str(src))
    download(params)
    params.data.source = "demo"
    params.demo.studies = 5
    download(params)
    assert not Path("data/raw/images").is_symlink()
    assert snapshot(src) == before


def test_download_local_without_layout(workdir, params):
    src = workdir / "not_kaggle"
    src.mkdir()
    (src / REPORTS_CSV).write_text("uid,MeSH\n1,normal\n")
    params.data = replace(params.data, source="local", local_dir=str(src))
    with pytest.raises(PipelineError) as err:
        download(params)
    message = str(err.value)
    assert str(src) in message
    assert PROJECTIONS_CSV in message and "images" in message
    assert "missing" in message
    assert not Path("data/raw").exists()


def test_download_local_images_not_in_images_normalized(workdir, params):
    """images/ without images/images_normalized/ is not the Kaggle layout: download must say
    so, instead of prepare later blaming an incomplete download."""
    src = kaggle_folder(workdir / "kaggle")
    for png in (src / IMAGES_SUBDIR).iterdir():
        png.rename(src / "images" / png.name)
    (src / IMAGES_SUBDIR).rmdir()
    params.data = replace(params.data, source="local", local_dir=str(src))
    with pytest.raises(PipelineError, match="images_normalized"):
        download(params)
    assert not Path("data/raw").exists()


def test_download_local_dir_not_a_folder(workdir, params):
    params.data = replace(params.data, source="local", local_dir=str(workdir / "nowhere"))
    with pytest.raises(PipelineError, match="data.local_dir"):
        download(params)


def test_failed_download_keeps_previous_raw(workdir, params, monkeypatch):
    params.demo.studies = 8
    download(params)
    before = snapshot(Path("data/raw"))
    assert len(before) > 8

    def broken(out, *args, **kwargs):
        (out / IMAGES_SUBDIR).mkdir(parents=True)
        (out / REPORTS_CSV).write_text("uid,MeSH\n1,half written\n")
        (out / IMAGES_SUBDIR / "x.png").write_bytes(b"partial")
        raise RuntimeError("connection reset")

    monkeypatch.setattr(demo_data, "generate", broken)
    with pytest.raises(RuntimeError, match="connection reset"):
        download(params)
    assert snapshot(Path("data/raw")) == before
    assert sorted(os.listdir("data")) == ["raw"]

    # no Kaggle layout there
    params.data = replace(params.data, source="local", local_dir=str(workdir))
    with pytest.raises(PipelineError):
        download(params)
    assert snapshot(Path("data/raw")) == before
    assert sorted(os.listdir("data")) == ["raw"]


# --- kaggle source ----------------------------------------------------------------------------

SECRET = "0123456789abcdef-not-a-real-key"


def test_kaggle_without_network_explains_what_to_do(workdir, params, monkeypatch):
    import kagglehub

    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)

    def offline(handle, *args, **kwargs):
        raise ConnectionError(f"GET https://www.kaggle.com/api/v1/{handle} "
                              f"auth=someone:{os.environ['KAGGLE_KEY']}: network unreachable")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    params.data.source = "kaggle"
    with pytest.raises(PipelineError) as err:
        download(params)
    message = str(err.value)
    assert "kaggle.json" in message
    assert "KAGGLE_USERNAME" in message
    assert "data.source=local" in message
    assert kaggle.KAGGLE_DATASET in message
    assert SECRET not in message
    assert SECRET not in "".join(traceback.format_exception(err.value))
    assert not Path("data/raw").exists()


def test_kaggle_links_the_downloaded_folder(workdir, params, monkeypatch):
    import kagglehub

    src = kaggle_folder(workdir / "kaggle_cache")
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, *a, **k: str(src))
    params.data.source = "kaggle"
    download(params)
    assert Path("data/raw/images").is_symlink()
    assert Path("data/raw/images").resolve() == (src / "images").resolve()
    assert Path("data/raw", REPORTS_CSV).read_bytes() == (src / REPORTS_CSV).read_bytes()


# --- openi source -----------------------------------------------------------------------------

def openi_xml(uid: int, majors: list[str], sections: dict, images: list[str]) -> bytes:
    """An Open-i report in the shape of ecgen-radiology/<n>.xml."""
    root = ET.Element("eCitation")
    ET.SubElement(root, "uId", id=f"CXR{uid}")
    mesh = ET.SubElement(root, "MeSH")
    for term in majors:
        ET.SubElement(mesh, "major").text = term
    ET.SubElement(mesh, "minor").text = "minor term, not part of MeSH"
    abstract = ET.SubElement(ET.SubElement(ET.SubElement(root, "MedlineCitation"), "Article"),
                             "Abstract")
    for label, text in sections.items():
        node = ET.SubElement(abstract, "AbstractText", Label=label)
        node.text = text
    for image_id in images:
        parent = ET.SubElement(root, "parentImage", id=image_id)
        ET.SubElement(parent, "figureId").text = "F1"
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


OPENI_REPORTS = [
    (1, ["normal"], {"COMPARISON": "None.", "INDICATION": "Positive TB test",
                     "FINDINGS": "The cardiac silhouette and mediastinum size are within "
                                 "normal limits.",
                     "IMPRESSION": "Normal chest x-XXXX."},
     ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
    (2, ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"],
     {"COMPARISON": None, "INDICATION": "Preop bariatric surgery.", "FINDINGS": None,
      "IMPRESSION": "Borderline cardiomegaly."},
     ["CXR2_IM-0652-1001"]),
    (10, ["Opacity/lung/base/left"],
     {"INDICATION": "Cough.", "FINDINGS": "Left basilar opacity.", "IMPRESSION": "Pneumonia."},
     ["CXR10_IM-0002-1001", "CXR10_IM-0002-2001"]),
]


def openi_archives(folder: Path, reports=OPENI_REPORTS) -> str:
    """NLMCXR_reports.tgz and NLMCXR_png.tgz in `folder`; returns its file:// URL."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "NLMCXR_reports.tgz", "w:gz") as tar:
        for uid, majors, sections, images in reports:
            add_bytes(tar, f"ecgen-radiology/{uid}.xml", openi_xml(uid, majors, sections, images))
    with tarfile.open(folder / "NLMCXR_png.tgz", "w:gz") as tar:
        for k, (_, _, _, images) in enumerate(reports):
            for image_id in images:
                add_bytes(tar, f"{image_id}.png", png_bytes(10 * k))
    return folder.as_uri()


def test_parse_openi_report(tmp_path):
    path = tmp_path / "2.xml"
    path.write_bytes(openi_xml(*OPENI_REPORTS[1]))
    row, images = parse_openi_report(path)
    assert row == {"uid": 2, "MeSH": "Cardiomegaly/borderline;Pulmonary Artery/enlarged",
                   "Problems": "Cardiomegaly;Pulmonary Artery", "image": None,
                   "indication": "Preop bariatric surgery.", "comparison": None,
                   "findings": None, "impression": "Borderline cardiomegaly."}
    assert images == ["CXR2_IM-0652-1001"]


def test_parse_openi_report_refuses_other_xml(tmp_path):
    path = tmp_path / "other.xml"
    path.write_text("<root><item/></root>")
    with pytest.raises(PipelineError, match="other.xml"):
        parse_openi_report(path)


def test_download_openi_from_archives(workdir, params):
    params.data = replace(params.data, source="openi", openi_url=openi_archives(workdir / "server"))
    download(params)
    raw = Path("data/raw")
    reports = pd.read_csv(raw / REPORTS_CSV)
    projections = pd.read_csv(raw / PROJECTIONS_CSV)

    assert list(reports.columns) == REPORT_COLUMNS
    assert list(projections.columns) == PROJECTION_COLUMNS
    assert reports["uid"].tolist() == [1, 2, 10] and reports["uid"].dtype.kind == "i"
    by_uid = reports.set_index("uid")
    assert by_uid.loc[1, "MeSH"] == "normal"
    assert by_uid.loc[2, "MeSH"] == "Cardiomegaly/borderline;Pulmonary Artery/enlarged"
    assert by_uid.loc[1, "findings"].startswith("The cardiac silhouette")
    assert by_uid.loc[1, "impression"] == "Normal chest x-XXXX."
    assert by_uid.loc[1, "indication"] == "Positive TB test"
    assert pd.isna(by_uid.loc[2, "findings"])
    assert by_uid.loc[10, "impression"] == "Pneumonia."

    assert sorted(projections["filename"]) == sorted(
        f"{i}.png" for _, _, _, ids in OPENI_REPORTS for i in ids)
    assert set(projections["projection"]) == {"Unknown"}
    assert projections.groupby("uid").size().to_dict() == {1: 2, 2: 1, 10: 2}
    for name in projections["filename"]:
        assert (raw / IMAGES_SUBDIR / name).is_file()
    assert not (raw / "_extract").exists()
    assert (Path("data/downloads") / "NLMCXR_png.tgz").is_file()  # kept for a re-run

    rep = prepare(params)
    studies = pd.read_csv("data/prepared/studies.csv", keep_default_na=False)
    assert rep["studies"] == 3 and rep["images"] == 5
    assert rep["by_view"] == {"Unknown": 5}
    assert dict(zip(studies["uid"], studies["label"])) == {1: 0, 2: 1, 10: 1}
    by_uid = studies.set_index("uid")
    assert by_uid.loc[2, ["findings", "impression"]].tolist() == ["", "Borderline cardiomegaly."]
    assert join_text(by_uid.loc[2], ["findings", "impression"]) == "Borderline cardiomegaly."


def test_download_openi_report_without_images_is_not_fatal(workdir, params):
    """Open-i holds 3,955 reports but Kaggle only the 3,851 that have images: a report whose
    images are absent must not make the openi source unusable (prepare refuses imageless
    studies)."""
    reports = OPENI_REPORTS + [
        (4, ["normal"], {"FINDINGS": "Clear lungs.", "IMPRESSION": "Normal."}, []),
    ]
    params.data = replace(params.data, source="openi",
                          openi_url=openi_archives(workdir / "server", reports))
    download(params)
    rep = prepare(params)
    studies = pd.read_csv("data/prepared/studies.csv", keep_default_na=False)
    assert 4 not in set(studies["uid"])
    assert rep["images"] == 5


def test_download_openi_unreachable(workdir, params):
    params.data = replace(params.data, source="openi", openi_url=(workdir / "no_server").as_uri())
    with pytest.raises(PipelineError) as err:
        download(params)
    assert "NLMCXR_" in str(err.value) and "data/downloads" in str(err.value)
    assert not Path("data/raw").exists()


# --- safe_extract -----------------------------------------------------------------------------

def _archive(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            add_bytes(tar, name, data)
    return path


def test_safe_extract_extracts_a_good_archive(tmp_path):
    archive = _archive(tmp_path / "good.tgz", [("a/b.txt", b"hello"), ("c.txt", b"!")])
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "a" / "b.txt").read_bytes() == b"hello"
    assert (tmp_path / "dest" / "c.txt").read_bytes() == b"!"


@pytest.mark.parametrize("evil", ["../evil.txt", "a/../../evil.txt", "ABSOLUTE"])
def test_safe_extract_refuses_members_outside_the_target(tmp_path, evil):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = outside / "dest"
    name = str(outside / "evil.txt") if evil == "ABSOLUTE" else evil
    assert Path(name).is_absolute() == (evil == "ABSOLUTE")
    archive = _archive(tmp_path / "evil.tgz", [("ok.txt", b"fine"), (name, b"pwned")])
    with pytest.raises(PipelineError) as err:
        safe_extract(archive, dest)
    assert "evil.txt" in str(err.value) and "evil.tgz" in str(err.value)
    assert sorted(p.name for p in outside.iterdir()) == ["dest"]
    assert [str(p.relative_to(dest)) for p in dest.rglob("*")] == ["ok.txt"]
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_links(tmp_path):
    archive = tmp_path / "link.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("passwd")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(PipelineError, match="passwd"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest" / "passwd").is_symlink()


# --- parameters -------------------------------------------------------------------------------

def test_params_yaml_is_valid(params):
    assert params_mod.validate(params) is params
    root = Path(__file__).resolve().parents[1]
    assert params_mod.load(root / "params.yaml").data.source in params_mod.SOURCES


@pytest.mark.parametrize("name, value", [
    ("data.source", "ftp"), ("data.source", None),
    ("text.pooling", "max"), ("text.pooling", "CLS"),
    ("split.test", 0), ("split.test", 1.2), ("split.test", 1), ("split.val", -0.1),
    ("train.lr", 0), ("train.lr", -0.001),
    ("train.epochs", 0), ("train.epochs", 2.5), ("train.epochs", True),
    ("image.size", 16),
    ("text.inputs", []), ("text.inputs", ["findings+summary"]), ("text.inputs", "findings"),
    ("text.inputs", ["indication", "indication"]), ("text.inputs", ["findings+findings"]),
    ("text.max_length", 0), ("model.dropout", 1.0), ("evaluate.threshold", 1),
    ("evaluate.threshold", 0), ("evaluate.threshold", "median"), ("evaluate.specificity", 1),
    ("train.select", "best"),
    ("train.nproc", 0), ("text.nproc", 1.5), ("train.in_memory_gb", -1), ("train.workers", -1),
    ("train.workers", 2.5), ("explain.variant", "text"), ("explain.per_outcome", 0),
    ("explain.seed", "a"), ("train.seeds", -1), ("train.seeds", []), ("train.seeds", [0, 0]),
    ("explain.model_seed", -1), ("explain.text_input", ""),
    ("split.seed", 2.5), ("demo.seed", None),
    ("train.device", "gpu"), ("text.device", "cuda:x"), ("train.device", "CUDA"),
    ("train.amp", "false"), ("train.deterministic", 1), ("image.skip_bad", "no"),
    ("data.keep_unindexed", None), ("image.pretrained", ""), ("image.pretrained", 1),
    ("demo_encoder.hidden_size", 0), ("demo_encoder.heads", 3), ("demo_encoder.layers", 1.5),
])
def test_params_validation_names_the_parameter(params, name, value):
    section, key = name.split(".")
    setattr(getattr(params, section), key, value)
    with pytest.raises(PipelineError) as err:
        params_mod.validate(params)
    assert name in str(err.value)
    assert repr(value) in str(err.value)


@pytest.mark.parametrize("name, value", [("train.device", "cuda:1"), ("text.device", "cpu"),
                                         ("image.pretrained", "weights/b1.safetensors"),
                                         ("train.seeds", [2**32 - 1]), ("train.amp", False),
                                         ("train.seeds", [5]), ("evaluate.threshold", 0.5),
                                         ("evaluate.threshold", "max_f1"),
                                         ("text.inputs", ["impression", "comparison+indication"])])
def test_params_validation_accepts(params, name, value):
    section, key = name.split(".")
    setattr(getattr(params, section), key, value)
    if name == "text.inputs":  # the declared family names the inputs it compares
        params.compare = replace(params.compare, primary=f"fusion-image/{value[0]}",
                                 secondary=[], encoders=[])
    assert params_mod.validate(params) is params


def test_params_local_needs_a_folder(params):
    params.data.source = "local"
    with pytest.raises(PipelineError, match="data.local_dir"):
        params_mod.validate(params)
    params.data.local_dir = "/some/folder"
    params_mod.validate(params)


@pytest.mark.parametrize("name, value", [("image.size", "64"), ("model.dropout", "0.3"),
                                         ("evaluate.threshold", None)])
def test_params_wrong_type_is_a_pipeline_error(params, name, value):
    """`dvc exp run -S image.size=abc` gives a string: a PipelineError, not a TypeError."""
    section, key = name.split(".")
    setattr(getattr(params, section), key, value)
    with pytest.raises(PipelineError, match=name.replace(".", r"\.")):
        params_mod.validate(params)


def test_params_missing_parameter(params):
    p = params_mod.as_dict(params)  # a params.yaml without train.lr
    del p["train"]["lr"]
    with pytest.raises(PipelineError, match=r"train\.lr"):
        params_mod.validate(p)


def test_variants_table():
    """Each variant reads something; the pairs compare variants; Grad-CAM explains those that
    read the image (run_of's refusal of an unknown variant: tests/test_seeds_and_inputs.py)."""
    assert all(v.reads_image or v.reads_report for v in params_mod.VARIANTS.values())
    assert {name for pair in params_mod.PAIRS for name in pair} <= set(params_mod.VARIANTS)
    assert params_mod.EXPLAINED == ("fusion", "image", "shuffled")
    assert [v for v, d in params_mod.VARIANTS.items() if d.shuffled] == ["shuffled"]


def test_params_yaml_holds_exactly_the_described_options_at_their_defaults():
    """cxrfusion/params.py describes every option once; params.yaml (the demo) holds the same
    options at the described defaults, none more, none less."""
    root = Path(__file__).resolve().parents[1]
    with open(root / "params.yaml") as f:
        assert yaml.safe_load(f) == params_mod.defaults()
    described = params_mod.describe()
    for section, options in params_mod.defaults().items():
        assert f"{section}:" in described
        for key in options:
            assert f"\n  {key}: " in described, f"{section}.{key} has no description"
