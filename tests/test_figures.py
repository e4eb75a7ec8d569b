"""The comparison figures (cxrfusion.figures): each writes a real PNG from synthetic inputs
(2 text inputs x 3 variants x 3 seeds, 1 input x 1 seed, values that are nan), and refuses
inputs that do not fit together with a ValueError that says what is wrong."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from cxrfusion import figures
from cxrfusion.metrics import sensitivity_at_specificity, tpr_at
from cxrfusion.params import Comparison

VARIANTS = ("fusion", "image", "text", "shuffled")
PAIRS = Comparison.of_input(None)  # the forest's rows: fusion − image, ..., fusion − shuffled
FUSION_IMAGE, FUSION_TEXT, TEXT_IMAGE, FUSION_SHUFFLED = PAIRS[:4]
METRICS = ("auroc", "auprc", "f1", "sensitivity_at_specificity")
N = 80


# --- synthetic inputs -----------------------------------------------------------------------------


def _labels(n: int = N, seed: int = 0) -> np.ndarray:
    y = (np.random.default_rng(seed).random(n) < 0.4).astype(int)
    y[:2] = (0, 1)  # both classes, whatever the draw
    return y


def _probs(labels, inputs, seeds: int, seed: int = 1) -> dict:
    """probs[input][variant]: (seeds, N); the image model the same in every input."""
    rng = np.random.default_rng(seed)
    signal = 2 * labels - 1

    def draw(strength):
        return 1 / (1 + np.exp(-(strength * signal + rng.normal(0, 1.2, (seeds, labels.size)))))

    image = draw(1.5)
    return {inp: {"fusion": draw(2.2 - k), "image": image, "text": draw(1.8 - 1.2 * k)}
            for k, inp in enumerate(inputs)}


def _calibration(labels, p) -> dict:
    """10 equal-width bins pooled over seeds, ECE and Brier (as the stage would compute them)."""
    flat, y = p.ravel(), np.tile(labels, p.shape[0])
    index = np.minimum((flat * 10).astype(int), 9)
    bins, ece = [], 0.0
    for i in range(10):
        inside = index == i
        if not inside.any():
            bins.append({"low": i / 10, "high": (i + 1) / 10, "n": 0,
                         "mean_probability": None, "fraction_abnormal": None})
            continue
        mean, frac = float(flat[inside].mean()), float(y[inside].mean())
        bins.append({"low": i / 10, "high": (i + 1) / 10, "n": int(inside.sum()),
                     "mean_probability": mean, "fraction_abnormal": frac})
        ece += inside.mean() * abs(mean - frac)
    return {"ece": ece, "brier": float(np.mean((flat - y) ** 2)), "bins": bins}


def _differences(inputs, seeds: int, seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for inp in inputs:
        out[inp] = {}
        for pair in PAIRS:
            out[inp][pair] = {}
            for m in METRICS:
                per_seed = list(rng.normal(0.03, 0.04, seeds))
                mean = float(np.mean(per_seed))
                out[inp][pair][m] = {"mean": mean, "low": mean - 0.07, "high": mean + 0.06,
                                     "per_seed": per_seed}
    return out


def _histories(labels_, seeds: int, epochs: int = 8, seed: int = 3):
    rng = np.random.default_rng(seed)
    histories, chosen = {}, {}
    for label in labels_:
        histories[label], chosen[label] = {}, {}
        for s in range(seeds):
            rows = []
            for e in range(1, epochs + 1):
                rows.append({"epoch": e,
                             "train": {"loss": 0.7 * math.exp(-e / 4) + 0.15, "f1": 0.6,
                                       "auroc": 0.8},
                             "val": {"loss": 0.5 * math.exp(-e / 3) + 0.25 + 0.01 * e
                                     + rng.normal(0, 0.01), "f1": 0.6,
                                     "auroc": 0.9 - 0.3 * math.exp(-e / 2.5)}})
            histories[label][s] = rows
            chosen[label][s] = int(np.argmin([r["val"]["loss"] for r in rows])) + 1
    return histories, chosen


def _legend(probs) -> dict:
    return {inp: {v: "AUROC 0.90 [0.84, 0.95]" for v in vs} for inp, vs in probs.items()}


def _case(inputs, seeds):
    y = _labels()
    probs = _probs(y, inputs, seeds)
    calibration = {inp: {v: _calibration(y, p) for v, p in vs.items()} for inp, vs in probs.items()}
    labels_ = ["image"] + [f"{v} · {inp}" for inp in inputs for v in ("fusion", "text")]
    return y, probs, calibration, _differences(inputs, seeds), _histories(labels_, seeds)


CASES = {"2 inputs, 3 seeds": (("findings+impression", "indication"), 3),
         "1 input, 1 seed": (("findings+impression",), 1)}


def _check_png(path, min_side: int = 300, max_side: int = 4000) -> tuple[int, int]:
    """A real picture: a PNG of sane size, and more than a few colours."""
    assert path.exists(), f"{path.name} not written"
    assert path.stat().st_size > 10_000, f"{path.name} is only {path.stat().st_size} bytes"
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.mode in ("RGB", "RGBA")
        width, height = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert min_side <= width <= max_side and min_side <= height <= max_side, (width, height)
    packed = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    colours = np.unique(packed).size
    assert colours > 50, f"{path.name} has {colours} colours: blank?"
    # the figure's colours appear: at least the purple of fusion (tab:purple = 148, 103, 189)
    near = np.abs(pixels.astype(int) - (148, 103, 189)).sum(axis=2) < 30
    assert near.sum() > 100, f"{path.name}: no fusion-coloured pixels"
    return width, height


# --- each figure, each case -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_figure_writes_a_png(case, tmp_path):
    inputs, seeds = CASES[case]
    y, probs, calibration, differences, (histories, chosen) = _case(inputs, seeds)
    figures.forest(differences, tmp_path / "forest.png")
    figures.roc_by_input(y, probs, _legend(probs), tmp_path / "roc.png")
    figures.reliability(y, probs, calibration, tmp_path / "reliability.png")
    figures.training_curves(histories, chosen, tmp_path / "training.png")
    sizes = {p: _check_png(tmp_path / f"{p}.png")
             for p in ("forest", "roc", "reliability", "training")}
    # one panel per text input (its legend under it): two inputs give a figure wider than
    # high, one a figure higher than wide
    if len(inputs) == 2:
        assert sizes["roc"][0] > 1.2 * sizes["roc"][1]
    else:
        assert sizes["roc"][0] < 0.9 * sizes["roc"][1]


def test_the_same_inputs_give_the_same_bytes(tmp_path):
    y, probs, calibration, differences, (histories, chosen) = _case(("a", "b"), 3)
    for name in ("one", "two"):
        figures.forest(differences, tmp_path / f"forest_{name}.png")
        figures.roc_by_input(y, probs, _legend(probs), tmp_path / f"roc_{name}.png")
    for fig in ("forest", "roc"):
        assert ((tmp_path / f"{fig}_one.png").read_bytes()
                == (tmp_path / f"{fig}_two.png").read_bytes())


def test_nan_values_are_skipped_not_fatal(tmp_path):
    nan = float("nan")
    y, probs, calibration, differences, (histories, chosen) = _case(("findings+impression",
                                                                     "indication"), 3)
    # a difference that could not be computed, a seed that could not, a metric only one row has
    differences["indication"][FUSION_TEXT]["f1"] = {"mean": nan, "low": nan, "high": nan,
                                                        "per_seed": [nan, nan, nan]}
    differences["findings+impression"][TEXT_IMAGE]["auroc"]["per_seed"][1] = nan
    del differences["indication"][TEXT_IMAGE]["auprc"]
    # an epoch whose validation split held one class (AUROC nan), also on the kept epoch
    for label, seeds in histories.items():
        for seed, rows in seeds.items():
            rows[0]["val"]["auroc"] = nan
            rows[0]["train"]["f1"] = nan
        histories[label][0][chosen[label][0] - 1]["val"]["auroc"] = nan
    # a variant whose ECE could not be computed, and empty bins left out
    calibration["indication"]["text"]["ece"] = nan
    for c in calibration["findings+impression"].values():
        c["bins"] = [b for b in c["bins"] if b["n"]]
    figures.forest(differences, tmp_path / "forest.png")
    figures.training_curves(histories, chosen, tmp_path / "training.png")
    figures.reliability(y, probs, calibration, tmp_path / "reliability.png")
    for p in ("forest", "training", "reliability"):
        _check_png(tmp_path / f"{p}.png")


def test_forest_draws_only_the_metrics_given(tmp_path):
    differences = _differences(("findings+impression",), 3)
    for pairs in differences.values():
        for by_metric in pairs.values():
            for m in ("auprc", "f1", "sensitivity_at_specificity"):
                del by_metric[m]
    figures.forest(differences, tmp_path / "one.png")
    figures.forest(_differences(("findings+impression",), 3), tmp_path / "four.png")
    one, four = _check_png(tmp_path / "one.png"), _check_png(tmp_path / "four.png")
    assert four[0] > 1.8 * one[0], (one, four)  # one column per metric


# --- ROC arithmetic -------------------------------------------------------------------------------


def test_roc_points_agree_with_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    y = _labels(200)
    for scores in (rng.random(200), np.round(rng.random(200), 1)):  # with and without ties
        fpr, tpr = figures.roc_points(y, scores)
        ref_fpr, ref_tpr, _ = skm.roc_curve(y, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr)
        np.testing.assert_allclose(tpr, ref_tpr)
        assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, scores))


def test_mean_roc_averages_true_positive_rates_at_fixed_false_positive_rates():
    y = np.array([0, 0, 1, 1])
    perfect = np.array([0.1, 0.2, 0.8, 0.9])
    reversed_ = 1 - perfect
    fpr, tpr = figures.mean_roc(y, perfect[None])
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(tpr[1:] == 1)  # a perfect curve rises at once to 1
    fpr, tpr = figures.mean_roc(y, np.stack([perfect, reversed_]))
    # perfect (1 everywhere) and reversed (0 until FPR 1): the mean is 0.5 below FPR 1
    inner = (fpr > 0) & (fpr < 1)
    np.testing.assert_allclose(tpr[inner], 0.5)
    # the mean of one seed is that seed's curve, on the grid
    scores = np.random.default_rng(6).random(N)
    y = _labels()
    fpr, tpr = figures.mean_roc(y, scores[None])
    f, t = figures.roc_points(y, scores)
    on_grid = tpr_at(f, t, figures.ROC_GRID)
    np.testing.assert_allclose(tpr[1:], on_grid)
    assert np.all(np.diff(tpr) >= -1e-12)  # never decreasing
    # a false positive rate off the grid is added, where the table reads sensitivity
    fpr, tpr = figures.mean_roc(y, scores[None], at=(0.1234,))
    assert tpr[np.flatnonzero(fpr == 0.1234)[0]] == pytest.approx(
        sensitivity_at_specificity(y, scores, 1 - 0.1234), abs=1e-12)


# --- inputs that do not fit -----------------------------------------------------------------------


def test_probs_whose_studies_differ_from_labels_are_refused(tmp_path):
    y, probs, calibration, *_ = _case(("findings+impression",), 3)
    probs["findings+impression"]["text"] = probs["findings+impression"]["text"][:, :-5]
    with pytest.raises(ValueError, match=r"probs\['findings\+impression'\]\['text'\] has 75 "
                                         r"studies per seed but labels has 80"):
        figures.roc_by_input(y, probs, _legend(probs), tmp_path / "roc.png")
    with pytest.raises(ValueError, match="75 studies per seed but labels has 80"):
        figures.reliability(y, probs, calibration, tmp_path / "reliability.png")
    assert not (tmp_path / "roc.png").exists()
    assert not (tmp_path / "reliability.png").exists()


@pytest.mark.parametrize("labels, message", [
    (np.zeros(N, dtype=int), "one class only"),
    (np.full(N, 2), "0 \\(normal\\) or 1 \\(abnormal\\)"),
    (np.zeros((N, 2), dtype=int), "1-D"),
])
def test_bad_labels_are_refused(labels, message, tmp_path):
    probs = _probs(_labels(), ("a",), 2)
    with pytest.raises(ValueError, match=message):
        figures.roc_by_input(labels, probs, _legend(probs), tmp_path / "roc.png")


def test_other_misfits_are_refused(tmp_path):
    y, probs, calibration, differences, (histories, chosen) = _case(("a", "b"), 2)
    legend = _legend(probs)
    del legend["b"]["fusion"]
    with pytest.raises(ValueError, match=r"legend\['b'\]\['fusion'\] is missing"):
        figures.roc_by_input(y, probs, legend, tmp_path / "x.png")

    bad = {inp: dict(vs) for inp, vs in probs.items()}
    bad["a"]["image"] = bad["a"]["image"] * 3  # not probabilities
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        figures.reliability(y, bad, calibration, tmp_path / "x.png")
    bad["a"]["image"] = np.full_like(probs["a"]["image"], np.nan)
    with pytest.raises(ValueError, match="nan"):
        figures.roc_by_input(y, bad, _legend(probs), tmp_path / "x.png")

    del calibration["b"]["text"]["ece"]
    with pytest.raises(ValueError, match=r"calibration\['b'\]\['text'\] lacks 'ece'"):
        figures.reliability(y, probs, calibration, tmp_path / "x.png")

    differences["a"][FUSION_IMAGE]["auroc"] = {"mean": 0.1, "low": 0.2, "high": 0.0}
    with pytest.raises(ValueError, match="low 0.2 is above high 0.0"):
        figures.forest(differences, tmp_path / "x.png")
    differences["a"][FUSION_IMAGE]["auroc"] = {"mean": 0.1}
    with pytest.raises(ValueError, match="lacks low, high"):
        figures.forest(differences, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty"):
        figures.forest({}, tmp_path / "x.png")

    chosen["image"][1] = 99
    with pytest.raises(ValueError, match=r"chosen\['image'\]\[1\] = 99 is not an epoch"):
        figures.training_curves(histories, chosen, tmp_path / "x.png")
    del chosen["image"][1]
    with pytest.raises(ValueError, match=r"chosen\['image'\]\[1\] is missing"):
        figures.training_curves(histories, chosen, tmp_path / "x.png")
    del histories["image"][0][2]["val"]["auroc"]
    with pytest.raises(ValueError, match="val.auroc"):
        figures.training_curves(histories, chosen, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
