"""`dvc plots show` draws offline: the page (cxrfusion/plot_page.py) carries vega inline, and
headless Chromium, which has no network here, draws every declared plot of the committed demo.

Needs Debian's `chromium` (`apt-get install -y chromium`; .ci/run installs it). Without it the
browser test is skipped on a developer's machine and fails in CI (CI=true).
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxrfusion import plot_page
from cxrfusion.common import PipelineError

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def test_the_page_carries_vega_and_no_cdn(tmp_path):
    page = plot_page.write(tmp_path / "page.html").read_text()
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # DVC's CDN <script src=...> tags go there: left out
    assert re.search(r"window\.vegaEmbed\s*=", page) and len(page) > 500_000  # the bundle
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert page.count("<script>") == 1 and page.count("</script>") == 1


def test_a_bundle_that_would_break_the_page_is_refused(tmp_path, monkeypatch):
    import vl_convert

    monkeypatch.setattr(vl_convert, "javascript_bundle", lambda snippet: "x='</script>';" + snippet)
    with pytest.raises(PipelineError, match="</script"):
        plot_page.write(tmp_path / "page.html")
    assert not (tmp_path / "page.html").exists()


def test_dvc_config_names_the_page_make_install_writes():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    assert config['plots']['html_template'] == "plots/offline.html"
    assert ROOT / ".dvc" / config['plots']['html_template'] == ROOT / plot_page.PAGE
    assert "python -m cxrfusion.plot_page" in (ROOT / "Makefile").read_text()


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): browser test skipped")


def _browse(chromium: str, page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()  # a new, empty profile every time
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           "--virtual-time-budget=30000", "--window-size=1400,1600", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=240)


def test_dvc_plots_show_draws_every_plot_in_chromium(tmp_path):
    """The committed demo's plots, as a user sees them: each vega plot drew an SVG, each
    figure an image, and the screenshot is not blank."""
    from PIL import Image

    chromium = _chromium()
    template = plot_page.write(tmp_path / "page.html")
    out = tmp_path / "plots"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([str(VENV_BIN / "dvc"), "plots", "show", "--html-template", str(template),
                    "-o", str(out)], cwd=ROOT, env=env, check=True, capture_output=True, timeout=240)
    html = (out / "index.html").read_text()
    charts = html.count("vegaEmbed('#")
    figures = sorted(p.name for p in (ROOT / "metrics/figures").glob("*.png")) + ["grid.png"]
    assert charts >= 15 * 3  # at least the ROC, PR and confusion data of every run
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing to fetch

    dom = _browse(chromium, out / "index.html", tmp_path, "--dump-dom").stdout
    assert dom.count('class="marks"') == charts, "a plot did not draw (no SVG in its container)"
    images = re.findall(r'<img[^>]*src="(static/[^"]+)"', dom)
    assert len(images) == len(figures)
    for src in images:  # the PNGs DVC copied beside the page, each one a real image
        with Image.open(out / src) as image:
            assert min(image.size) > 100, src

    shot = tmp_path / "shot.png"
    _browse(chromium, out / "index.html", tmp_path, f"--screenshot={shot}")
    with Image.open(shot) as image:
        grey = image.convert("L")
        dark = sum(grey.histogram()[:200]) / (grey.width * grey.height)
        colours = len(image.convert("RGB").getcolors(1 << 20) or [])
    assert dark > 0.01, f"the page looks blank ({dark:.4f} of its pixels are not near white)"
    assert colours > 20  # lines, text and legend in colour, not one flat fill
