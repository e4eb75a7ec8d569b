"""Does the answer hold? Compare two runs' metrics/comparison.json, difference by difference.

    python bench/conclusions.py A/metrics/comparison.json B/metrics/comparison.json

For every text input, pair (fusion - image, fusion - text, text - image) and metric, prints
both runs' mean difference over seeds and 95 % interval, how far the mean moved, and whether
the conclusion is the same. A conclusion is what the interval says: higher (it lies above
zero), lower (below zero), or no difference shown (it holds zero); the sign of a mean whose
interval holds zero is no finding, so two runs that disagree only there agree. The stricter
count (sign of the mean, and whether the interval excludes zero) is printed too. Also the
largest move of any model's seed-mean metric. Use it on two machines, or on one machine with
two CPU kernel settings (ATEN_CPU_CAPABILITY=default against the machine's own); exit status
1 when any conclusion differs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("auroc", "auprc", "f1", "sensitivity_at_specificity")


def conclusion(d: dict) -> str:
    return "higher" if d["low"] > 0 else "lower" if d["high"] < 0 else "no difference shown"


def strict(d: dict) -> str:
    sign = "+" if d["mean"] > 0 else "-" if d["mean"] < 0 else "0"
    return sign + (" excludes 0" if d["low"] > 0 or d["high"] < 0 else " includes 0")


def compare(a: dict, b: dict) -> tuple[list[str], int, int, float]:
    lines, differ, signs, moved = [], 0, 0, 0.0
    header = f"{'text input':20} {'difference':20} {'metric':27} {'run A':26} {'run B':26} {'moved':>7}  same?"
    lines.append(header)
    for text_input, pairs in a["differences"].items():
        for pair, metrics in pairs.items():
            for metric in METRICS:
                da, db = metrics[metric], b["differences"][text_input][pair][metric]
                same = conclusion(da) == conclusion(db)
                differ += not same
                signs += strict(da) != strict(db)
                cell = lambda d: f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"  # noqa: E731
                lines.append(f"{text_input:20} {pair.replace('_minus_', ' - '):20} {metric:27} "
                             f"{cell(da):26} {cell(db):26} {db['mean'] - da['mean']:+7.3f}  "
                             f"{'yes' if same else 'NO: ' + conclusion(da) + ' / ' + conclusion(db)}")
    for text_input, models in a["models"].items():
        for variant, metrics in models.items():
            for metric in METRICS:
                moved = max(moved, abs(b["models"][text_input][variant][metric]["mean"]
                                       - metrics[metric]["mean"]))
    return lines, differ, signs, moved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="run A's metrics/comparison.json")
    parser.add_argument("b", type=Path, help="run B's metrics/comparison.json")
    args = parser.parse_args(argv)
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    lines, differ, signs, moved = compare(a, b)
    total = len(lines) - 1
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.write(f"\n{total - differ} of {total} conclusions the same (higher, lower, or no "
                     f"difference shown); {total - signs} of {total} with the same sign of the "
                     f"mean and the same answer to whether the interval excludes zero; the "
                     f"largest move of a model's seed-mean metric: {moved:.3f}\n")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
