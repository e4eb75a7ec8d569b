"""README.md shows the results table as `compare` generated it, never retyped."""
from __future__ import annotations

import re

from conftest import ROOT

BLOCK = re.compile(r"<!-- results: metrics/comparison\.md -->\n(.*?)<!-- /results -->", re.S)


def test_readme_results_are_the_generated_table():
    readme = (ROOT / "README.md").read_text()
    found = BLOCK.search(readme)
    assert found, "README.md lost its <!-- results: metrics/comparison.md --> block"
    assert found.group(1) == (ROOT / "metrics" / "comparison.md").read_text(), (
        "README.md's results differ from metrics/comparison.md: after `dvc repro`, copy the file "
        "into the block (python tests/test_readme.py)")


def test_readme_states_no_result_by_hand():
    """Every sentence that states a result is inside the generated block, made from a verdict:
    outside it, no wording that reads an interval holding zero as no effect."""
    readme = BLOCK.sub("", (ROOT / "README.md").read_text()).lower()
    for words in ("level with", "adds nothing", "not above", "no difference", "the same as the "
                  "cnn", "does not help", "no effect"):
        assert words not in readme, f"README.md says {words!r} outside the generated results"


if __name__ == "__main__":  # refresh the block from metrics/comparison.md
    path = ROOT / "README.md"
    table = (ROOT / "metrics" / "comparison.md").read_text()
    path.write_text(BLOCK.sub(lambda _: f"<!-- results: metrics/comparison.md -->\n{table}"
                                        "<!-- /results -->", path.read_text()))
