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
    t = ax.table(cellText=table[1:], colLabels=table[0], loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(9)
    t.scale(1, 1.4)
    ax.set_title("test studies")
    _save(fig, path)


def roc(studies: dict, path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for variant, df in studies.items():
        fpr, tpr, _ = skm.roc_curve(df["label"], df["probability"])
        auc = skm.roc_auc_score(df["label"], df["probability"])
        ax.plot(fpr, tpr, label=f"{variant} (AUROC {auc:.3f})", color=COLOURS.get(variant))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test studies")
    ax.legend(loc="lower right")
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
