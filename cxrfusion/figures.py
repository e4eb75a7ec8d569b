"""Figures a paper would use, as PNGs: paired differences (forest plot), ROC and calibration per
text input, training curves; Grad-CAM overlays."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cxrfusion.metrics import MEASURES, roc_curve, tpr_at  # noqa: E402
from cxrfusion.params import VARIANTS, arm_order, variant_of  # noqa: E402

METRIC_TITLES = {m.name: m.forest for m in MEASURES if m.forest}  # (title, axis's short name)
STYLE = {  # readable at the size a paper prints a figure
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 8.5, "legend.title_fontsize": 8.5,
    "figure.titlesize": 11.5, "axes.spines.top": False, "axes.spines.right": False,
}
HIST_ASPECT = 0.3  # height / width of the histogram under a reliability diagram
SEED_OFFSET = 0.24  # single seeds sit just below their row's mean, clear of its bar
ROC_GRID = np.linspace(0.0, 1.0, 201)  # common false positive rates for the mean ROC curve


def _save(fig, path, whole: bool = False) -> None:
    """`whole`: cropped to everything drawn, legends outside the axes included."""
    if fig.get_layout_engine() is None and not whole:  # constrained layouts lay themselves out
        fig.tight_layout()
    fig.savefig(path, dpi=150, metadata={"Software": None},  # no version stamp: stable bytes
                **({"bbox_inches": "tight", "pad_inches": 0.15} if whole else {}))
    plt.close(fig)


# --- helpers --------------------------------------------------------------------------------------


def _colour(variant: str) -> str:
    """An arm's colour: its variant's (on another encoder too: the legend names the alias)."""
    return VARIANTS[variant_of(variant)].colour if variant_of(variant) in VARIANTS else "0.25"


def _ordered(names) -> list:
    """Arms grouped by encoder, each group in the table's order (params.VARIANTS), anything
    else after, as given."""
    names = list(names)
    arms = sorted((n for n in names if variant_of(n) in VARIANTS), key=arm_order)
    return arms + [n for n in names if variant_of(n) not in VARIANTS]


def _float(x) -> float:
    return float("nan") if x is None else float(x)


def _seeds_phrase(counts) -> str:
    counts = set(counts)
    if len(counts) == 1:
        (s,) = counts
        return "1 seed" if s == 1 else f"mean over {s} seeds"
    return "mean over seeds"


def _check_labels(labels) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array of 0/1, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (abnormal) only")
    y = y.astype(int)
    if y.min() == y.max():
        raise ValueError(f"labels hold one class only ({y[0]}): a ROC or calibration curve "
                         "needs both normal and abnormal studies")
    return y


def _check_probs(probs, n: int, unit_interval: bool = False) -> dict:
    """probs[input][variant] -> float array (S, N); a 1-D array is one seed."""
    if not isinstance(probs, dict) or not probs:
        raise ValueError("probs must be a non-empty dict: text input -> variant -> (seeds, N)")
    out = {}
    for inp, variants in probs.items():
        if not isinstance(variants, dict) or not variants:
            raise ValueError(f"probs[{inp!r}] must be a non-empty dict: variant -> (seeds, N)")
        out[inp] = {}
        for v, p in variants.items():
            p = np.asarray(p, dtype=float)
            if p.ndim == 1:
                p = p[None, :]
            if p.ndim != 2 or p.shape[0] == 0:
                raise ValueError(f"probs[{inp!r}][{v!r}] must have shape (seeds, N), "
                                 f"got {np.shape(probs[inp][v])}")
            if p.shape[1] != n:
                raise ValueError(f"probs[{inp!r}][{v!r}] has {p.shape[1]} studies per seed but "
                                 f"labels has {n}")
            if not np.isfinite(p).all():
                raise ValueError(f"probs[{inp!r}][{v!r}] holds nan or infinite values")
            if unit_interval and ((p < 0).any() or (p > 1).any()):
                raise ValueError(f"probs[{inp!r}][{v!r}] holds values outside [0, 1]")
            out[inp][v] = p
    return out


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of metrics.roc_curve: every distinct
    threshold, from (0, 0) to (1, 1), tied scores one diagonal step."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def mean_roc(labels: np.ndarray, probs: np.ndarray, at=()) -> tuple[np.ndarray, np.ndarray]:
    """Vertical averaging: TPR of each seed's curve (read as metrics.tpr_at reads it) on
    ROC_GRID and the false positive rates `at`, averaged; starts at (0, 0). At 1 - the table's
    specificity, it is the table's mean sensitivity."""
    grid = np.union1d(ROC_GRID, np.asarray(at, dtype=float))
    curves = [tpr_at(*roc_points(labels, p), grid) for p in np.atleast_2d(probs)]
    return np.r_[0.0, grid], np.r_[0.0, np.mean(curves, axis=0)]


# --- 1. the answer at a glance --------------------------------------------------------------------


def _check_difference(where: str, d) -> None:
    """One cell of `differences`: it needs mean, low and high, and low may not exceed high."""
    missing = [k for k in ("mean", "low", "high") if k not in d]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    low, high = _float(d["low"]), _float(d["high"])
    if low > high:  # False when either is nan
        raise ValueError(f"{where}: low {low} is above high {high}")


def _check_differences(differences) -> tuple[list, list]:
    """Validate `differences`; return its metrics (METRIC_TITLES' order first, then any other, as
    met) and the number of seeds behind each cell that lists them."""
    if not isinstance(differences, dict) or not differences:
        raise ValueError("differences must be a non-empty dict: text input -> pair -> metric")
    metrics, seed_counts = [], []
    for inp, pairs in differences.items():
        if not isinstance(pairs, dict) or not pairs:
            raise ValueError(f"differences[{inp!r}] must be a non-empty dict: pair -> metric")
        for pair, by_metric in pairs.items():
            if not isinstance(by_metric, dict) or not by_metric:
                raise ValueError(f"differences[{inp!r}][{pair!r}] must be a non-empty dict: "
                                 "metric -> {mean, low, high, per_seed}")
            for m, d in by_metric.items():
                _check_difference(f"differences[{inp!r}][{pair!r}][{m!r}]", d)
                if m not in metrics:
                    metrics.append(m)
                if d.get("per_seed"):
                    seed_counts.append(len(d["per_seed"]))
    metrics = ([m for m in METRIC_TITLES if m in metrics]
               + [m for m in metrics if m not in METRIC_TITLES])
    return metrics, seed_counts


def _forest_rows(differences: dict) -> tuple[list, list, list, list, int]:
    """Lay out the rows, top to bottom: a header per text input, then its pairs. Returns the
    y ticks, their labels, the header rows, the pair rows as (y, input, pair), and the count."""
    ticks, labels, header_rows, rows = [], [], [], []
    y = 0
    for inp, pairs in differences.items():
        ticks.append(y), labels.append(f"text input: {inp}"), header_rows.append(y)
        y += 1
        for pair in pairs:
            ticks.append(y), labels.append(pair.label)
            rows.append((y, inp, pair))
            y += 1
    return ticks, labels, header_rows, rows, y


def _shade_groups(ax, header_rows: list, n_rows: int) -> None:
    """Shade every other text input's group of rows, so the eye keeps to one group."""
    for g, header in enumerate(header_rows):
        nxt = header_rows[g + 1] if g + 1 < len(header_rows) else n_rows
        if g % 2 == 1:
            ax.axhspan(header - 0.5, nxt - 0.5, color="0.94", zorder=0, lw=0)


def _mark_margin(ax, margin: float) -> None:
    """Dotted lines at -margin and +margin: the equivalence margin."""
    for x in (-margin, margin):
        ax.axvline(x, color="0.45", lw=0.9, ls=":", zorder=1)


def _draw_seeds(ax, row: int, seeds: np.ndarray, colour: str) -> None:
    """Open markers for single seeds, just below the row (SEED_OFFSET) so the bar stays clear."""
    ax.plot(seeds, np.full(seeds.size, row + SEED_OFFSET), "o", ms=4.5,
            mfc="none", mec=colour, mew=1, alpha=0.85, zorder=2)


def _draw_interval(ax, row: int, low: float, high: float, mean: float, colour: str) -> None:
    """The 95 % interval as a bar with end ticks, and the mean as a diamond; nan parts skipped."""
    if np.isfinite(low) and np.isfinite(high):
        ax.plot([low, high], [row, row], "-", color=colour, lw=2,
                solid_capstyle="butt", zorder=3)
        ax.plot([low, high], [row, row], "|", color=colour, ms=8, mew=1.6, zorder=3)
    if np.isfinite(mean):
        ax.plot([mean], [row], "D", ms=7, color=colour, mec="white", mew=0.8, zorder=4)


def _label_verdict(ax, row: int, d: dict, low: float, high: float, any_seed: bool,
                   colour: str) -> None:
    """The row's verdict (Table 1) beside its interval; "n/a" where nothing could be drawn."""
    if d.get("verdict") and np.isfinite(high):
        exploratory = " (exploratory)" if d.get("role") == "exploratory" else ""  # no family
        ax.annotate(d["verdict"] + exploratory, (high, row), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="center",
                    fontsize=7.5, fontstyle="italic", color=colour, zorder=5)
    elif not (np.isfinite(low) and np.isfinite(high)) and not any_seed:
        ax.text(0.98, row, "n/a ", transform=ax.get_yaxis_transform(), ha="right",
                va="center", color="0.5", fontsize=8.5)


def _forest_row(ax, row: int, d: dict, colour: str) -> None:
    """One pair on one metric's panel: its seeds, interval and mean, and its verdict."""
    seeds = np.array([_float(s) for s in d.get("per_seed") or []], dtype=float)
    if seeds.size > 1:  # one seed is the mean itself
        _draw_seeds(ax, row, seeds[np.isfinite(seeds)], colour)
    low, high, mean = _float(d["low"]), _float(d["high"]), _float(d["mean"])
    _draw_interval(ax, row, low, high, mean, colour)
    _label_verdict(ax, row, d, low, high, bool(np.isfinite(seeds).any()), colour)


def _forest_panel(ax, metric: str, differences: dict, layout: tuple, margin) -> None:
    """One metric's column: shading, the line at 0 (and the margin on AUROC), every row."""
    _, _, header_rows, rows, n_rows = layout
    title, short = METRIC_TITLES.get(metric, (f"{metric} difference", metric))
    _shade_groups(ax, header_rows, n_rows)
    ax.axvline(0, color="0.35", lw=1, zorder=1)
    if margin and metric == "auroc":
        _mark_margin(ax, margin)
    for row, inp, pair in rows:
        d = differences[inp][pair].get(metric)
        if d is not None:
            _forest_row(ax, row, d, _colour(pair.a))
    ax.set_title(title, fontweight="bold")
    ax.set_xlabel(f"Δ {short} (first − second model)")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", length=0)
    ax.spines["left"].set_visible(False)


def _label_rows(ax, layout: tuple) -> None:
    """Row labels on the shared y axis, text input headers in bold, first input on top."""
    ticks, labels, header_rows, _, n_rows = layout
    ax.set_yticks(ticks, labels)
    for tick, y in zip(ax.get_yticklabels(), ticks):
        if y in header_rows:
            tick.set_fontweight("bold")
    ax.set_ylim(n_rows - 0.45, -0.7)


def _forest_legend(fig, seed_counts: list, seeds: str, margin, metrics: list) -> None:
    """Legend under the panels: the estimate, its interval, single seeds and the margin, each
    only where the figure draws it."""
    several = any(c > 1 for c in seed_counts)
    handles = [
        plt.Line2D([], [], ls="none", marker="D", ms=7, color="0.3", mec="white",
                   label=seeds if several else f"estimate ({seeds})"),
        plt.Line2D([], [], color="0.3", lw=2, marker="|", ms=8, label="95 % interval"),
    ]
    if several:
        handles.append(plt.Line2D([], [], ls="none", marker="o", ms=4.5, mfc="none",
                                  mec="0.3", label="single seed (drawn just below)"))
    if margin and "auroc" in metrics:
        handles.append(plt.Line2D([], [], color="0.45", lw=0.9, ls=":",
                                  label=f"equivalence margin ±{margin:g} (AUROC)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)


def forest(differences: dict, path, margin: float | None = None) -> None:
    """Paired differences between the variants on the test studies, per text input.

    differences[input][pair][metric] = {"mean", "low", "high", "per_seed": [...]}, `pair` a
    params.Comparison (its label names the row, its first model colours it); one column
    per metric, one row per pair grouped by text input; filled marker = mean with its 95 %
    interval as a bar, open markers = single seeds, vertical line at 0; on the AUROC panel,
    dotted lines at +-`margin` (the equivalence margin), and each row's "verdict" where it has
    one, beside its interval. nan values are skipped.
    """
    metrics, seed_counts = _check_differences(differences)
    layout = _forest_rows(differences)
    n_rows = layout[-1]
    # room for the longest row label (an arm on an encoder: fusion_frozen@<alias> − ...)
    labels = max(len(pair.label) for rows in differences.values() for pair in rows)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(metrics), sharey=True, squeeze=False, layout="constrained",
                                 figsize=(max(5.6, max(1.6, 0.085 * labels) + 2.8 * len(metrics)),
                                          1.7 + 0.36 * n_rows))
        axes = axes[0]
        for ax, m in zip(axes, metrics):
            _forest_panel(ax, m, differences, layout, margin)
        _label_rows(axes[0], layout)
        seeds = _seeds_phrase(seed_counts) if seed_counts else "point estimate"
        _forest_legend(fig, seed_counts, seeds, margin, metrics)
        fig.suptitle("Paired differences between models on the test studies\n"
                     f"({seeds}, 95 % interval; > 0: the first model is better)", fontsize=10.5)
        _save(fig, path)


# --- 2. ROC ---------------------------------------------------------------------------------------


def _check_legend(legend, probs: dict) -> None:
    """Every curve needs its legend text (legend[input][variant])."""
    for inp, variants in probs.items():
        for v in variants:
            if not isinstance(legend, dict) or v not in (legend.get(inp) or {}):
                raise ValueError(f"legend[{inp!r}][{v!r}] is missing (the legend text of that "
                                 "curve, e.g. 'AUROC 0.93 [0.86, 0.98]')")


def _roc_variant(ax, y, p: np.ndarray, colour: str, z: float, label: str, at: tuple,
                 mark) -> None:
    """One model's curves: a thin line per seed (only where there are several), the bold
    seed mean, and `mark` (fpr, the table's sensitivity) as a dot where given."""
    if p.shape[0] > 1:
        for seed in p:
            ax.plot(*roc_points(y, seed), color=colour, lw=0.8, alpha=0.3, zorder=z)
    ax.plot(*mean_roc(y, p, at), color=colour, lw=2.2, label=label, zorder=z + 1)
    if mark is not None:
        ax.plot([mark[0]], [mark[1]], "o", ms=6, color=colour, mec="white", mew=0.8,
                zorder=z + 2)


def _roc_axes(ax, inp: str) -> None:
    """Square unit axes, their labels, grid and legend."""
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="false positive rate (1 − specificity)",
           ylabel="true positive rate (sensitivity)", title=f"text input: {inp}")
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(alpha=0.25)
    # under the panel: five models' labels would hide the curves' lower left
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False,
              title="in brackets: 95 % interval")


def _roc_panel(ax, y, inp: str, variants: dict, texts: dict, same: bool, specificity,
               at_specificity) -> None:
    """One text input: chance line, each variant's curves (fusion drawn on top), and where the
    table reads sensitivity."""
    ax.plot([0, 1], [0, 1], ":", color="0.5", lw=1, label="chance")
    for rank, v in enumerate(_ordered(variants)):
        p = variants[v]
        label = f"{v}: {texts[v]}" + ("" if same else " (trained once)" if len(p) == 1
                                      else f" ({p.shape[0]} seeds)")
        at = () if specificity is None else (1 - specificity,)
        mark = None
        if specificity is not None and at_specificity:
            mark = (1 - specificity, at_specificity[inp][v])
        _roc_variant(ax, y, p, _colour(v), 3 - 0.1 * rank, label, at, mark)
    if specificity is not None:
        ax.axvline(1 - specificity, color="0.5", lw=0.9, ls="--", zorder=1,
                   label=f"{specificity:.0%} specificity (Table 2)")
    _roc_axes(ax, inp)


def _roc_title(y: np.ndarray, probs: dict, counts: list, same: bool) -> str:
    """The figure's title: the studies, then how seeds are drawn where there are several."""
    lines = [f"ROC on the test studies (n = {y.size}, {int(y.sum())} abnormal"
             + ("; 1 seed)" if max(counts) == 1 else ")")]
    if max(counts) > 1:
        lines.append("thin: each seed; bold: " + (_seeds_phrase(counts) if same else "mean")
                     + " (TPR averaged at fixed FPR)")
    shown = {v for vs in probs.values() for v in vs}
    blind = [v for v in _ordered(shown) if not VARIANTS[variant_of(v)].reads_report]
    if len(probs) > 1 and blind:
        lines.append(f"the {' and '.join(blind)} model{'s read' if len(blind) > 1 else ' reads'} "
                     "no text: the same curves in every panel")
    return "\n".join(lines)


def roc_by_input(labels, probs: dict, legend: dict, path, specificity: float | None = None,
                 at_specificity: dict | None = None) -> None:
    """ROC curves on the test studies, one panel per text input.

    labels: (N,) 0/1; probs[input][variant]: (seeds, N); legend[input][variant]: text after the
    variant's name in the legend (e.g. "AUROC 0.93 [0.86, 0.98]"). Thin lines: single seeds;
    bold: TPR averaged over seeds on a common FPR grid (vertical averaging). `specificity`: a
    dotted line where the table reads sensitivity, and at_specificity[input][variant] (the
    table's value) marked on it.
    """
    y = _check_labels(labels)
    probs = _check_probs(probs, y.size)
    _check_legend(legend, probs)
    counts = [p.shape[0] for vs in probs.values() for p in vs.values()]
    same = len(set(counts)) == 1

    with plt.rc_context(STYLE):
        n = len(probs)
        # a panel as wide as its legend's longest entry (an arm on an encoder: fusion@<alias>)
        chars = max(len(f"{v}: {text} (trained once)") for texts in legend.values()
                    for v, text in texts.items())
        panel = max(4.4, 0.075 * chars)
        fig, axes = plt.subplots(1, n, squeeze=False,  # square panels: taller as they widen
                                 figsize=(max(5.6, 0.4 + panel * n), 5.25 + panel - 4.4),
                                 gridspec_kw={"wspace": 0.3})  # laid out by _save's crop
        for ax, (inp, variants) in zip(axes[0], probs.items()):
            _roc_panel(ax, y, inp, variants, legend[inp], same, specificity, at_specificity)
        fig.suptitle(_roc_title(y, probs, counts, same), fontsize=10.5)
        _save(fig, path, whole=True)


# --- 3. calibration -------------------------------------------------------------------------------


def _check_calibration(calibration, probs: dict) -> None:
    """Every variant drawn needs calibration[input][variant] with ece, brier and whole bins."""
    if not isinstance(calibration, dict):
        raise ValueError("calibration must be a dict: text input -> variant -> {ece, brier, bins}")
    for inp, variants in probs.items():
        for v in variants:
            c = (calibration.get(inp) or {}).get(v)
            if not isinstance(c, dict):
                raise ValueError(f"calibration[{inp!r}][{v!r}] is missing")
            for key in ("ece", "brier", "bins"):
                if key not in c:
                    raise ValueError(f"calibration[{inp!r}][{v!r}] lacks {key!r}")
            for b in c["bins"]:
                missing = [k for k in ("n", "mean_probability", "fraction_abnormal") if k not in b]
                if missing:
                    raise ValueError(f"a bin of calibration[{inp!r}][{v!r}] lacks "
                                     f"{', '.join(missing)}")


def _drawable_bins(calibration: dict, variants) -> dict:
    """Each variant's bins that can be drawn: with studies, and finite coordinates."""
    return {v: [b for b in calibration[v]["bins"] if _float(b["n"]) > 0
                and np.isfinite(_float(b["mean_probability"]))
                and np.isfinite(_float(b["fraction_abnormal"]))] for v in variants}


def _ece_brier(c: dict) -> str:
    """The legend's "ECE 0.051, Brier 0.120" (n/a where a value is missing)."""
    ece, brier = _float(c["ece"]), _float(c["brier"])
    return ", ".join(f"{name} {val:.3f}" if np.isfinite(val) else f"{name} n/a"
                     for name, val in (("ECE", ece), ("Brier", brier)))


def _draw_bins(ax, bins: list, colour: str, z: float, n_max: float) -> None:
    """One line of bins per seed (bins of several seeds are not joined); a marker's area grows
    with its bin's studies, relative to the panel's largest bin."""
    for seed in dict.fromkeys(b.get("seed") for b in bins):
        mine = [b for b in bins if b.get("seed") == seed]
        x = [_float(b["mean_probability"]) for b in mine]
        f = [_float(b["fraction_abnormal"]) for b in mine]
        area = [12 + 150 * _float(b["n"]) / n_max for b in mine]
        ax.plot(x, f, "-", color=colour, lw=1.2, alpha=0.7, zorder=z)
        ax.scatter(x, f, s=area, color=colour, edgecolor="white", lw=0.6,
                   alpha=0.85, zorder=z + 1)


def _histogram(hist, p: np.ndarray, colour: str, z: float) -> None:
    """Share of a variant's predictions in each tenth of [0, 1], as a step line."""
    hist.hist(p, bins=np.linspace(0, 1, 11), weights=np.full(p.size, 1 / p.size), histtype="step",
              color=colour, lw=1.5, zorder=z)


def _reliability_axes(ax, hist, inp: str, handles: list) -> None:
    """The diagram square above, the histogram flat below it, the legend under both."""
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=f"text input: {inp}",
           ylabel="observed fraction abnormal")
    ax.set_box_aspect(1)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(alpha=0.25)
    ax.tick_params(labelbottom=False)
    hist.set(xlabel="predicted probability of abnormal", ylabel="share of\npredictions")
    hist.set_xticks(np.linspace(0, 1, 6))
    hist.set_box_aspect(HIST_ASPECT)
    hist.grid(alpha=0.25)
    hist.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.45),
                frameon=False)


def _reliability_column(ax, hist, inp: str, variants: dict, calibration: dict) -> None:
    """One text input: the diagonal, each variant's bins (fusion on top) and histogram."""
    ax.plot([0, 1], [0, 1], ":", color="0.5", lw=1)
    handles = [plt.Line2D([], [], ls=":", color="0.5", lw=1, label="perfect calibration")]
    bins = _drawable_bins(calibration, variants)
    n_max = max([_float(b["n"]) for bs in bins.values() for b in bs] or [1.0])
    for rank, v in enumerate(_ordered(variants)):
        colour, z = _colour(v), 3 - 0.1 * rank
        stats = _ece_brier(calibration[v])
        _draw_bins(ax, bins[v], colour, z, n_max)
        handles.append(plt.Line2D([], [], color=colour, lw=1.4, marker="o", ms=7,
                                  mec="white", label=f"{v} ({stats})"))
        _histogram(hist, variants[v].ravel(), colour, z)
    _reliability_axes(ax, hist, inp, handles)


def _reliability_title(n: int, counts: list, calibration: dict) -> str:
    """The studies, the binning (as the first calibration entry names it), seeds drawn."""
    binning = next(iter(next(iter(calibration.values())).values())).get("binning", "bins")
    several = max(counts) > 1
    return (f"Calibration on the test studies (n = {n}; "
            f"{'one line per seed' if several else '1 seed'})\n{binning}"
            f"{' per seed' if several else ''}; marker area grows with the studies in "
            f"the bin\nECE and Brier in the legend: "
            f"{'mean over seeds, ' if several else ''}as in the table")


def reliability(labels, probs: dict, calibration: dict, path) -> None:
    """Reliability diagram per text input: observed fraction abnormal against mean predicted
    probability in each bin (calibration[input][variant]["bins"]: each seed's equal-mass bins,
    a bin's "seed" saying whose; marker area grows with the bin's studies), diagonal of
    perfect calibration, and in the legend the ECE and Brier score the table reports (means
    over seeds of each seed's value); under each panel, the distribution of predicted
    probabilities per variant."""
    y = _check_labels(labels)
    probs = _check_probs(probs, y.size, unit_interval=True)
    _check_calibration(calibration, probs)
    counts = [p.shape[0] for vs in probs.values() for p in vs.values()]

    with plt.rc_context(STYLE):
        n = len(probs)
        fig, axes = plt.subplots(2, n, squeeze=False, layout="constrained", sharex="col",
                                 figsize=(max(5.9, 0.4 + 4.2 * n), 7.0),
                                 gridspec_kw={"height_ratios": [1, HIST_ASPECT]})
        for col, (inp, variants) in enumerate(probs.items()):
            _reliability_column(axes[0, col], axes[1, col], inp, variants, calibration[inp])
        fig.suptitle(_reliability_title(y.size, counts, calibration), fontsize=10.5)
        _save(fig, path)


# --- participant flow --------------------------------------------------------------------------


def _box(ax, x, y, text, colour="0.96"):
    """A rounded box of text centred on (x, y); arrows end on its edge (_arrow)."""
    return ax.text(x, y, text, ha="center", va="center", fontsize=9,
                   bbox={"boxstyle": "round,pad=0.5", "facecolor": colour, "edgecolor": "0.35"})


def _arrow(ax, start, box, start_box=None) -> None:
    """An arrow from `start` (a point, or the centre of `start_box`) to the edge of `box`."""
    start = start_box.get_position() if start_box else start
    ax.annotate("", box.get_position(), start, arrowprops={
        "arrowstyle": "->", "color": "0.35", "lw": 1.2, "shrinkA": 0, "shrinkB": 0,
        "patchA": start_box.get_bbox_patch() if start_box else None,
        "patchB": box.get_bbox_patch()})


def flow_diagram(flowed: dict, path) -> None:
    """The participant flow (study_report.flow) as a diagram: read, excluded, kept, skipped,
    then one box per split."""
    f = flowed
    excluded = "\n".join(f"{why}: {n}" for why, n in f["dropped"].items())
    empty = ", ".join(f"{i} {n}" for i, n in f["empty_text"].items())
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 6.2))
        ax.set(xlim=(0, 1), ylim=(0, 1))
        ax.axis("off")
        read = _box(ax, 0.35, 0.92, f"Read from the dataset\n{f['read']['studies']} studies, "
                    f"{f['read']['images']} images")
        kept = _box(ax, 0.35, 0.6, f"Kept\n{f['kept']['studies']} studies, "
                    f"{f['kept']['images']} images\nempty text input: {empty}")
        _arrow(ax, None, kept, start_box=read)
        _arrow(ax, (0.35, 0.76), _box(ax, 0.8, 0.76, f"Excluded studies\n{excluded}\n(and "
                                      f"{f['dropped_images']} images)", colour="0.92"))
        _arrow(ax, (0.35, 0.44), _box(ax, 0.8, 0.44, "Unreadable images\nskipped: "
                                      f"{f['images_skipped']}", colour="0.92"))
        ax.plot([0.35, 0.35], [0.6, 0.34], color="0.35", lw=1.2)  # the trunk, from behind Kept
        for x, (split, s) in zip((0.15, 0.5, 0.85), f["by_split"].items()):
            patients = f"\n{s['patients']} patients" if "patients" in s else ""
            _arrow(ax, (0.35, 0.34), _box(
                ax, x, 0.14, f"{split}\n{s['studies']} studies\n({s['abnormal']} abnormal)\n"
                f"{s['images']} images{patients}\nno readable image: {s['no_readable_image']}"))
        fig.suptitle("Participant flow: from the dataset to each split", fontsize=11)
        _save(fig, path)


# --- 4. training ----------------------------------------------------------------------------------


def _shades(colour: str, n: int) -> list:
    """n shades of one colour, darker to lighter, for the seeds of one model."""
    base = np.array(matplotlib.colors.to_rgb(colour))
    if n == 1:
        return [tuple(base)]
    return [tuple(base * (1 + a) if a < 0 else base * (1 - a) + a)
            for a in np.linspace(-0.35, 0.45, n)]


def _epoch_table(where: str, rows) -> np.ndarray:
    """One seed's history as rows of (epoch, train loss, val loss, val AUROC)."""
    if not rows:
        raise ValueError(f"{where} has no epochs")
    try:
        return np.array([[r["epoch"], _float(r["train"]["loss"]),
                          _float(r["val"]["loss"]), _float(r["val"]["auroc"])]
                         for r in rows], dtype=float)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: every epoch row needs epoch, train.loss, val.loss "
                         f"and val.auroc ({e!r} missing)") from None


def _kept_epoch(chosen: dict, label, seed, table: np.ndarray, where: str):
    """The epoch kept for this seed, which must be one of its epochs."""
    try:
        kept = chosen[label][seed]
    except (KeyError, TypeError):
        raise ValueError(f"chosen[{label!r}][{seed!r}] is missing (the epoch kept)") from None
    if kept not in table[:, 0]:
        raise ValueError(f"chosen[{label!r}][{seed!r}] = {kept} is not an epoch of {where}")
    return kept


def _check_histories(histories, chosen) -> dict:
    """label -> seed -> (epoch table, epoch kept), every entry validated."""
    if not isinstance(histories, dict) or not histories:
        raise ValueError("histories must be a non-empty dict: model label -> seed -> epoch rows")
    curves = {}
    for label, seeds in histories.items():
        if not isinstance(seeds, dict) or not seeds:
            raise ValueError(f"histories[{label!r}] must be a non-empty dict: seed -> epoch rows")
        curves[label] = {}
        for seed, rows in seeds.items():
            where = f"histories[{label!r}][{seed!r}]"
            table = _epoch_table(where, rows)
            curves[label][seed] = (table, _kept_epoch(chosen, label, seed, table, where))
    return curves


def _draw_seed_history(top, bottom, t: np.ndarray, kept, shade, label) -> None:
    """One seed: train (dashed) and validation loss above, validation AUROC below, and the
    kept epoch as a dot on the validation lines (where its value is finite)."""
    epoch = t[:, 0]
    top.plot(epoch, t[:, 1], "--", color=shade, lw=1.2, alpha=0.9)
    top.plot(epoch, t[:, 2], "-", color=shade, lw=1.6)
    bottom.plot(epoch, t[:, 3], "-", color=shade, lw=1.6, label=label)
    i = int(np.flatnonzero(epoch == kept)[0])
    for ax, value in ((top, t[i, 2]), (bottom, t[i, 3])):
        if np.isfinite(value):
            ax.plot([kept], [value], "o", ms=7, color=shade, mec="black", mew=0.8, zorder=4)


def _training_column(top, bottom, label: str, seeds: dict) -> None:
    """One model: its seeds in shades of its colour, a seed legend where there are several."""
    shades = _shades(_colour(label.split(" · ")[0]), len(seeds))  # Run.label: <variant> · <input>
    for shade, (seed, (t, kept)) in zip(shades, seeds.items()):
        _draw_seed_history(top, bottom, t, kept, shade,
                           f"seed {seed}" if len(seeds) > 1 else None)
    top.set_title(label.replace(" · ", "\n"), fontweight="bold")  # <arm>, then <input>
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(alpha=0.25)
    if len(seeds) > 1:
        bottom.legend(loc="best", frameon=True, framealpha=0.85, fontsize=8)


def _training_legend(fig) -> None:
    """The line styles, shared by every column, under the figure."""
    handles = [plt.Line2D([], [], color="0.3", ls="--", label="train loss"),
               plt.Line2D([], [], color="0.3", ls="-", label="validation"),
               plt.Line2D([], [], ls="none", marker="o", ms=7, color="0.6", mec="black",
                          label="epoch kept")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)


def _training_title(curves: dict) -> str:
    """What the figure shows, and how many seeds each model's lines are."""
    counts = [len(s) for s in curves.values()]
    seeds = ("1 seed" if set(counts) == {1} else
             (f"{counts[0]} seeds" if len(set(counts)) == 1 else "several seeds")
             + ", one line each in shades of the model's colour")
    return ("Training per epoch: loss on the training and validation studies, "
            f"validation AUROC\n({seeds})")


def training_curves(histories: dict, chosen: dict, path) -> None:
    """Loss (train dashed, validation solid) and validation AUROC per epoch, one column per
    model (e.g. "fusion · findings+impression"), one line per seed, the kept epoch as a dot.

    histories[label][seed] = [{"epoch", "train": {"loss", ...}, "val": {"loss", "auroc", ...}}];
    chosen[label][seed] = the epoch kept.
    """
    curves = _check_histories(histories, chosen)
    with plt.rc_context(STYLE):
        n = len(curves)
        fig, axes = plt.subplots(2, n, squeeze=False, sharex="col", sharey="row",
                                 layout="constrained", figsize=(max(6.6, 0.8 + 3.2 * n), 5.8))
        for col, (label, seeds) in enumerate(curves.items()):
            _training_column(axes[0, col], axes[1, col], label, seeds)
        axes[0, 0].set_ylabel("loss (cross-entropy)")
        axes[1, 0].set_ylabel("validation AUROC")
        _training_legend(fig)
        fig.suptitle(_training_title(curves), fontsize=10.5)
        _save(fig, path)


# --- Grad-CAM (stage `explain`) -------------------------------------------------------------------

CAM_CMAP = "jet"
CAM_ALPHA = 0.45
CAM_LABEL = "Grad-CAM (scaled to 0-1 per image)"


def _cam_colourbar(fig, axes, **kwargs):
    mappable = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=CAM_CMAP)
    bar = fig.colorbar(mappable, ax=axes, **kwargs)
    bar.set_label(CAM_LABEL)
    return bar


def _overlay(ax, image, cam) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    ax.imshow(cam, cmap=CAM_CMAP, vmin=0, vmax=1, alpha=CAM_ALPHA, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def gradcam(image: np.ndarray, cam: np.ndarray, title: str, path) -> None:
    """One X-ray as the model saw it, beside the same X-ray with its Grad-CAM overlaid."""
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.9), layout="constrained")
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    axes[0].set(xticks=[], yticks=[], title=f"X-ray as the model sees it ({image.shape[1]} px)")
    _overlay(axes[1], image, cam)
    axes[1].set_title("Grad-CAM overlay")
    _cam_colourbar(fig, axes, shrink=0.85)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def gradcam_grid(rows: dict[str, list[tuple[np.ndarray, np.ndarray, str]]], title: str,
                 path) -> None:
    """Rows of overlays (e.g. true positives, true negatives, ...), one shared colour bar.

    rows: row label -> [(image, cam, caption), ...]; a row with no panel says so.
    """
    n_cols = max(1, max(len(panels) for panels in rows.values()))
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.3 * n_cols + 1.6, 2.45 * len(rows)),
                             squeeze=False, layout="constrained")
    for r, (label, panels) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            if c < len(panels):
                image, cam, caption = panels[c]
                _overlay(ax, image, cam)
                ax.set_title(caption, fontsize=8)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_visible(False)
                if c == 0:
                    ax.text(0.5, 0.5, "none in the test set", ha="center", va="center",
                            fontsize=8, color="grey", transform=ax.transAxes)
        axes[r, 0].set_ylabel(label, fontsize=10, fontweight="bold")
    _cam_colourbar(fig, axes, shrink=0.6)
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
