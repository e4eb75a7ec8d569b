"""bench/options.py's table and its generated readings, from hand-made comparisons: a file kept
before the placebo shows dashes, and every sentence is made from a kept verdict."""
from __future__ import annotations

import sys

from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import options  # noqa: E402


def _comparison(image: float, gain: float, verdict: str, placebo: bool = True) -> dict:
    def cell(mean, verdict=None, role="secondary"):
        out = {"mean": mean, "low": mean - 0.1, "high": mean + 0.1}
        return {"auroc": {**out, **({"verdict": verdict, "role": role} if verdict else {})},
                "f1": out}
    models = {v: {"auroc": {"mean": a}} for v, a in
              (("image", image), ("text", 0.6), ("fusion", image + gain))}
    differences = {"fusion_minus_image": cell(gain, verdict, "primary"),
                   "fusion_minus_text": cell(0.2, "higher")}
    if placebo:
        models["shuffled"] = {"auroc": {"mean": image}}
        differences["fusion_minus_shuffled"] = cell(gain, "inconclusive", "exploratory")
    return {"models": {"indication": models}, "differences": {"indication": differences},
            "question": {"family": []}}


def test_rows_show_dashes_for_a_file_kept_before_the_placebo():
    old = options.rows("old", "`x`", _comparison(0.7, 0.1, "higher", placebo=False))
    new = options.rows("new", "`x`", _comparison(0.7, 0.1, "higher"))
    assert old[0].count(options.MISSING) == 4   # the placebo's AUROC, Δ, verdict and F1
    assert options.MISSING not in new[0] and "0.700" in new[0]


def test_readings_name_the_stronger_image_models_and_their_verdicts():
    base = _comparison(0.70, 0.10, "higher")
    kept = {"a": _comparison(0.80, 0.02, "inconclusive"), "b": _comparison(0.60, 0.2, "higher")}
    (line,) = options.readings(base, kept)
    assert line.startswith("- **indication**: 1 of 2 options give the image model a higher "
                           "AUROC than the default's 0.700.")
    assert "default (image 0.700): fusion − image +0.100, higher" in line
    assert "a (image 0.800): fusion − image +0.020, inconclusive" in line
    assert "fusion − placebo +0.020, inconclusive (exploratory)" in line
    assert "b (image" not in line   # its image model is weaker than the default's
