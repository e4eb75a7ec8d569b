"""Figures a paper would use, as PNGs: training curves, ROC, confusion matrices, comparison."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

COLOURS = {"fusion": "tab:purple", "image": "tab:blue", "text": "tab:orange"}
CURVES = ("loss", "accuracy", "precision", "recall", "f1", "auroc")


def _save(fig, path) -> None:
    if fig.get_layout_engine() is None:  # constrained-layout figures lay themselves out
        fig.tight_layout()
    fig.savefig(path, dpi=150, metadata={"Software": None})  # no version stamp: stable bytes
    plt.close(fig)


def training_curves(variant: str, history: list[dict], chosen: int, path) -> None:
    """Train and validation metrics per epoch (like the original's figure), chosen epoch marked."""
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), sharex=True)
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(axes.flat, CURVES):
        for phase, style in (("train", "--"), ("val", "-")):
            ax.plot(epochs, [r[phase][key] for r in history], style, label=phase,
                    color=COLOURS.get(variant))
        ax.axvline(chosen, color="grey", lw=0.8, ls=":")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    axes.flat[0].legend(title=f"kept: epoch {chosen}")
    fig.suptitle(f"{variant}: training and validation")
    _save(fig, path)


def comparison(histories: dict, table: list[list[str]], path) -> None:
    """Validation loss and F1 per epoch for every variant, and the test metrics with intervals."""
    fig = plt.figure(figsize=(12, 7))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    for col, key in enumerate(("loss", "f1")):
        ax = fig.add_subplot(grid[0, col])
        for variant, history in histories.items():
            ax.plot([r["epoch"] for r in history], [r["val"][key] for r in history],
                    label=variant, color=COLOURS.get(variant))
        ax.set_title(f"validation {key}")
        ax.set_xlabel("epoch")
        ax.legend()
    ax = fig.add_subplot(grid[1, :])
    ax.axis("off")
    wide = [2.2 if "CI" in label else 1.0 for label in table[0]]  # value [low, high] columns
    t = ax.table(cellText=table[1:], colLabels=table[0], loc="center", cellLoc="center",
                 colWidths=[w / sum(wide) for w in wide])
    t.auto_set_font_size(False)
    t.set_fontsize(9)
    t.scale(1, 1.4)
    ax.set_title("test studies")
    _save(fig, path)


def roc(studies: dict, intervals: dict, path) -> None:
    """ROC curves of the variants on the test studies; intervals: variant -> AUROC's
    {"low": ..., "high": ...}."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for variant, df in studies.items():
        fpr, tpr, _ = skm.roc_curve(df["label"], df["probability"])
        auc = skm.roc_auc_score(df["label"], df["probability"])
        low, high = intervals[variant]["low"], intervals[variant]["high"]
        ax.plot(fpr, tpr, label=f"{variant}: AUROC {auc:.3f} [{low:.3f}, {high:.3f}]",
                color=COLOURS.get(variant))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test studies")
    ax.legend(loc="lower right", title="95 % bootstrap interval", fontsize=8, title_fontsize=8)
    _save(fig, path)


def intervals(comparison: dict, path) -> None:
    """The answer at a glance: each model's AUROC and F1 on the test studies, and the paired
    differences, with 95 % bootstrap intervals (comparison.json of stage `compare`)."""
    styles = {"auroc": ("o", "tab:blue", "AUROC"), "f1": ("s", "tab:orange", "F1")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    panels = ((left, comparison["variants"], lambda m, k: (m[k], m["ci95"][k])),
              (right, comparison["differences"], lambda d, k: (d[k]["difference"], d[k]["ci95"])))
    for ax, rows, value in panels:
        names = list(rows)
        for shift, (k, (marker, colour, label)) in zip((-0.12, 0.12), styles.items()):
            for y, name in enumerate(names):
                point, ci = value(rows[name], k)
                low, high = ci["low"], ci["high"]
                ax.errorbar(point, y + shift, xerr=[[point - low], [high - point]], fmt=marker,
                            color=colour, capsize=3, label=label if y == 0 else None)
        ax.set_yticks(range(len(names)), [n.replace("_minus_", " − ") for n in names])
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    left.set(xlabel="metric on the test studies", title="each model")
    right.axvline(0, color="grey", lw=0.8)
    right.set(xlabel="difference (paired)", title="does the other input add anything?")
    left.legend(loc="lower left", fontsize=8)
    n = comparison["test_studies"]
    fig.suptitle(f"test studies (n = {n}): point estimate and 95 % bootstrap interval", fontsize=10)
    _save(fig, path)


def confusion_matrices(matrices: dict, path) -> None:
    fig, axes = plt.subplots(1, len(matrices), figsize=(4 * len(matrices), 3.6))
    for ax, (variant, cm) in zip(np.atleast_1d(axes), matrices.items()):
        cm = np.asarray(cm)
        ax.imshow(cm, cmap="Blues")
        for (i, j), n in np.ndenumerate(cm):
            ax.text(j, i, str(n), ha="center", va="center",
                    color="white" if n > cm.max() / 2 else "black")
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "abnormal"],
               yticklabels=["normal", "abnormal"], xlabel="predicted", ylabel="actual",
               title=variant)
    fig.suptitle("confusion matrices, test studies")
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


def gradcam_grid(rows: dict[str, list[tuple[np.ndarray, np.ndarray, str]]], title: str, path) -> None:
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
