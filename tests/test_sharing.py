"""Sharing through DVC (docs/sharing.md) and sweeps on DVC's queue (docs/sweeps.md), on a tiny
project that runs the first stages only (seconds): push to a local folder remote, a clone that
pulls and finds nothing to rerun but `download`; an experiment pushed to a bare Git repository
and pulled by another clone; one queued experiment run by a worker, then the workers stopped."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from test_pipeline import VENV_BIN, _run, _run_stdout, make_repo

DVC = str(VENV_BIN / "dvc")
FIRST = ("download", "prepare")  # stages that cache outputs (studies.csv, images.csv)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The tiny pipeline with its first stages run and committed, a bare Git repository as
    `origin` and a local folder as its default DVC remote (in .dvc/config.local)."""
    repo = make_repo(tmp_path)
    _run(repo, DVC, "repro", *FIRST)
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "first stages")
    origin = repo.parent / "origin.git"
    _run(repo.parent, "git", "init", "-q", "--bare", str(origin))
    _run(repo, "git", "remote", "add", "origin", str(origin))
    _run(repo, "git", "push", "-q", "origin", "HEAD:main")
    _run(repo, DVC, "remote", "add", "--local", "--default", "shared", str(repo.parent / "remote"))
    return repo


def _clone(project: Path, name: str) -> Path:
    clone = project.parent / name
    _run(project.parent, "git", "clone", "-q", "--branch", "main",
         str(project.parent / "origin.git"), str(clone))
    _run(clone, DVC, "remote", "add", "--local", "--default", "shared",
         str(project.parent / "remote"))
    return clone


def test_push_clone_pull(project):
    assert (project / ".dvc/config.local").exists()       # the personal path: not committed
    assert "shared" not in (project / ".dvc/config").read_text()
    _run(project, DVC, "push")
    assert any((project.parent / "remote").rglob("*"))   # the cache is on the remote
    clone = _clone(project, "second")
    assert not (clone / "data/prepared/studies.csv").exists()
    _run(clone, DVC, "pull", *FIRST)
    assert (clone / "data/prepared/studies.csv").read_bytes() == (
        project / "data/prepared/studies.csv").read_bytes()
    # data/raw is not cached: it is all that is missing, and `download` makes it again, the
    # same bytes, so that nothing after it reruns
    stale = json.loads(_run_stdout(clone, DVC, "status", "--json", *FIRST))
    assert stale == {"download": [{"changed outs": {"data/raw": "deleted"}}],
                     "prepare": [{"changed deps": {"data/raw": "deleted"}}]}, stale
    again = _run(clone, DVC, "repro", *FIRST)
    assert "Running stage 'download'" in again and "Running stage 'prepare'" not in again
    assert json.loads(_run_stdout(clone, DVC, "status", "--json", *FIRST)) == {}


def test_experiments_travel_through_a_git_remote(project):
    _run(project, DVC, "exp", "run", "-n", "split43", "-S", "split.seed=43", "prepare")
    _run(project, DVC, "exp", "push", "origin", "split43")
    clone = _clone(project, "third")
    assert "split43" in _run(clone, DVC, "exp", "list", "origin")
    _run(clone, DVC, "exp", "pull", "origin", "split43")
    shown = json.loads(_run_stdout(clone, DVC, "exp", "show", "--json"))
    names = [e.get("name") for rev in shown for e in (rev.get("experiments") or [])
             for e in (e.get("revs") or [])]
    assert "split43" in names, shown


def test_a_queued_experiment_runs_and_the_workers_stop(project):
    _run(project, DVC, "exp", "run", "--queue", "-n", "queued44", "-S", "split.seed=44",
         "prepare")
    assert "queued44" in _run(project, DVC, "queue", "status")
    _run(project, DVC, "queue", "start", "--jobs", "1")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = _run(project, DVC, "queue", "status")
            if "queued44" in status and ("Success" in status or "Failed" in status):
                break
            time.sleep(2)
        assert "Success" in status, status
    finally:
        _run(project, DVC, "queue", "stop", "--kill")
    assert "split.seed" in _run(project, DVC, "exp", "show", "--only-changed", "--csv")
