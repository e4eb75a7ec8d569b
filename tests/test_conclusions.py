"""bench/conclusions.py: two comparison.json files, AUROC verdict by AUROC verdict; the other
measures descriptive."""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "conclusions", Path(__file__).parents[1] / "bench/conclusions.py")
conclusions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conclusions)

INPUTS = ("findings+impression", "indication")
PAIRS = ("fusion_minus_image", "fusion_minus_text", "text_minus_image")
VERDICTS = {  # (text input, pair) -> the verdict run A records
    ("findings+impression", "fusion_minus_image"): "higher",
    ("findings+impression", "fusion_minus_text"): "equivalent",
    ("findings+impression", "text_minus_image"): "inconclusive",
    ("indication", "fusion_minus_image"): "inconclusive",
    ("indication", "fusion_minus_text"): "higher",
    ("indication", "text_minus_image"): "lower",
}


def _interval(mean: float, low: float, high: float) -> dict:
    return {"mean": mean, "low": low, "high": high, "seed-0": mean - 0.01, "seed-1": mean + 0.01}


def _comparison() -> dict:
    """Two text inputs x three pairs: six AUROC rows with verdicts; two descriptive measures
    (F1 above 0, Brier holding 0) per pair; DeLong, which is no measure; three models."""
    family = [f"{pair.replace('_minus_', '-')}/{i}" for i, pair in VERDICTS]
    differences = {i: {} for i in INPUTS}
    for (i, pair), verdict in VERDICTS.items():
        name = f"{pair.replace('_minus_', '-')}/{i}"
        differences[i][pair] = {
            "auroc": {**_interval(0.05, -0.02, 0.12), "p": 0.2, "p_adjusted": 0.4,
                      "p_equivalence": 0.3, "equivalence_interval": {"low": -0.01, "high": 0.1},
                      "role": "primary" if name == "fusion-image/indication" else "secondary",
                      "verdict": verdict, "design": {"se": 0.03, "detectable": 0.1}},
            "f1": _interval(0.10, 0.02, 0.18),
            "brier": _interval(-0.01, -0.04, 0.02),
            "delong": {"ensemble": {"difference": 0.05, "p": 0.1},
                       "seed-0": {"difference": 0.04, "p": 0.2}},
        }
    models = {i: {v: {"auroc": {**_interval(0.8, 0.7, 0.9), "sd": 0.01},
                      "f1": {**_interval(0.7, 0.6, 0.8), "sd": 0.02}}
                  for v in ("fusion", "image", "text")} for i in INPUTS}
    return {"question": {"primary": "fusion-image/indication", "family": family,
                         "adjustment": "holm", "alpha": 0.05, "margin": 0.05,
                         "answer": "Not shown either way."},
            "differences": differences, "models": models}


def _run(tmp_path, capsys, a: dict, b: dict) -> tuple[int, str, str]:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, result in zip(paths, (a, b)):
        path.write_text(json.dumps(result))
    status = conclusions.main([str(p) for p in paths])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _row(out: str, *words: str) -> str:
    """The one output line that holds every word."""
    found = [line for line in out.splitlines() if all(w in line for w in words)]
    assert len(found) == 1, (words, found)
    return found[0]


def test_the_same_verdicts_hold(tmp_path, capsys):
    a = _comparison()
    b = copy.deepcopy(a)
    b["differences"]["indication"]["fusion_minus_image"]["auroc"]["mean"] = 0.07  # moved only
    status, out, _ = _run(tmp_path, capsys, a, b)
    assert status == 0
    assert "6 of 6 AUROC verdicts the same" in out
    assert "descriptive: 12 of 12 intervals read the same" in out
    row = _row(out, "indication", "fusion - image", "primary")
    assert "+0.050 [-0.020, +0.120]" in row and "+0.070 [-0.020, +0.120]" in row
    assert row.endswith("+0.020  yes")
    assert row.count("inconclusive") == 2 and row.count("0.400") == 2
    assert "delong" not in out  # DeLong is kept in the file, not a measure to compare


def test_one_verdict_differs(tmp_path, capsys):
    a = _comparison()
    b = copy.deepcopy(a)
    row = b["differences"]["findings+impression"]["fusion_minus_text"]["auroc"]
    row["verdict"] = "inconclusive"
    status, out, _ = _run(tmp_path, capsys, a, b)
    assert status == 1
    assert "5 of 6 AUROC verdicts the same" in out
    assert _row(out, "findings+impression", "fusion - text", "secondary").endswith(
        "NO: equivalent / inconclusive")


def test_the_verdict_is_read_not_re_derived(tmp_path, capsys):
    """An interval that excludes zero in one run and not in the other is no difference when
    both files record the same verdict; numbers that match are one when the verdicts do not."""
    a = _comparison()
    b = copy.deepcopy(a)
    b["differences"]["indication"]["text_minus_image"]["auroc"].update(low=0.01, high=0.2)
    assert _run(tmp_path, capsys, a, b)[0] == 0
    b = copy.deepcopy(a)
    b["differences"]["indication"]["text_minus_image"]["auroc"]["verdict"] = "higher"
    status, out, _ = _run(tmp_path, capsys, a, b)
    assert status == 1 and "5 of 6 AUROC verdicts the same" in out
    assert _row(out, "indication", "text - image", "secondary").endswith("NO: lower / higher")


def test_a_comparison_in_one_run_only_differs(tmp_path, capsys):
    a = _comparison()
    b = copy.deepcopy(a)
    del b["differences"]["indication"]["text_minus_image"]
    status, out, _ = _run(tmp_path, capsys, a, b)
    assert status == 1
    assert "5 of 6 AUROC verdicts the same" in out
    assert _row(out, "indication", "text - image", "NO:").endswith("NO: in run A only")
    assert "descriptive: 10 of 10 intervals read the same" in out


def test_a_descriptive_interval_that_crosses_zero_is_counted_not_judged(tmp_path, capsys):
    a = _comparison()
    b = copy.deepcopy(a)
    b["differences"]["indication"]["fusion_minus_text"]["f1"].update(mean=0.05, low=-0.01)
    status, out, _ = _run(tmp_path, capsys, a, b)
    assert status == 0
    assert "6 of 6 AUROC verdicts the same" in out
    assert "descriptive: 11 of 12 intervals read the same" in out
    row = _row(out, "indication", "fusion - text", " f1 ")
    assert "+0.100 [+0.020, +0.180]" in row and "+0.050 [-0.010, +0.180]" in row
    assert row.endswith("-0.050  no: above 0 / holds 0")


def test_only_measures_both_files_hold_are_compared(tmp_path, capsys):
    a = _comparison()
    b = copy.deepcopy(a)
    for pairs in b["differences"].values():
        for d in pairs.values():
            del d["brier"]
    status, out, _ = _run(tmp_path, capsys, a, b)
    assert status == 0
    assert "descriptive: 6 of 6 intervals read the same" in out
    assert " brier " not in out


@pytest.mark.parametrize("old_in", ["a", "b"])
def test_the_old_schema_is_refused(tmp_path, capsys, old_in):
    old = _comparison()
    del old["question"]
    for pairs in old["differences"].values():
        for d in pairs.values():
            del d["auroc"]["verdict"]
            d["auroc"]["excludes_zero"] = False
    new = _comparison()
    status, out, err = _run(tmp_path, capsys, *((old, new) if old_in == "a" else (new, old)))
    assert status == 2
    assert out == ""
    assert err == (f"refused: {tmp_path / (old_in + '.json')} is a comparison.json of the old "
                   "schema (its AUROC differences have no verdict: "
                   "findings+impression/fusion_minus_image and 5 more; no declared question): "
                   "rerun `dvc repro` so that stages/compare.py writes it anew, then compare "
                   "again.\n")


def test_the_largest_move_of_a_models_seed_mean_metric(tmp_path, capsys):
    a = _comparison()
    b = copy.deepcopy(a)
    b["models"]["indication"]["fusion"]["f1"]["mean"] = 0.73            # +0.030: the largest
    b["models"]["findings+impression"]["text"]["auroc"]["mean"] = 0.78  # -0.020
    b["models"]["indication"]["image"]["ece"] = {"mean": 0.9}           # in B only: not compared
    status, out, _ = _run(tmp_path, capsys, a, b)
    assert status == 0
    assert out.splitlines()[-1] == ("the largest move of a model's seed-mean metric: 0.030 "
                                    "(fusion, indication, f1)")


def test_a_different_declared_question_is_noted(tmp_path, capsys):
    a = _comparison()
    b = copy.deepcopy(a)
    b["question"]["margin"] = 0.1
    status, out, _ = _run(tmp_path, capsys, a, b)
    assert status == 0
    assert ("note: the runs declare other margin: 0.05 / 0.1; their verdicts answer different "
            "questions") in out
    assert "primary:" not in out
