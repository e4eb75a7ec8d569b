"""Sharing through DVC (docs/sharing.md) and sweeps on DVC's queue (docs/sweeps.md), on a tiny
project that runs the first stages only (seconds): push to a local folder remote, a clone that
pulls and finds nothing to rerun but `download`; an experiment pushed to a bare Git repository
and pulled by another clone; one queued experiment run by a worker, then the workers stopped."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from repos import DVC, dvc, env, make_repo
from repos import run as _run
from repos import run_stdout as _run_stdout

FIRST = ("download", "prepare")  # stages that cache outputs (studies.csv, images.csv)


@pytest.fixture(scope="module")
def first_stages(tmp_path_factory) -> Path:
    """The tiny pipeline with its first stages run and committed, a bare Git repository as
    `origin` and a local folder as its default DVC remote (in .dvc/config.local): made once,
    copied by `project`."""
    repo = make_repo(tmp_path_factory.mktemp("sharing"))
    dvc(repo, "repro", *FIRST)
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "first stages")
    origin = repo.parent / "origin.git"
    _run(repo.parent, "git", "init", "-q", "--bare", str(origin))
    _run(repo, "git", "remote", "add", "origin", str(origin))
    _run(repo, "git", "push", "-q", "origin", "HEAD:main")
    dvc(repo, "remote", "add", "--local", "--default", "shared", str(repo.parent / "remote"))
    return repo


@pytest.fixture
def project(first_stages: Path, tmp_path: Path) -> Path:
    """first_stages and its `origin`, copied for one test, its remotes pointing at the copies."""
    shutil.copytree(first_stages.parent, tmp_path, symlinks=True, dirs_exist_ok=True)
    repo = tmp_path / first_stages.name
    _run(repo, "git", "remote", "set-url", "origin", str(tmp_path / "origin.git"))
    local = repo / ".dvc/config.local"
    local.write_text(local.read_text().replace(str(first_stages.parent), str(tmp_path)))
    assert str(tmp_path / "remote") in local.read_text()
    return repo


def _clone(project: Path, name: str) -> Path:
    clone = project.parent / name
    _run(project.parent, "git", "clone", "-q", "--branch", "main",
         str(project.parent / "origin.git"), str(clone))
    dvc(clone, "remote", "add", "--local", "--default", "shared",
         str(project.parent / "remote"))
    return clone


def _refs(repo: Path, prefix: str, suffix: str) -> list[str]:
    listed = _run_stdout(repo, "git", "for-each-ref", "--format=%(refname)", prefix)
    return [ref for ref in listed.split() if ref.endswith(suffix)]


def test_push_clone_pull(project):
    assert (project / ".dvc/config.local").exists()       # the personal path: not committed
    assert "shared" not in (project / ".dvc/config").read_text()
    dvc(project, "push")
    assert any((project.parent / "remote").rglob("*"))   # the cache is on the remote
    clone = _clone(project, "second")
    assert not (clone / "data/prepared/studies.csv").exists()
    dvc(clone, "pull", *FIRST)
    assert (clone / "data/prepared/studies.csv").read_bytes() == (
        project / "data/prepared/studies.csv").read_bytes()
    # data/raw is not cached: it is all that is missing, and `download` makes it again, the
    # same bytes, so that nothing after it reruns
    stale = json.loads(_run_stdout(clone, DVC, "status", "--json", *FIRST))
    assert stale == {"download": [{"changed outs": {"data/raw": "deleted"}}],
                     "prepare": [{"changed deps": {"data/raw": "deleted"}}]}, stale
    again = dvc(clone, "repro", *FIRST)
    assert "Running stage 'download'" in again and "Running stage 'prepare'" not in again
    assert json.loads(_run_stdout(clone, DVC, "status", "--json", *FIRST)) == {}


def test_experiments_travel_through_a_git_remote(project):
    dvc(project, "exp", "run", "-n", "split43", "-S", "split.seed=43", "prepare")
    dvc(project, "exp", "push", "origin", "split43")
    clone = _clone(project, "third")
    assert "split43" in dvc(clone, "exp", "list", "origin")
    dvc(clone, "exp", "pull", "origin", "split43")
    shown = json.loads(_run_stdout(clone, DVC, "exp", "show", "--json"))
    names = [e.get("name") for rev in shown for e in (rev.get("experiments") or [])
             for e in (e.get("revs") or [])]
    assert "split43" in names, shown


def test_a_queued_experiment_runs_and_the_workers_stop(project):
    dvc(project, "exp", "run", "--queue", "-n", "queued44", "-S", "split.seed=44",
         "prepare")
    assert "queued44" in dvc(project, "queue", "status")
    # output to a file, not a pipe: the worker it starts writes to the same output until it
    # ends (10 s after the queue is empty), and a pipe would hold this call until then
    log = project.parent / "queue-start.log"
    with open(log, "w") as out:
        done = subprocess.run([DVC, "queue", "start", "--jobs", "1"], cwd=project, env=env(),
                              stdout=out, stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 0, log.read_text()
    try:
        # wait for the experiment's ref (git, milliseconds a look), asking DVC (a second or two
        # a look) only every few seconds whether it failed
        deadline, asked = time.monotonic() + 240, time.monotonic()
        while time.monotonic() < deadline and not _refs(project, "refs/exps/", "/queued44"):
            if time.monotonic() - asked > 5:
                asked = time.monotonic()
                assert "Failed" not in dvc(project, "queue", "status")
            time.sleep(0.25)
        # the ref is written a moment before the worker marks its task done: ask until it has
        status = dvc(project, "queue", "status")
        while time.monotonic() < deadline and "Running" in status:
            time.sleep(1)
            status = dvc(project, "queue", "status")
        assert "queued44" in status and "Success" in status, status
    finally:
        dvc(project, "queue", "stop", "--kill")
    assert "split.seed" in dvc(project, "exp", "show", "--only-changed", "--csv")
