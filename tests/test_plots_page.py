"""`dvc plots show` draws offline: the page (cxrfusion/plot_page.py) carries vega inline, and
headless Chromium, which has no network here, draws every declared plot of the committed demo.
metrics/dvc.yaml (written by `python -m cxrfusion.charts`: tests/test_charts.py) declares a
chart per text input (test curves) or per model (training curves) with every run of params.yaml
in it, titled and labelled in words, each line named by model, seed and studies
(.dvc/plots/*.json), and by revision when `dvc plots diff` draws several.

Needs Debian's `chromium` (`apt-get install -y chromium`; .ci/run installs it). Without it the
browser test is skipped on a developer's machine and fails in CI (CI=true).
"""
from __future__ import annotations

import configparser
import copy
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrfusion import formats, params, plot_page
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


def _declared(dvc_yaml: str = "metrics/dvc.yaml") -> dict:
    """A dvc.yaml's top-level data-series plots, {id: properties}, each naming its files in y
    as paths from the project's root (DVC reads them relative to the dvc.yaml's folder)."""
    folder = Path(dvc_yaml).parent
    found = {}
    for entry in yaml.safe_load((ROOT / dvc_yaml).read_text())["plots"]:
        if isinstance(entry, dict):
            (plot_id, props), = entry.items()
            if isinstance((props or {}).get("y"), dict):
                y = {(folder / path).as_posix(): column for path, column in props["y"].items()}
                found[plot_id] = {**props, "y": y}
    return found


def _dvclive_files(run) -> dict:
    """{path: metric} of what DVCLive wrote for `run` in the committed demo (train/ and val/)."""
    return {f.relative_to(ROOT).as_posix(): f.stem
            for f in sorted((ROOT / run.train_log / "plots/metrics").glob("*/*.tsv"))}


@pytest.mark.committed
def test_the_charts_name_every_run_params_yaml_asks_for():
    """Top-level plots take no foreach: their lists of files are written out in metrics/dvc.yaml,
    and must follow train.seeds and text.inputs (and what evaluate and DVCLive write). The
    root dvc.yaml declares the figures only (compare's, Grad-CAM's grid, the report's flow)."""
    assert yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] == [
        "metrics/figures", "metrics/explain/grid.png", "metrics/study_report/flow.png"]
    assert set(yaml.safe_load((ROOT / "metrics/dvc.yaml").read_text())) == {"plots"}  # no stages
    p = params.load(ROOT / "params.yaml")
    runs = formats.runs(p)
    expected: dict[str, dict] = {}
    for kind, column in (("roc", "tpr"), ("pr", "precision"), ("confusion", "actual")):
        for text_input in p.text.inputs:  # the image model beside each text input's
            expected[f"{kind}_{text_input}"] = {
                run.curve(kind).as_posix(): column
                for run in runs if run.text_input in (text_input, None)}
    for run in [r for r in runs if not params.row(r.variant).trained_once]:  # no epochs
        logged = _dvclive_files(run)
        assert {Path(f).parent.name for f in logged} == {"train", "val"}, run.path
        plot_id = "_".join(["training", run.variant] + ([run.text_input] if run.text_input else []))
        expected.setdefault(plot_id, {}).update(logged)
    declared = _declared()
    assert {plot_id: props["y"] for plot_id, props in declared.items()} == expected
    for files in expected.values():
        for path, column in files.items():  # the committed demo's files, with that column
            header = (ROOT / path).read_text().splitlines()[0]
            assert column in re.split(r"[,\t]", header), (path, header)
    for template in {props["template"] for props in declared.values()}:
        path = ROOT / ".dvc/plots" / f"{template}.json"  # DVC's folder of custom templates
        assert path.exists(), path
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
        assert ignored.returncode == 1, f"{path} is git-ignored: it would not be committed"


def _renderers(revisions: list[str]) -> list:
    """What `dvc plots show` (one revision) or `dvc plots diff` (several) draws, as DVC's
    renderers: the committed demo's data, copied under each revision's name."""
    from dvc.render.match import match_defs_renderers
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        shown = repo.plots.show()
        data = {rev: copy.deepcopy(shown["workspace"]) for rev in revisions}
        matched = match_defs_renderers(data, templates_dir=repo.plots.templates_dir)
    return [r.renderer for r in matched]


def _texts(renderer) -> set[str]:
    """Every text the chart draws (title, axes, legends, headers), rendered by vega offline."""
    import vl_convert

    svg = vl_convert.vegalite_to_svg(renderer.get_filled_template())
    return {html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)}


def _tagged(names: set[str], revisions: list[str]) -> set[str]:
    """How a legend names a series: by itself, or with its revision when there are several."""
    return names if len(revisions) == 1 else {f"{n} ({rev})" for n in names for rev in revisions}


@pytest.mark.committed
@pytest.mark.parametrize("revisions", [["workspace"], ["workspace", "HEAD"]],
                         ids=["show", "diff"])
def test_every_chart_reads_in_words_and_names_its_runs(revisions, monkeypatch):
    """Titles and axis labels are words, not file paths; each line or panel is named by model,
    seed and studies (training or validation), and by revision when there are several."""
    monkeypatch.chdir(ROOT)
    p = params.load(ROOT / "params.yaml")
    runs = formats.runs(p)
    declared = _declared()
    renderers = _renderers(revisions)
    charts = {r.name: r for r in renderers if r.TYPE == "vega"}
    assert set(declared) <= set(charts)
    seeds = {f"seed {s}" for s in p.train.seeds}
    for plot_id, props in declared.items():
        texts = _texts(charts[plot_id])
        assert props["title"] in texts
        for text in texts | {props["title"], props.get("x_label", ""), props.get("y_label", "")}:
            assert not re.search(r"/|\.(csv|tsv)\b|seed-\d", text), f"{plot_id}: {text!r}"
        kind, models = plot_id.split("_")[0], {r.variant for r in runs}
        if kind == "confusion":   # a row a model; a column a seed (and revision)
            expected = models | _tagged(seeds, revisions)
        elif kind == "training":  # a panel a metric; a colour the studies (and revision)...
            expected = {"loss", "AUROC"} | _tagged({"training", "validation"}, revisions) | seeds
        else:                     # ...or the model (and revision); a dash a seed
            expected = _tagged(models, revisions) | seeds
        assert expected <= texts, f"{plot_id}: {sorted(texts)}"
    assert set(charts) == set(declared)  # no chart a file (the train stages declare none)


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs it (apt-get install -y chromium)")
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): "
                "browser test skipped")


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
                    "-o", str(out)], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=240)
    page = (out / "index.html").read_text()
    charts = page.count("vegaEmbed('#")
    figures = sorted(p.name for p in (ROOT / "metrics/figures").glob("*.png")) + ["grid.png",
                                                                                   "flow.png"]
    declared = _declared()
    assert charts == len(declared)  # a chart per text input or model
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing to fetch

    dom = _browse(chromium, out / "index.html", tmp_path, "--dump-dom").stdout
    assert dom.count('class="marks"') == charts, "a plot did not draw (no SVG in its container)"
    for props in declared.values():  # drawn with its title in words
        assert html.escape(props["title"], quote=False) in dom, props["title"]
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
