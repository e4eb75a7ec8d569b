"""bench/gpu_check.sh, read statically: every `python -m stages.X ...` and `cxrfusion.predict`
command of its part 2 parses against the current command lines, every `set_param` names an
existing parameter with an allowed value, the files it reads are where the stages write them,
and its inline Python imports names that exist. A CLI, a parameter or a path that changes
without the script then fails here, not in the one short GPU call the script is written for.

The script itself is not run: its dry run on a CPU (`BENCH_ARGS="--tiny --device cpu"
REQUIRE_CUDA=0 ...`, see its header) starts about 20 Python processes, minutes on 2 cores.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from cxrfusion import formats, params
from cxrfusion.formats import TEST_METRICS, Run, text_cache

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
PART2 = "# 2. The demo's stages on the GPU"


def no_arguments(args: list[str], p: params.Params) -> None:
    assert args == [], "the stage reads no arguments"


def one_text_input(args: list[str], p: params.Params) -> None:  # embed_text's first check
    assert len(args) == 1, "the stage takes one text input"
    assert args[0] in p.text.inputs, params.unknown_input(args[0], p)


def a_run(args: list[str], p: params.Params) -> Run:
    return formats.run_of(args, p)


def an_image_encoder(args: list[str], p: params.Params) -> None:  # embed_images' first check
    assert len(args) == 1 and args[0] in p.frozen_image.encoders, "one alias of the encoders"


# stages.evaluate.evaluate_all
def every_run_or_one(args: list[str], p: params.Params) -> Run | None:
    return formats.run_of(args, p) if args else None


# What each stage's command line takes (its __main__ block); `reads_argv` keeps this table
# honest: a stage that starts reading arguments, or stops, fails test_the_table_matches_the_stages.
STAGES = {"download": no_arguments, "prepare": no_arguments, "demo_encoder": no_arguments,
          "cache_images": no_arguments, "compare": no_arguments, "explain": no_arguments,
          "study_report": no_arguments, "demo_image_encoder": no_arguments,
          "embed_images": an_image_encoder,
          "embed_text": one_text_input, "shuffle_reports": one_text_input, "train": a_run,
          "tune": a_run, "train_tfidf": one_text_input,
          "evaluate": every_run_or_one}


def reads_argv(stage: str) -> bool:
    source = (ROOT / "stages" / f"{stage}.py").read_text()
    return "sys.argv" in source[source.index('if __name__ == "__main__":'):]


@pytest.fixture(scope="module")
def script() -> str:
    return SCRIPT.read_text()


@pytest.fixture(scope="module")
def variables(script) -> dict:
    """The shell variables part 2's commands use, as the script sets them (`$image`: any PNG)."""
    found = re.search(r"^input=(\S+)", script, re.M)
    assert found, "gpu_check.sh sets no `input=` (the text input of part 2)"
    return {"input": found[1], "image": "data/raw/images/x.png"}


def substitute(text: str, variables: dict) -> str:
    for name, value in variables.items():
        text = text.replace("${%s}" % name, value).replace("$" + name, value)
    return text


@pytest.fixture(scope="module")
def part2(script, variables) -> list[str]:
    """Part 2's lines, continuation lines joined, its variables substituted."""
    assert PART2 in script
    return substitute(script[script.index(PART2):].replace("\\\n", " "), variables).splitlines()


def commands(lines: list[str], module_prefix: str) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `"$PYTHON" -m <module> ...` whose module starts with
    `module_prefix`: the words after the module up to the shell's next operator."""
    out = []
    for line in lines:
        for found in re.finditer(r'"\$PYTHON" -m (%s\S*)(.*)' % re.escape(module_prefix), line):
            lexer = shlex.shlex(found[2], posix=True, punctuation_chars=";&|<>")
            lexer.whitespace_split = True
            args = []
            for token in lexer:
                if token in (";", "&&", "||", "|", "&", ">", ">>", "<", "<<"):
                    break
                args.append(token)
            out.append((found[1], args))
    return out


@pytest.fixture(scope="module")
def set_params(part2) -> list[tuple[str, str]]:
    """Every `set_param KEY VALUE` of part 2 with a value known before it runs."""
    out = []
    for line in part2:
        words = shlex.split(line, comments=True) if line.strip().startswith("set_param ") else []
        if len(words) == 3:
            out.append((words[1], words[2]))
    return out


@pytest.fixture(scope="module")
def part2_params(set_params) -> params.Params:
    """params.yaml with part 2's set_param calls applied in order (as the script's set_param)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in set_params:
        if "$" in value:  # a loop's variable: its values are checked below
            continue
        params.get(p, key)  # raises for a parameter params.yaml does not have
        *parents, last = key.split(".")
        section = p
        for k in parents:
            section = section[k]
        section[last] = yaml.safe_load(value)
    return params.built(params.validate(p))


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_table_matches_the_stages():
    stages = {path.stem for path in (ROOT / "stages").glob("*.py") if path.stem != "__init__"}
    assert set(STAGES) == stages, "a stage was added or removed: describe its arguments in STAGES"
    for stage, check in STAGES.items():
        assert reads_argv(stage) == (check is not no_arguments), stage


def test_every_set_param_is_a_parameter(set_params, part2_params):
    keys = {key for key, _ in set_params}
    assert {"train.seeds", "text.inputs", "train.deterministic", "text.device", "train.augment",
            "model.fusion", "train.lr_backbone"} <= keys
    for key, value in set_params:
        if "$" in value and not key.startswith("$"):  # "$setting": PARAMS, the caller's
            assert key == "train.deterministic", f"set_param {key} {value}: what values?"


def test_the_deterministic_loop_sets_booleans(script):
    loop = re.search(r"for deterministic in ([^;]+);", script)
    assert loop and loop[1].split() == ["false", "false", "true", "true"]


def test_every_stage_command_parses(part2, part2_params):
    found = commands(part2, "stages.")
    assert {module for module, _ in found} >= {"stages.download", "stages.prepare",
                                               "stages.demo_encoder", "stages.cache_images",
                                               "stages.embed_text", "stages.tune",
                                               "stages.train", "stages.evaluate",
                                               "stages.embed_images"}
    for module, args in found:
        assert importlib.util.find_spec(module) is not None, f"{module} does not exist"
        assert not any("$" in a for a in args), f"{module} {args}: an unknown shell variable"
        STAGES[module.split(".", 1)[1]](args, part2_params)


def test_the_files_it_reads_are_where_the_stages_write(part2, part2_params, variables):
    text = "\n".join(part2)
    text_input = variables["input"]
    assert text_input in part2_params.text.inputs
    assert str(text_cache(text_input)) in text, "embed_text's output is read from elsewhere"
    runs = [a_run(args, part2_params) for module, args in commands(part2, "stages.train")]
    assert {(r.variant, r.seed) for r in runs} == {("fusion", 0), ("fusion", 1)}
    for run in runs:
        assert run.path in text, f"the script never reads {run.models}"
    assert f"models/{Run('fusion', 0, text_input).path}" in text  # weights(), predict --model
    assert f"{TEST_METRICS}/{{run}}.json" in text  # the options check's metrics/test/<run>.json


def test_predict_parses(part2, part2_params):
    from cxrfusion.predict import parser

    (found,) = commands(part2, "cxrfusion.predict")
    args = parser().parse_args(found[1])
    trained = {str(a_run(a, part2_params).models) for _, a in commands(part2, "stages.train")}
    assert args.model in trained, f"predict --model {args.model}: no step trains it"
    assert args.image and args.findings and args.impression


def heredocs(script: str) -> list[str]:
    """The bodies of the script's `<<'EOF'` documents."""
    return re.findall(r"<<'EOF'[^\n]*\n(.*?)\nEOF\n", script, re.S)


def test_its_python_imports_what_exists(script):
    bodies = [b for b in heredocs(script) if "import" in b]
    assert len(bodies) >= 5  # the result summary, set_param, embed_text, bf16 / GPU vs CPU, options
    for body in bodies:
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if (isinstance(node, ast.ImportFrom)
                    and node.module.split(".")[0] in ("cxrfusion", "stages")):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"), f"{node.module}.{alias.name} does not exist"
