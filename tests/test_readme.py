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


if __name__ == "__main__":  # refresh the block from metrics/comparison.md
    path = ROOT / "README.md"
    table = (ROOT / "metrics" / "comparison.md").read_text()
    path.write_text(BLOCK.sub(lambda _: f"<!-- results: metrics/comparison.md -->\n{table}"
                                        "<!-- /results -->", path.read_text()))
