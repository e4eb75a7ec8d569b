"""README.md shows the results table as `compare` generated it, never retyped, and states no
result by hand."""
from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT

from cxrfusion.results import README_BLOCK as BLOCK
from cxrfusion.results import readme_block


def committed(path: str) -> str | None:
    """`path` as committed (git HEAD), or None outside a git checkout."""
    try:
        done = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True,
                              text=True)
    except FileNotFoundError:  # no git on this machine
        return None
    return done.stdout if done.returncode == 0 else None


@pytest.mark.committed
def test_readme_results_are_the_generated_table():
    """The block is the table as committed, or the workspace's table when `make repro` wrote
    both (it copies the table into README.md): a run on another machine, whose float sums give
    other third decimals, fails neither way; a block typed or left stale fails both."""
    found = BLOCK.search((ROOT / "README.md").read_text())
    assert found, "README.md lost its <!-- results: metrics/comparison.md --> block"
    tables = {readme_block(t) for t in (committed("metrics/comparison.md") or "",
                                         (ROOT / "metrics/comparison.md").read_text())}
    assert found.group(1) in tables, (
        "README.md's results are neither the committed metrics/comparison.md nor the "
        "workspace's: run `make repro` (or `python -m cxrfusion.results README.md`)")


@pytest.mark.committed
def test_the_counts_readme_states_are_the_outputs():
    """The headline's size, as README states it, is metrics/summary.json's."""
    import json
    import re

    def numbers(tree) -> int:
        if isinstance(tree, dict):
            return sum(numbers(v) for v in tree.values())
        return isinstance(tree, (int, float)) and not isinstance(tree, bool)

    summary = json.loads((ROOT / "metrics/summary.json").read_text())
    stated = re.search(r"verdict \((\d+) numbers\)", (ROOT / "README.md").read_text())
    # each arm's AUROC and each declared row: at most 60 (issue 36)
    assert stated and int(stated.group(1)) == numbers(summary) <= 60


def test_readme_states_no_result_by_hand():
    """Every sentence that states a result is inside the generated block, made from a verdict:
    outside it, no wording that reads an interval holding zero as no effect."""
    readme = BLOCK.sub("", (ROOT / "README.md").read_text()).lower()
    for words in ("level with", "adds nothing", "not above", "no difference", "the same as the "
                  "cnn", "does not help", "no effect"):
        assert words not in readme, f"README.md says {words!r} outside the generated results"


def test_the_demo_repository_starts_without_the_committed_outputs(tmp_path):
    """tests/test_pipeline.py's demo repository starts from this copy and makes every output
    itself: a checkout whose comparison.md a plain `dvc repro` rewrote (README's block still
    the committed one) lends it no table that disagrees with its README."""
    from repos import COMMITTED_OUTPUTS, KEPT_FOLDER, copy_checkout

    copy_checkout(tmp_path)
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text()
    assert (tmp_path / "stages/compare.py").is_file() and (tmp_path / "tests/conftest.py").is_file()
    assert (ROOT / "dvc.lock").is_file() and (ROOT / "metrics/comparison.md").is_file()
    assert not [path for path in COMMITTED_OUTPUTS if (tmp_path / path).exists()
                and path != KEPT_FOLDER.split("/")[0]]
    assert [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "features").rglob("*")
            if p.is_file()] == [KEPT_FOLDER]  # the folder's README, no output
