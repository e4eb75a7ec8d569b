"""The HTML page `dvc plots show` and `dvc plots diff` fill: vega, vega-lite and vega-embed inline.

    python -m cxrfusion.plot_page        # writes .dvc/plots/offline.html (make install runs it)

DVC's own page loads the three libraries from a CDN, so on a machine without internet (a
hospital, a cluster) it stays blank. This page carries them, from the installed
vl-convert-python, and `.dvc/config` names it (`plots.html_template`, a path relative to
.dvc/). DVC fills `{plot_divs}`; its `{scripts}` (the CDN tags) is left out on purpose.
The page is generated, not committed: 0.9 MB of minified JavaScript that follows the package.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from cxrfusion.common import PipelineError, atomic_path, main

log = logging.getLogger("plot_page")

PAGE = Path(".dvc/plots/offline.html")  # .dvc/config: html_template = plots/offline.html

STYLE = """
    body { font-family: sans-serif; margin: 24px; }
    table { border-spacing: 15px; }
    img { max-width: 100%; }
"""


def page(bundle: str) -> str:
    # The bundle is a classic script; inside a function its top-level names cannot clash with
    # the `var spec` of each plot's own script, and it hands vegaEmbed to them through window.
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n{refresh_tag}\n"
            "<title>DVC plots: does the report help the CNN?</title>\n"
            f"<script>(function () {{\n{bundle}\n}})();</script>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{{plot_divs}}\n</body>\n</html>\n")


def write(path: Path = PAGE) -> Path:
    try:
        import vl_convert
    except ImportError:
        raise PipelineError("vl-convert-python is not installed: run `make install` (it is in "
                            "requirements.txt); it carries the vega libraries the page needs "
                            "offline.") from None
    bundle = vl_convert.javascript_bundle(
        snippet="window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;")
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script"):
        if placeholder in bundle:  # DVC replaces the placeholders; </script would end the tag
            raise PipelineError(f"the vega bundle of vl-convert-python {vl_convert.__version__} "
                                f"holds {placeholder!r}: this page cannot carry it inline.")
    with atomic_path(path) as tmp:
        tmp.write_text(page(bundle), encoding="utf-8")
    log.info("%s: vega-embed with vega %s inline (%.1f MB)", path,
             vl_convert.get_vega_version(), path.stat().st_size / 1e6)
    return path


if __name__ == "__main__":
    main(lambda: write(Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE))
