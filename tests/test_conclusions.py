"""bench/conclusions.py: two comparison.json files, conclusion by conclusion."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("conclusions", Path(__file__).parents[1] / "bench/conclusions.py")
conclusions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conclusions)

METRICS = conclusions.METRICS


def _comparison(interval: tuple[float, float, float], model_mean: float = 0.8) -> dict:
    """One text input, one pair; every metric the same difference mean [low, high]."""
    mean, low, high = interval
    return {"differences": {"indication": {"fusion_minus_image": {
                m: {"mean": mean, "low": low, "high": high} for m in METRICS}}},
            "models": {"indication": {"fusion": {m: {"mean": model_mean} for m in METRICS}}}}


@pytest.mark.parametrize("a, b, same, same_sign", [
    ((+0.02, -0.05, +0.09), (-0.01, -0.07, +0.06), True, False),   # both hold zero: no finding
    ((+0.07, -0.01, +0.15), (+0.08, +0.001, +0.16), False, False),  # a bound crossed zero
    ((+0.10, +0.02, +0.18), (+0.12, +0.03, +0.20), True, True),    # both higher
    ((-0.10, -0.18, -0.02), (+0.10, +0.02, +0.18), False, False),  # lower against higher
])
def test_a_conclusion_is_what_the_interval_says(tmp_path, capsys, a, b, same, same_sign):
    paths = []
    for name, interval in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_comparison(interval, 0.8 if name == "a" else 0.83)))
    status = conclusions.main([str(p) for p in paths])
    out = capsys.readouterr().out
    n = len(METRICS)
    assert status == (0 if same else 1)
    assert f"{n if same else 0} of {n} conclusions the same" in out
    assert f"{n if same_sign else 0} of {n} with the same sign" in out
    assert "largest move of a model's seed-mean metric: 0.030" in out
