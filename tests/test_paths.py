"""Every repository path that README.md, docs/ or a comment names exists: a file git tracks (or
a folder holding one), an output dvc.yaml declares (its matrices expanded), or a pattern written
with a <placeholder>; and every section a text points to ("README, Batch size") is a heading."""
from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize

import pytest
import yaml
from conftest import ROOT
from test_lock import expanded_names

TOP = ("stages", "cxrfusion", "tests", "bench", "docs", "data", "features", "models", "metrics",
       ".dvc", ".ci", "checkpoints", "dvc_plots")
FILES = ("params.yaml", "dvc.yaml", "dvc.lock", "requirements.txt", "Makefile", "README.md",
         "pytest.ini")
# a path: a top-level folder then path characters, or a top-level file; not inside a URL
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./+<>${}@*:-]*[\w>}/*]|(?:%s)(?![\w.-]))"
                  % ("|".join(map(re.escape, TOP)), "|".join(map(re.escape, FILES))))
# written by a command, not a stage: make install, `dvc plots show`, train's resume files,
# bench/gpu_check.sh on a lent GPU, `dvc remote add --local`, DVC's queue, the openi download
GENERATED = {".dvc/plots/offline.html", "dvc_plots", "checkpoints", "bench/result.json",
             ".dvc/config.local", ".dvc/tmp", "data/downloads"}
SECTION = re.compile(r'(README(?:\.md)?|docs/[\w-]+\.md), (?:"([^"]+)"|([A-Z][\w ]*\w))')


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).exists()]


def _declared() -> set[str]:
    """Every output path of dvc.yaml, its matrices expanded with params.yaml's values."""
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    from cxrfusion.formats import runs
    from cxrfusion.params import built

    out = set()
    for stage in pipeline.values():
        stage = stage.get("do", stage)  # foreach stages keep their outputs under do:
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = entry if isinstance(entry, str) else next(iter(entry))
                if "${item" not in path:
                    out.add(path)
                    continue
                for run in runs(built(params)):
                    out.add(path.replace("${item.input}", str(run.text_input))
                            .replace("${item.seed}", str(run.seed)))
                for text_input in params["text"]["inputs"]:
                    out.add(path.replace("${item}", text_input))
    assert expanded_names(pipeline, params)  # the same expansion the lock test reads
    return out


@pytest.fixture(scope="module")
def known() -> dict[str, set[str]]:
    """"files": what is tracked or declared, and their folders; "outputs": the declared
    outputs and generated paths, inside which any path may lie (a folder's contents)."""
    declared = _declared() | GENERATED
    paths = set(_tracked()) | declared
    folders = {"/".join(p.split("/")[:k]) for p in paths for k in range(1, p.count("/") + 1)}
    return {"files": paths | folders, "outputs": declared}


def _comments(source: str) -> str:
    """A Python file's comments and docstrings, one per line of text."""
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            parts.append(ast.get_docstring(node) or "")
    return "\n".join(parts)


def _texts() -> dict[str, str]:
    """README.md, docs/*.md, and the comments and docstrings of the code, params and CI."""
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for path in sorted((ROOT / "docs").glob("*.md")):
        texts[str(path.relative_to(ROOT))] = path.read_text()
    for name in _tracked():
        if name.startswith("tests/"):
            continue  # tests name paths that do not exist on purpose
        if name.endswith(".py"):
            texts[name] = _comments((ROOT / name).read_text())
        elif name.endswith((".yaml", ".sh", "Makefile")) or name == ".ci/run":
            texts[name] = "\n".join(line.split("#", 1)[1] for line in
                                    (ROOT / name).read_text().splitlines() if "#" in line)
    return texts


def _exists(path: str, known: dict) -> bool:
    path = path.rstrip("/.:")
    if re.search(r"[<*${]", path):  # a pattern (<run>, *, $input, {run}): its fixed part
        fixed = re.split(r"[<*${]", path)[0].rstrip("/.")
        return not fixed or any(k == fixed or k.startswith(fixed) for k in known["files"])
    return path in known["files"] or any(path.startswith(out + "/") for out in known["outputs"])


def test_every_path_named_exists(known):
    missing = []
    for name, text in _texts().items():
        for number, line in enumerate(text.splitlines(), 1):
            if "example" in line.lower():  # an example file name in a command, marked so
                continue
            for path in PATH.findall(line):
                if not _exists(path, known):
                    missing.append(f"{name}:{number}: {path}")
    assert not missing, "paths that are neither tracked nor declared outputs:\n" + "\n".join(
        missing)


def _headings() -> dict[str, set[str]]:
    out = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()  # headings, and the bold labels that open a paragraph
        out[str(path.relative_to(ROOT))] = {
            line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")} | {
            label.rstrip(".") for label in re.findall(r"(?:^|\n)(?:- )?\*\*([^*]+)\*\*", text)}
    out["README"] = out["README.md"]
    return out


def test_every_section_named_is_a_heading():
    headings, wrong = _headings(), []
    for name, text in _texts().items():
        for where, quoted, bare in SECTION.findall(text):
            title = quoted or bare
            titles = headings.get(where.replace("README.md", "README"), set())
            if not any(t.startswith(title) for t in titles):
                wrong.append(f"{name}: {where}, {title}")
    assert not wrong, "sections named that are no heading there:\n" + "\n".join(wrong)


def test_the_rules_catch_a_stale_path_and_section(known):
    assert not _exists("features/text.h5", known)          # the one cache of an older layout
    assert _exists("features/text/<input>.h5", known) and _exists("metrics/test", known)
    assert _exists("metrics/train/image/seed-0/metrics.json", known)
    assert PATH.findall("see `stages/compare.py` and params.yaml") == ["stages/compare.py",
                                                                       "params.yaml"]
    assert SECTION.findall('(README, "Batch size")') == [("README", "Batch size", "")]
    assert SECTION.findall("(see docs/design.md, Reproducibility)") == [
        ("docs/design.md", "", "Reproducibility")]
