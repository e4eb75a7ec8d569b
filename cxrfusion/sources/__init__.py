"""Where the raw dataset comes from: each source writes the Kaggle layout under data/raw.

`SOURCES` names each source's writer, `write(p, out)`: params.py's data.source is checked
against the same names (tests/test_registries.py keeps the two in step).
"""
from __future__ import annotations

from pathlib import Path

from cxrfusion.common import PipelineError
from cxrfusion.params import Params
from cxrfusion.sources import demo, kaggle, mimic, openi


def _demo(p: Params, out: Path) -> None:
    d = p.demo
    demo.generate(out, d.studies, d.image_size, d.label_noise, d.seed)


def _local(p: Params, out: Path) -> None:
    src = Path(p.data.local_dir).expanduser()
    if not src.is_dir():
        raise PipelineError(f"data.local_dir={str(src)!r} is not a folder.")
    kaggle.link_kaggle_layout(src, out)


SOURCES = {
    "demo": _demo,                                               # synthetic, offline
    "kaggle": lambda p, out: kaggle.from_kaggle(out),            # kagglehub's download
    "openi": lambda p, out: openi.from_openi(out, p.data.openi_url),
    "local": _local,                                             # a folder in the Kaggle layout
    "mimic_cxr": lambda p, out: mimic.convert(p.data.local_dir, out),
}
