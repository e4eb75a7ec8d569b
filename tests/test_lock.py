"""The committed results come from the committed code: dvc.lock against the checkout, and
dvc.yaml's code dependencies against what each stage imports."""
from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

LOCK = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
PACKAGES = ("stages", "cxrfusion")


def _code_deps(stage: dict) -> list[dict]:
    return [d for d in stage.get("deps", []) if d["path"].endswith((".py", ".sh"))]


def _value(dotted: str):
    value = PARAMS
    for key in dotted.split("."):
        value = value[key]
    return value


@pytest.mark.parametrize("name", sorted(LOCK))
def test_dvc_lock_records_the_code_and_params_in_the_checkout(name):
    """Every code file and parameter a stage's committed outputs were made from is the one in
    the checkout: otherwise `make repro` was not run after the change (run it, commit dvc.lock
    and metrics/)."""
    stage = LOCK[name]
    for dep in _code_deps(stage):
        path = ROOT / dep["path"]
        assert path.is_file(), f"{name}: {dep['path']} is in dvc.lock but not in the checkout"
        assert hashlib.md5(path.read_bytes()).hexdigest() == dep["md5"], (
            f"{name}: {dep['path']} differs from the version dvc.lock recorded: run make repro")
    for key, value in stage.get("params", {}).get("params.yaml", {}).items():
        assert _value(key) == value, f"{name}: params.yaml {key} is not what dvc.lock recorded"


def _imports(module: str) -> set[str]:
    """The project's modules `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        path = ROOT / Path(*todo.pop().split(".")).with_suffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] in PACKAGES and name not in seen and \
                        (ROOT / Path(*name.split("."))).with_suffix(".py").is_file():
                    seen.add(name)
                    todo.append(name)
    return seen


def test_each_stage_depends_on_the_code_it_imports():
    """dvc.yaml lists, for each stage, every project module its program imports (so that a
    change there reruns it), and no stage module imports another stage module."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        program = re.search(r"\bstages\.(\w+)", body["cmd"]).group(1)
        modules = _imports(f"stages.{program}") | {f"stages.{program}"}
        if "cxrfusion.launch" in body["cmd"]:
            modules |= _imports("cxrfusion.launch") | {"cxrfusion.launch"}
        assert not {m for m in modules if m.startswith("stages.")} - {f"stages.{program}"}, name
        needed = {str(Path(*m.split(".")).with_suffix(".py")) for m in modules}
        listed = {d for d in body["deps"] if isinstance(d, str) and d.endswith(".py")}
        assert needed <= listed, f"{name} imports {sorted(needed - listed)}, not in its deps"
        assert listed <= needed, f"{name} lists {sorted(listed - needed)}, which it does not import"
