"""The check behind docs/demo.md's "Across CPU kernels" (README: "Does the answer hold?"):
compares two runs' metrics/comparison.json, verdict by verdict.

    python bench/conclusions.py A/metrics/comparison.json B/metrics/comparison.json

The rule. Only the AUROC differences are inferential: each comparison.json records, for every
text input and pair (fusion - image, fusion - text, text - image), the AUROC difference's
verdict (higher, lower, equivalent or inconclusive; cxrfusion/verdicts.py), and that verdict,
as each file records it, is the row's conclusion: this script never re-derives it from the
numbers. It prints both runs' AUROC difference, mean over seeds [1 - alpha interval], the
family-adjusted p (— outside the declared family), the verdict and whether it is the same;
"N of M AUROC verdicts the same" counts them, and the exit status is 1 when any verdict
differs (or a comparison is in one file only), else 0.

The other measures (AUPRC, sensitivity at the fixed specificity, sensitivity, specificity and
F1 at the validation threshold, Brier, ECE) are descriptive: no test, no verdict. For each it
prints both runs' mean [interval] and how far the mean moved, and counts how many intervals
read the same (above 0, below 0, or holding 0); that count never changes the exit status.
Last, the largest move of any model's seed-mean metric (over every metric both files hold).

Use it on two machines, or on one machine with two CPU kernel settings
(ATEN_CPU_CAPABILITY=default against the machine's own). A comparison.json of the old schema
(AUROC differences without a verdict) is refused, exit status 2: rerun `dvc repro`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrfusion.metrics import MEASURES  # noqa: E402
from cxrfusion.params import Comparison  # noqa: E402
from cxrfusion.results import p_value  # noqa: E402

PAIRS = tuple(c.key for c in Comparison.of_input(None))  # fusion_minus_image, ...
DESCRIPTIVE = tuple(m.name for m in MEASURES if m.name != "auroc")  # comparison.md's order;
# a measure the table does not hold (a file from another version) comes after these


class OldSchema(Exception):
    """A comparison.json written before the AUROC differences had verdicts."""


def load(path: Path) -> dict:
    result = json.loads(path.read_text())
    old = [f"{text_input}/{pair}" for text_input, pairs in result.get("differences", {}).items()
           for pair, d in pairs.items() if "verdict" not in d.get("auroc", {})]
    if old or not result.get("differences") or "question" not in result:
        where = (f": {old[0]}" + (f" and {len(old) - 1} more" if len(old) > 1 else "") if old
                 else "" if result.get("differences") else ": it holds none")
        question = "" if "question" in result else "; no declared question"
        raise OldSchema(
            f"{path} is a comparison.json of the old schema (its AUROC differences have no "
            f"verdict{where}{question}): rerun `dvc repro` so that stages/compare.py writes "
            "it anew, then compare again.")
    return result


def _pairs(result: dict) -> list[tuple[str, str]]:
    """(text input, pair) in the file's order, the known pairs first."""
    return [(i, pair) for i, pairs in result["differences"].items()
            for pair in sorted(pairs, key=lambda k: (PAIRS.index(k) if k in PAIRS else len(PAIRS),
                                                     k))]


def _cell(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def reading(d: dict) -> str:
    """What a descriptive interval reads: above 0, below 0, or holds 0."""
    return "above 0" if d["low"] > 0 else "below 0" if d["high"] < 0 else "holds 0"


def _interval(d) -> bool:
    return isinstance(d, dict) and {"mean", "low", "high"} <= d.keys()


def _label(pair: str) -> str:
    return Comparison.from_key(pair).ascii_label


def verdicts(a: dict, b: dict) -> tuple[list[str], int, int]:
    """The AUROC rows: (lines, how many the same, how many in all)."""
    lines = [(f"{'text input':20} {'difference':15} {'role':11} {'run A: AUROC':24} "
              f"{'adj. p':>7} {'verdict':13} {'run B: AUROC':24} {'adj. p':>7} {'verdict':13} "
              f"{'moved':>7}  same?")]
    same = total = 0
    keys = _pairs(a) + [k for k in _pairs(b) if k not in _pairs(a)]
    for text_input, pair in keys:
        da = a["differences"].get(text_input, {}).get(pair, {}).get("auroc")
        db = b["differences"].get(text_input, {}).get(pair, {}).get("auroc")
        total += 1
        if da is None or db is None:
            lines.append(f"{text_input:20} {_label(pair):15} {'':11} "
                         f"NO: in run {'B' if da is None else 'A'} only")
            continue
        ok = da["verdict"] == db["verdict"]
        same += ok
        role = da["role"] if da["role"] == db["role"] else f"{da['role']}/{db['role']}"
        lines.append(f"{text_input:20} {_label(pair):15} {role:11} {_cell(da):24} "
                     f"{p_value(da['p_adjusted']):>7} {da['verdict']:13} {_cell(db):24} "
                     f"{p_value(db['p_adjusted']):>7} {db['verdict']:13} "
                     f"{db['mean'] - da['mean']:+7.3f}  "
                     f"{'yes' if ok else 'NO: ' + da['verdict'] + ' / ' + db['verdict']}")
    return lines, same, total


def descriptive(a: dict, b: dict) -> tuple[list[str], int, int]:
    """The other measures' rows: (lines, how many intervals read the same, how many in all)."""
    lines = [(f"{'text input':20} {'difference':15} {'metric':27} {'run A':24} {'run B':24} "
              f"{'moved':>7}  interval reads the same?")]
    same = total = 0
    for text_input, pair in _pairs(a):
        ma = a["differences"][text_input][pair]
        mb = b["differences"].get(text_input, {}).get(pair, {})
        both = [m for m in ma if m != "auroc" and _interval(ma[m]) and _interval(mb.get(m))]
        both.sort(key=lambda m: (DESCRIPTIVE.index(m) if m in DESCRIPTIVE else len(DESCRIPTIVE), m))
        for metric in both:
            da, db = ma[metric], mb[metric]
            ok = reading(da) == reading(db)
            same += ok
            total += 1
            lines.append(f"{text_input:20} {_label(pair):15} {metric:27} {_cell(da):24} "
                         f"{_cell(db):24} {db['mean'] - da['mean']:+7.3f}  "
                         f"{'yes' if ok else 'no: ' + reading(da) + ' / ' + reading(db)}")
    return lines, same, total


def largest_move(a: dict, b: dict) -> tuple[float, str]:
    """The largest |B - A| of a model's seed-mean metric, over every metric both hold."""
    moved, where = 0.0, ""
    for text_input, models in a["models"].items():
        for variant, metrics in models.items():
            other = b["models"].get(text_input, {}).get(variant, {})
            for metric, m in metrics.items():
                if metric in other and m.get("mean") is not None \
                        and other[metric].get("mean") is not None:
                    move = abs(other[metric]["mean"] - m["mean"])
                    if move > moved:
                        moved, where = move, f"{variant}, {text_input}, {metric}"
    return moved, where


def questions(a: dict, b: dict) -> list[str]:
    """A note for each part of the declared question the two runs do not share."""
    qa, qb = a["question"], b["question"]
    return [f"note: the runs declare other {k}: {qa.get(k)!r} / {qb.get(k)!r}; their verdicts "
            "answer different questions" for k in ("primary", "family", "adjustment", "alpha",
                                                    "margin") if qa.get(k) != qb.get(k)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="run A's metrics/comparison.json")
    parser.add_argument("b", type=Path, help="run B's metrics/comparison.json")
    args = parser.parse_args(argv)
    try:
        a, b = load(args.a), load(args.b)
    except OldSchema as e:
        sys.stderr.write(f"refused: {e}\n")
        return 2
    auroc, same, total = verdicts(a, b)
    other, read_same, read_total = descriptive(a, b)
    moved, where = largest_move(a, b)
    levels = " / ".join(f"{1 - r['question']['alpha']:.0%}" for r in (a, b))
    out = [
        ("AUROC differences (inferential): mean over seeds [run A / run B interval: "
         f"{levels}], family-adjusted p (— : outside the family) and the verdict each file "
         "records"),
        "", *auroc, "",
        ("Other measures (descriptive: no test, no verdict; not part of the exit status): mean "
         "over seeds [interval]"),
        "", *other, "", *questions(a, b),
        (f"{same} of {total} AUROC verdicts the same (higher, lower, equivalent or "
         "inconclusive, as each file records them)"),
        (f"descriptive: {read_same} of {read_total} intervals read the same (above 0, below 0 "
         "or holding 0); they do not change the exit status"),
        (f"the largest move of a model's seed-mean metric: {moved:.3f}"
         + (f" ({where})" if where else "")),
    ]
    sys.stdout.write("\n".join(out) + "\n")
    return 0 if same == total else 1


if __name__ == "__main__":
    sys.exit(main())
