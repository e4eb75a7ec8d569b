"""The Open-i originals of IU X-ray (NLMCXR_png.tgz, NLMCXR_reports.tgz), converted to the
Kaggle layout: one XML report per study becomes a row of indiana_reports.csv. Open-i has no view
field, so every image's view is `Unknown`."""
from __future__ import annotations

import logging
import shutil
import tarfile
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cxrfusion.common import PipelineError, atomic_path
from cxrfusion.formats import IMAGES_SUBDIR, PROJECTIONS_CSV, REPORTS_CSV

log = logging.getLogger(__name__)


OPENI_FILES = {"images": "NLMCXR_png.tgz", "reports": "NLMCXR_reports.tgz"}


DOWNLOADS = Path("data/downloads")  # kept between runs so a re-run does not download again


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract member by member, refusing any member that would land outside `dest`."""
    dest = dest.resolve()
    with tarfile.open(archive) as tar:
        for member in tar:
            target = (dest / member.name).resolve()
            if (not target.is_relative_to(dest) or member.issym() or member.islnk()
                    or member.isdev()):
                raise PipelineError(f"{archive}: refusing unsafe member {member.name!r} "
                                    "(it would write outside the target folder, or is a link "
                                    "or device); the archive is damaged or malicious.")
            tar.extract(member, dest, filter="data")


def parse_openi_report(path: Path) -> tuple[dict, list[str]]:
    """One Open-i XML report -> a row of indiana_reports.csv and its image ids."""
    root = ET.parse(path).getroot()
    uid_node = root.find(".//uId")
    if uid_node is None or not uid_node.get("id", "").startswith("CXR"):
        raise PipelineError(f"{path}: no <uId id='CXR...'> element; not an Open-i report.")
    majors = [m.text.strip() for m in root.findall(".//MeSH/major") if m.text]
    sections = {(a.get("Label") or "").lower(): (a.text or "").strip() or None
                for a in root.iter("AbstractText")}
    row = {"uid": int(uid_node.get("id")[3:]), "MeSH": ";".join(majors) or None,
           "Problems": ";".join(m.split("/")[0] for m in majors) or None, "image": None,
           **{k: sections.get(k) for k in ("indication", "comparison", "findings", "impression")}}
    return row, [img.get("id") for img in root.findall(".//parentImage")]


def from_openi(out: Path, base_url: str) -> None:
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    for name in OPENI_FILES.values():
        target = DOWNLOADS / name
        if target.exists():
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        log.info("downloading %s", url)
        try:
            with atomic_path(target) as tmp, urllib.request.urlopen(url) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f, length=1 << 20)
        except OSError as err:
            raise PipelineError(f"could not download {url}: {err}. Check the network, or put "
                                f"{name} in {DOWNLOADS}/ by hand and run again.") from None
    work = out / "_extract"
    for name in OPENI_FILES.values():
        log.info("extracting %s", name)
        safe_extract(DOWNLOADS / name, work)
    pngs = {p.stem: p for p in work.rglob("*.png")}
    (out / IMAGES_SUBDIR).mkdir(parents=True)
    reports, projections, imageless = [], [], 0
    for xml in tqdm(sorted(work.rglob("*.xml")), desc="reports", unit="report"):
        row, image_ids = parse_openi_report(xml)
        found = [i for i in dict.fromkeys(image_ids) if i in pngs]
        if not found:  # some Open-i reports come without images: no study to classify
            imageless += 1
            continue
        reports.append(row)
        for image_id in found:
            shutil.copyfile(pngs[image_id], out / IMAGES_SUBDIR / f"{image_id}.png")
            # Open-i has no view field (Kaggle's `projection` was added by its curator)
            projections.append({"uid": row["uid"], "filename": f"{image_id}.png",
                                "projection": "Unknown"})
    if imageless:
        log.warning("openi: left out %d reports that have no image in the archive", imageless)
    shutil.rmtree(work)
    pd.DataFrame(reports).sort_values("uid").to_csv(out / REPORTS_CSV, index=False)
    pd.DataFrame(projections, columns=["uid", "filename", "projection"]).to_csv(
        out / PROJECTIONS_CSV, index=False)
