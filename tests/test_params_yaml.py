"""params.yaml is written from cxrfusion/params.py, which describes every option once: the file's
values are the described defaults and its comments the descriptions, never typed by hand."""
from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from conftest import ROOT

from cxrfusion import params, params_yaml


def _typed(tree):
    """A parsed tree with the type of every value and the order of every mapping."""
    if isinstance(tree, dict):
        return [(key, _typed(value)) for key, value in tree.items()]
    if isinstance(tree, (list, tuple)):
        return ["list", [_typed(item) for item in tree]]
    return [type(tree).__name__, tree]


@pytest.mark.committed
def test_params_yaml_is_what_params_py_writes():
    assert (ROOT / "params.yaml").read_text() == params_yaml.render_yaml(), (
        "params.yaml is not what cxrfusion/params.py writes: edit descriptions and defaults in "
        "cxrfusion/params.py, then run `python -m cxrfusion.params_yaml params.yaml`")


def test_the_written_file_reads_back_as_the_defaults_types_and_order_included():
    written = params_yaml.render_yaml()
    assert _typed(yaml.safe_load(written)) == _typed(params.defaults())
    long = [line for line in written.splitlines() if len(line) > params_yaml.WIDTH]
    assert not long, f"lines longer than {params_yaml.WIDTH}: {long}"


def test_every_option_and_section_is_described():
    for section, described in params.SECTIONS.items():
        assert params_yaml.section_doc(described).strip(), f"section {section} has no description"
        for f in dataclasses.fields(described):
            assert f.metadata["doc"].strip(), f"{section}.{f.name} has no description"


def test_a_section_without_a_docstring_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Bare:
        x: int = params.option(1, params.positive_int, "an option")

    try:
        params_yaml.section_doc(Bare)
    except ValueError as e:
        assert "Bare has no docstring" in str(e)
    else:
        raise AssertionError("a section without a docstring was described by its signature")


def test_a_changed_description_changes_the_file(monkeypatch):
    before = params_yaml.render_yaml()
    option = dataclasses.fields(params.Augment)[0]  # augment.rotation
    changed = {**option.metadata, "doc": "a description written by this test"}
    monkeypatch.setattr(option, "metadata", changed)
    after = params_yaml.render_yaml()
    assert after != before
    assert "  rotation: 10            # a description written by this test\n" in after
    monkeypatch.setattr(params.StudyReport, "__doc__", "a section description written by this "
                        "test")
    assert "study_report:             # a section description written by this test\n" in (
        params_yaml.render_yaml())


def test_values_are_spelled_as_yaml_reads_them():
    for value in ("none", "null", "true", "10", "a: b", "#x", "", "fusion-image/indication",
                  1e-05, 0.0, 10, None, False, ["a, b", "c"], ("x",)):
        read = yaml.safe_load(f"key: {params.spelled(value)}  # a comment")["key"]
        expected = list(value) if isinstance(value, tuple) else value
        assert _typed(read) == _typed(expected), (value, params.spelled(value))
    assert params.spelled("none") == "none" and params.spelled("null") == "'null'"


def test_the_command_prints_and_writes_the_file(tmp_path, capsys):
    params_yaml.main([])
    assert capsys.readouterr().out == params_yaml.render_yaml()
    params_yaml.main([str(tmp_path / "params.yaml")])
    assert (tmp_path / "params.yaml").read_text() == params_yaml.render_yaml()
    params.main([])
    assert capsys.readouterr().out == params.describe() + "\n"


# --- the docs name and state the options as params.py describes them ----------------------------

FILE_SUFFIXES = {"json", "py", "safetensors", "yaml", "csv", "h5", "md", "png"}  # counts.json...


def test_the_docs_name_only_options_that_exist():
    """A `section.option` in README.md or docs/ is one params.py describes: a renamed or removed
    option cannot live on in the prose."""
    described = {f"{s}.{f.name}" for s, c in params.SECTIONS.items() for f in dataclasses.fields(c)}
    unknown = []
    for path in [ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")]:
        for section, key in re.findall(r"`([a-z_]+)\.([a-z_]+)(?:[=:][^`]*)?`", path.read_text()):
            name = f"{section}.{key}"
            if section in params.SECTIONS and key not in FILE_SUFFIXES and name not in described:
                unknown.append(f"{path.relative_to(ROOT)}: {name}")
    assert not unknown, f"the docs name options params.py does not describe: {unknown}"


def _table_rows(text: str) -> list[tuple[list[str], str]]:
    """docs/options.md's table: each row's options (`.x` continues the section before it) and
    its values cell."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) != 3 or not cells[0].startswith("`") or "." not in cells[0]:
            continue
        names, section = [], None
        for section_name, key in re.findall(r"`(?:([a-z_]+))?\.([a-z_]+)", cells[0]):
            section = section_name or section
            names.append(f"{section}.{key}")
        rows.append((names, cells[1]))
    return rows


def test_the_options_table_states_the_described_defaults():
    """docs/options.md's "values (default first)": the first value of each row is the option's
    default in params.py (a row of several options lists each one's, in order)."""
    rows = _table_rows((ROOT / "docs" / "options.md").read_text())
    assert len(rows) >= 6
    checked = 0
    for names, values in rows:
        defaults = [params.get(params.defaults(), name) for name in names]
        if len(names) > 1 and values.count(",") == len(names) - 1:  # one default per option
            stated = [float(v.strip().rstrip("°")) for v in values.split(",")]
            assert stated == [float(d) for d in defaults], (names, values)
            checked += 1
        elif len(names) == 1:
            first = values.split("\\|")[0].strip()
            literal = re.fullmatch(r"`([^`]*)`|(\d+(?:\.\d+)?)", first)
            if literal:
                assert yaml.safe_load(literal[1] or literal[2]) == defaults[0], (names, values)
                checked += 1
    assert checked >= 5, f"only {checked} rows state a default the test could read"
