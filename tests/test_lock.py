"""The committed results come from the committed code: dvc.lock against the checkout, and
dvc.yaml's code dependencies against what each stage imports.

dvc.yaml's `foreach` and `matrix` stages expand to one stage per item (embed_text@indication,
train_fusion@findings+impression-0, ...), with the items from params.yaml; dvc.lock records
each of them, and only them."""
from __future__ import annotations

import ast
import copy
import functools
import hashlib
import itertools
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from cxrfusion import params
from cxrfusion.params import VARIANTS, row

LOCK = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PACKAGES = ("stages", "cxrfusion")
# and another text encoder and a second frozen image encoder: the stages of their arms too
ENCODERS = {**PARAMS,
            "text": {**PARAMS["text"], "encoders": {"second": {
                "model": "m", "revision": None, "pooling": "cls", "prompt": None,
                "trust_remote_code": False}}},
            "frozen_image": {**PARAMS["frozen_image"], "encoders": {
                **PARAMS["frozen_image"]["encoders"], "second_vit": {
                    "model": "m", "revision": None, "pooling": "cls",
                    "trust_remote_code": False}}}}


def _code_deps(stage: dict) -> list[dict]:
    return [d for d in stage.get("deps", []) if d["path"].endswith((".py", ".sh"))]


def _value(dotted: str, params: dict = PARAMS):
    value = params
    for key in dotted.split("."):
        value = value[key]
    return value


def _items(spec, params: dict):
    """A foreach/matrix value: a list, or `${dotted.param}` naming one in params.yaml."""
    if isinstance(spec, str):
        found = re.fullmatch(r"\$\{\s*([\w.]+)\s*\}", spec)
        assert found, f"unexpected foreach/matrix value {spec!r}"
        spec = _value(found.group(1), params)
    return spec


def expanded_names(pipeline: dict, params: dict) -> set[str]:
    """The stage names DVC gives dvc.yaml's stages: name@item for `foreach` (a list; a dict's
    keys), name@v1-v2 for `matrix` (its keys' values in order, joined by '-')."""
    names = set()
    for name, stage in pipeline.items():
        if "foreach" in stage:
            items = _items(stage["foreach"], params)
            names |= {f"{name}@{item}" for item in items}
        elif "matrix" in stage:
            axes = [_items(values, params) for values in stage["matrix"].values()]
            names |= {f"{name}@{'-'.join(map(str, combo))}" for combo in itertools.product(*axes)}
        else:
            names.add(name)
    return names


def test_the_matrix_stages_are_the_runs_the_parameters_ask_for():
    """One train stage per run (cxrfusion.formats.runs), named by Run.key; one evaluate for all."""
    from cxrfusion.formats import runs
    from cxrfusion.params import built

    names = expanded_names(PIPELINE, ENCODERS)
    every = runs(built(ENCODERS))
    wanted = {run.stage for run in every}  # the placebo's: fusion's
    assert {n for n in names if n.startswith(("train_", "evaluate"))} == wanted | {"evaluate"}
    assert {n for n in names if n.startswith("embed_text")} == {
        f"embed_text@{i}" for i in PARAMS["text"]["inputs"]} | {
        f"embed_text_by@second-{i}" for i in PARAMS["text"]["inputs"]}
    assert {"download", "prepare", "demo_encoder", "cache_images", "evaluate", "compare",
            "explain"} <= names
    # each run's stage writes that run's folders (fusion's, its placebo's after them)
    for run in every:
        name = run.stage.partition("@")[0]
        stage = PIPELINE[name]
        if row(run.variant).trained_once:  # one a text input: its model and its choice
            assert stage["foreach"] == "${text.inputs}" and run.seed is None, run
            assert [o if isinstance(o, str) else next(iter(o)) for o in stage["do"]["outs"]] == [
                f"models/{run.variant}/${{item}}", f"metrics/tuning/{run.variant}/${{item}}"]
            assert stage["do"]["cmd"].split()[2:] == [f"stages.train_{run.variant}", "${item}"]
            continue
        alias = params.alias_of(run.variant) or ""
        values = {"encoder": alias, "input": run.text_input, "seed": run.seed}

        def fill(text: str) -> str:  # a template of the run's stage, as DVC fills it
            text = text.replace("${key}", alias).replace("${item}", str(run.text_input))
            for key, value in values.items():
                text = text.replace(f"${{item.{key}}}", str(value))
            return text

        if row(run.variant).seeds_together:  # every seed: the arm's folders, whole
            body = stage.get("do", stage)
            outs = [fill(o if isinstance(o, str) else next(iter(o))) for o in body["outs"]]
            assert outs == [f"models/{run.arm}", f"metrics/train/{run.arm}"]
            assert str(run.models).startswith(outs[0]) and str(run.train_log).startswith(outs[1])
            assert fill(body["cmd"]).split()[4:] == ["stages.train", run.variant, "all",
                                                     *([run.text_input] if run.text_input
                                                       else [])]
            continue
        outs = [fill(o if isinstance(o, str) else next(iter(o)))  # a path, or {path: options}
                for o in stage["outs"]]
        mine = [str(run.models), str(run.train_log / "plots/metrics"),
                str(run.train_log / "metrics.json")]
        trained = [params.arm(v, alias or None) for v, row_ in VARIANTS.items()
                   if f"train_{row_.trained_with or v}" == name.removesuffix("_by")]
        start = 3 * trained.index(run.variant)
        assert outs[start:start + 3] == mine and len(outs) == 3 * len(trained), run
        assert fill(stage["cmd"]).split()[5] == ",".join(trained)  # stages.train <variants>


def test_each_arm_is_tuned_by_a_stage_whose_choice_its_train_stage_reads():
    """tune_<arm> writes each arm's choice and candidates (the stage a candidate's Run names),
    at the first seed, for the variants its train stage trains; that train stage reads them."""
    from dataclasses import replace

    from cxrfusion.formats import runs
    from cxrfusion.params import built

    def paths(entries, run):
        alias = params.alias_of(run.variant) or ""
        return [(e if isinstance(e, str) else next(iter(e))).replace(
            "${item}", str(run.text_input)).replace("${item.input}", str(run.text_input))
            .replace("${key}", alias).replace("${item.encoder}", alias) for e in entries]

    names = expanded_names(PIPELINE, ENCODERS)
    for run in runs(built(ENCODERS)):
        if row(run.variant).trained_once:
            continue  # it tunes itself in its train stage (the test above)
        tuned_by = replace(run, candidate=0).stage
        assert tuned_by in names, run
        stage = PIPELINE[tuned_by.partition("@")[0]]
        stage = stage.get("do", stage)  # foreach: the stage is its `do`
        mine = [str(run.candidates), str(run.choice.parent)]
        assert set(mine) <= set(paths(stage["outs"], run)), run
        trainer = PIPELINE[run.stage.partition("@")[0]]
        trainer = trainer.get("do", trainer)  # foreach: the stage is its `do`
        assert set(mine) <= set(paths(trainer["deps"], run)), run
        words = paths([stage["cmd"]], run)[0].split()
        arm = tuned_by.removeprefix("tune_").partition("@")[0].removesuffix("_by")
        trained = [params.arm(v, params.alias_of(run.variant)) for v, row_ in VARIANTS.items()
                   if (row_.trained_with or v) == arm]
        assert words[4:7] == ["stages.tune", ",".join(trained), "${train.seeds[0]}"], words


def test_expanded_names_follow_the_parameters():
    params = copy.deepcopy(PARAMS)
    params["train"]["seeds"] = [4]
    params["text"]["inputs"] = ["indication"]
    names = expanded_names(PIPELINE, params)
    assert {"train_image@4", "train_fusion@indication-4", "train_text@indication-4",
            "embed_text@indication"} <= names
    assert not {n for n in names if "findings" in n or n.endswith("-0")}


@pytest.mark.committed
def test_dvc_lock_holds_exactly_the_stages_of_dvc_yaml():
    """A stage dvc.yaml no longer has (train@fusion, before train was one stage per run) or
    one it has not run yet: run `make repro` and remove the stale entries from dvc.lock."""
    expected = expanded_names(PIPELINE, PARAMS)
    assert not set(LOCK) - expected, (
        f"dvc.lock lists stages dvc.yaml does not: {sorted(set(LOCK) - expected)}")
    assert not expected - set(LOCK), (
        f"dvc.lock lacks {sorted(expected - set(LOCK))}: run make repro")


@pytest.mark.committed
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
        try:
            now = _value(key)
        except KeyError:
            pytest.fail(f"{name}: dvc.lock records parameter {key}, "
                        "which params.yaml no longer has")
        assert now == value, f"{name}: params.yaml {key} is not what dvc.lock recorded"


def _file(module: str) -> Path | None:
    """The file of a project module: a/b.py, or a/b/__init__.py for a package below the top
    (cxrfusion.sources, whose __init__ runs on importing any of its modules)."""
    path = ROOT / Path(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if "." in module and (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


@functools.lru_cache(maxsize=None)  # every stage's check walks the same modules
def _imports(module: str) -> frozenset[str]:
    """The project's modules `module` imports, directly or through others (and the packages
    they sit in)."""
    seen, todo = set(), [module]
    while todo:
        path = _file(todo.pop())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            names += [name.rsplit(".", i)[0] for name in names for i in range(1, name.count("."))]
            for name in names:
                if name.split(".")[0] in PACKAGES and name not in seen and _file(name):
                    seen.add(name)
                    todo.append(name)
    return frozenset(seen)


def code_deps_problems(name: str, stage: dict) -> list[str]:
    """What is wrong with one dvc.yaml stage's code dependencies (plain, foreach or matrix):
    a project module its program imports that its deps do not list, a listed module it does not
    import, or a stage module importing another."""
    body = stage.get("do", stage)  # foreach: under `do`; matrix and plain stages: the stage
    program = re.search(r"\bstages\.(\w+)", body["cmd"]).group(1)
    modules = _imports(f"stages.{program}") | {f"stages.{program}"}
    if "cxrfusion.launch" in body["cmd"]:
        modules |= _imports("cxrfusion.launch") | {"cxrfusion.launch"}
    problems = []
    others = {m for m in modules if m.startswith("stages.")} - {f"stages.{program}"}
    if others:
        problems.append(f"{name}: stages.{program} imports the stage module(s) {sorted(others)}")
    needed = {str(_file(m).relative_to(ROOT)) for m in modules}
    listed = {d for d in body["deps"] if isinstance(d, str) and d.endswith(".py")}
    listed |= {str(f.relative_to(ROOT)) for d in body["deps"]  # a package listed as a folder
               if isinstance(d, str) and d.startswith("cxrfusion/") and (ROOT / d).is_dir()
               for f in (ROOT / d).rglob("*.py")}
    if needed - listed:
        problems.append(f"{name} imports {sorted(needed - listed)}, not in its deps")
    if listed - needed:
        problems.append(f"{name} lists {sorted(listed - needed)}, which it does not import")
    return problems


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_each_stage_depends_on_the_code_it_imports(name):
    """dvc.yaml lists, for each stage, every project module its program imports (so that a
    change there reruns it), and no stage module imports another stage module."""
    assert code_deps_problems(name, PIPELINE[name]) == []


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_a_missing_code_dependency_is_caught(name):
    """The check above fails for every stage, matrix ones included, when one imported module
    is dropped from its deps, or an unused one is added."""
    stage = copy.deepcopy(PIPELINE[name])
    body = stage.get("do", stage)
    code = [d for d in body["deps"] if isinstance(d, str) and d.endswith(".py")]
    assert "cxrfusion/formats.py" in code and "cxrfusion/params.py" in code
    for dropped in ("cxrfusion/formats.py", code[0]):
        short = copy.deepcopy(stage)
        short_body = short.get("do", short)
        short_body["deps"] = [d for d in short_body["deps"] if d != dropped]
        assert any(problem.endswith("not in its deps") and repr(dropped) in problem
                   for problem in code_deps_problems(name, short)), (name, dropped)
    extra = copy.deepcopy(stage)
    extra_body = extra.get("do", extra)
    extra_body["deps"] = extra_body["deps"] + ["bench/loop.py"]  # no stage imports it
    assert any(problem.endswith("which it does not import") and "'bench/loop.py'" in problem
               for problem in code_deps_problems(name, extra)), name
