"""params.yaml, written from cxrfusion/params.py's sections: every option at its default, with
its description as the comment beside it, wrapped at WIDTH. `python -m cxrfusion.params_yaml
params.yaml` writes it (no argument: prints it); tests/test_params_yaml.py keeps the committed
file in step.
"""
from __future__ import annotations

import re
import sys
from dataclasses import fields
from pathlib import Path

from cxrfusion.params import SECTIONS, spelled

HEADER = ("Parameters of the pipeline. The defaults run the offline synthetic demo on 2 CPU cores "
          "in a few minutes. The real study (IU X-ray, BioBERT, ImageNet weights, 240 px, 40 "
          "epochs) is one `dvc exp run` away: see docs/real-study.md, \"Running the real "
          "study\". Written by `python -m cxrfusion.params_yaml params.yaml` from "
          "cxrfusion/params.py, which describes every option once: edit a description there, "
          "not here.")
WIDTH = 100      # params.yaml's lines end by this column
COMMENT_AT = 26  # ...and its comments start at column 27 (0-based 26)
FLOW_LIST = 50   # a list whose `  name: [...]` is longer is written one item a line


def section_doc(described) -> str:
    """A section's description: its dataclass's docstring (not the signature @dataclass writes
    for a class that has none)."""
    doc = described.__doc__ or ""
    if doc.startswith(described.__name__ + "("):
        raise ValueError(f"{described.__name__} has no docstring: params.yaml describes each "
                         "section with it")
    return " ".join(doc.split())


def _words(doc: str) -> list[str]:
    """A description's words; a quoted phrase, a `command` and a reference (docs/<page>.md,
    "Heading") stay on one line."""
    words = []
    for word in re.findall(r'[^\s"`]*(?:"[^"]*"|`[^`]*`)\S*|\S+', " ".join(doc.split())):
        if words and words[-1].endswith(".md,") and word.startswith('"'):
            words[-1] += " " + word
        else:
            words.append(word)
    return words


def _commented(lefts: list[str], doc: str) -> list[str]:
    """`lefts` (a key and its value, or a list's lines) with `doc` as the comment beside them,
    from column 27 (or 3 spaces after the longest line that reaches it), wrapped at WIDTH; its
    continuation lines begin `#   `, on lines of their own once `lefts` run out."""
    words, lines = _words(doc), []
    beyond = max((len(left) + 3 for left in lefts if len(left) + 2 > COMMENT_AT), default=0)
    for i in range(max(len(lefts), 1) + len(words)):
        left = lefts[i] if i < len(lefts) else ""
        if not words:
            if left:
                lines.append(left)
            continue
        start = COMMENT_AT if len(left) + 2 <= COMMENT_AT else beyond
        line = left.ljust(start) + ("# " if i == 0 else "#   ") + words.pop(0)
        while words and len(line) + 1 + len(words[0]) <= WIDTH:
            line += " " + words.pop(0)
        lines.append(line)
    return lines


def _option(name: str, value) -> list[str]:
    """`  name: value`, a long list one item a line, or a mapping of mappings (encoders) one
    key a line, each setting below it."""
    if isinstance(value, dict) and value:
        return [f"  {name}:"] + [line for key, inner in value.items()
                                 for line in [f"    {key}:"] + [f"      {k}: {spelled(v)}"
                                                               for k, v in inner.items()]]
    line = f"  {name}: {spelled(value)}"
    if not isinstance(value, (list, tuple)) or not value or len(line) <= FLOW_LIST:
        return [line]
    return [f"  {name}:"] + [f"    - {spelled(item)}" for item in value]


def render_yaml() -> str:
    """params.yaml: every section and option at its default, each described by its doc."""
    lines = []
    for word in _words(HEADER):
        if lines and len(lines[-1]) + 1 + len(word) <= WIDTH:
            lines[-1] += " " + word
        else:
            lines.append("# " + word)
    for section, described in SECTIONS.items():
        lines += ["", *_commented([f"{section}:"], section_doc(described))]
        for f in fields(described):
            lines += _commented(_option(f.name, f.default), f.metadata["doc"])
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """No argument: params.yaml's text; PATH: written there."""
    if len(argv) > 1:
        sys.exit("usage: python -m cxrfusion.params_yaml [PATH]")
    if argv:
        Path(argv[0]).write_text(render_yaml())
    else:
        sys.stdout.write(render_yaml())


if __name__ == "__main__":
    main(sys.argv[1:])
