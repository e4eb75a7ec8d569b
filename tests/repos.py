"""Git + DVC repositories of the pipeline in temporary folders, and the commands run in them.

make_repo: the code and TINY's parameters only, nothing run (tests/test_sharing.py,
tests/test_mimic.py). demo_repository: the whole checkout with TINY's parameters, every stage
run and recorded in dvc.lock, committed, as a machine that made the demo's outputs holds it
(tests/test_pipeline.py reads it, in one module: one run for the end-to-end and rounding tests).
dvc: DVC's command line in the test process.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY, merge

from cxrfusion import charts, results

VENV_BIN = Path(sys.executable).parent
DVC = str(VENV_BIN / "dvc")
TIMEOUT = 600
# other float rounding than this machine's: ATen's scalar kernels, one thread (as on a CPU that
# sums in another order)
OTHER_ROUNDING = {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}


def tiny_params() -> dict:
    """params.yaml with TINY's overrides, one epoch and one heatmap per outcome."""
    with open(ROOT / "params.yaml") as f:
        params = merge(yaml.safe_load(f), TINY)
    params["train"]["epochs"] = 1
    params["explain"]["per_outcome"] = 1  # one heatmap per outcome: the grid is still drawn
    return params


def env(**extra: str) -> dict:
    """This environment with the venv first on PATH (the stages call `python`), offline, and a
    git identity; `extra` on top."""
    out = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1",
               PATH=f"{VENV_BIN}{os.pathsep}{out.get('PATH', '')}",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.org",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.org", **extra)
    return out


def call(cwd: Path, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), cwd=cwd, env=env(**(extra_env or {})), capture_output=True,
                          text=True, timeout=TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{output[-6000:]}"
    return done


def run(cwd: Path, *args: str, extra_env: dict | None = None) -> str:
    """stdout and stderr together (DVC prints its progress on either)."""
    done = call(cwd, *args, extra_env=extra_env)
    return done.stdout + done.stderr


def run_stdout(cwd: Path, *args: str) -> str:
    return call(cwd, *args).stdout


def dvc(repo: Path, *args: str) -> str:
    """`dvc ARGS` in `repo`, through DVC's command line in this process (its commands, options
    and messages, without a second of start-up a call), with env()'s variables (the stages it
    runs call the venv's `python`): what it printed, stdout then stderr. (Its JSON output
    does not reach a redirected stdout: read that from `run_stdout(repo, DVC, ...)`.)"""
    from dvc.cli import main

    out, err = io.StringIO(), io.StringIO()
    logged = logging.StreamHandler(err)  # its messages ("Running stage ...") go to a logger
    logger = logging.getLogger("dvc")
    level = logger.level
    logger.addHandler(logged)
    logger.setLevel(logging.INFO)  # as `dvc` sets it
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(repo)
            for name, value in env().items():
                mp.setenv(name, value)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
    finally:
        logger.removeHandler(logged)
        logger.setLevel(level)
    printed = out.getvalue() + err.getvalue()
    assert code == 0, f"dvc {' '.join(args)} failed ({code}):\n{printed[-6000:]}"
    return printed


def _commit(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", message)


KEPT_FOLDER = "features/images/README.md"  # not an output: it keeps the folder evaluate reads


def make_repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding the pipeline's code with TINY parameters (one epoch)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for package in ("stages", "cxrfusion"):
        shutil.copytree(ROOT / package, repo / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", KEPT_FOLDER):
        if (ROOT / name).exists():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, DVC, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    _commit(repo, "pipeline")
    return repo


# what `dvc repro` writes that git tracks: left behind by copy_checkout, made again by the run
COMMITTED_OUTPUTS = ("dvc.lock", "data", "features", "metrics")


def copy_checkout(to: Path) -> Path:
    """The checkout as git sees it (tracked and new files, not the ignored ones: no venv, no
    cache, no model), without the outputs the pipeline commits (dvc.lock, metrics/, the
    prepared data's and images' summaries): code, docs, tests and parameters, edits included."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (name.split("/")[0] in COMMITTED_OUTPUTS and name != KEPT_FOLDER
                or not (ROOT / name).is_file()):
            continue
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, to / name)
    return to


# Stages run one after the other in one fresh process, each as its command says
# (`python -m stages.X ...`, or `python -m cxrfusion.launch 1 stages.X ...`, which runs it in
# that very process): one start of Python and torch for the whole pipeline instead of one a
# stage (about 3 s each), with the environment, and so the float rounding, of the stages `dvc
# repro` starts.
REMAKE = """
import runpy, sys
for command in sys.argv[1:]:
    words = command.split()
    module, args = words[words.index("-m") + 1], words[words.index("-m") + 2:]
    if module == "cxrfusion.launch":  # N (1 here: tested by the caller) and the stage's module
        module, args = args[1], args[2:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def remake(repo: Path, commands, extra_env: dict | None = None) -> None:
    """Run these stage commands (pipeline_commands' values, in that order) in `repo`, in one
    fresh process (REMAKE), with env() and `extra_env`."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["train"]["nproc"] == 1 and params["text"]["nproc"] == 1  # REMAKE's premise
    run(repo, str(VENV_BIN / "python"), "-c", REMAKE, *commands, extra_env=extra_env)


def pipeline_commands(repo: Path) -> dict[str, str]:
    """{stage: command} of every stage dvc.yaml expands to in `repo`, each after the stages
    whose outputs it reads (DVC's own graph of the pipeline)."""
    import networkx
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        order = reversed(list(networkx.topological_sort(dvc.index.graph)))
        return {stage.name: stage.cmd for stage in order}


def demo_repository(to: Path) -> Path:
    """copy_checkout with TINY's parameters (one epoch), the charts written for its runs, every
    stage of the pipeline run in the order `dvc repro` gives and recorded in dvc.lock by `dvc
    commit`, and README's results block copied from the run, all committed: the state `make
    repro` and a commit leave, made from this checkout's code. Its committed outputs agree with
    its README whatever this checkout's do (after a plain `dvc repro` here, comparison.md and
    README's block differ until committed).

    The stages run in one process (REMAKE), about a fifth of `dvc repro`'s time; `dvc repro`
    itself runs the whole pipeline in tests/test_mimic.py, and evaluate after a changed
    threshold in tests/test_pipeline.py."""
    copy_checkout(to)
    (to / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    charts.write(to / "params.yaml", to / charts.CHARTS)  # metrics/dvc.yaml: TINY's seeds
    run(to, "git", "init", "-q")
    _commit(to, "the pipeline")  # DVCLive reads the commit it logs against
    remake(to, pipeline_commands(to).values())
    dvc(to, "commit", "--force")  # dvc.lock: what each stage read and wrote
    readme = to / "README.md"  # what `make repro` does after `dvc repro`
    readme.write_text(results.into_readme(readme, (to / "metrics/comparison.md").read_text()))
    _commit(to, "the demo, run")
    return to
