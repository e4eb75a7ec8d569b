"""README's two commands in either order on another machine: the demo repro under other float
rounding (no vector kernels, one thread, as on a machine whose CPU sums in another order), then
the suite's checks of the workspace, in that copy."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

VENV_BIN = Path(sys.executable).parent
WORKSPACE_CHECKS = ["tests/test_readme.py", "tests/test_lock.py", "tests/test_charts.py",
                    "tests/test_paths.py"]


def _copy(to: Path) -> None:
    """The checkout as git sees it (tracked and new files, not the ignored ones) and committed
    there, so that its HEAD is the tables this checkout commits."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, to / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run(["git", *args], cwd=to, check=True, capture_output=True)


@pytest.mark.slow
def test_the_workspace_checks_pass_after_a_repro_with_other_rounding(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    _copy(copy)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1", ATEN_CPU_CAPABILITY="default",
               OMP_NUM_THREADS="1", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="t@example.org")
    before = (copy / "metrics/predictions/image/seed-0.csv").read_bytes()
    done = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    # the premise: other rounding, other outputs (else this test shows nothing)
    assert (copy / "metrics/predictions/image/seed-0.csv").read_bytes() != before
    checks = subprocess.run([str(VENV_BIN / "python"), "-m", "pytest", "-q", "-p",
                             "no:cacheprovider", *WORKSPACE_CHECKS], cwd=copy, env=env,
                            capture_output=True, text=True, timeout=600)
    assert checks.returncode == 0, (checks.stdout + checks.stderr)[-4000:]
