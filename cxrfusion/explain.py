"""What the CNN looks at, and how much a model leans on each input (the `explain` stage's
methods).

Grad-CAM (Selvaraju et al., 2017) on the last convolutional block of the timm backbone (the
output of `cnn.forward_features`): the feature maps weighted by the spatially averaged gradient
of the log-odds of the predicted class (abnormal for predicted-abnormal studies, normal for
the others), ReLU, upsampled bilinearly to the model's input and scaled to 0..1 per image.

Modality reliance: how the predicted probability of abnormal moves on the test set when
  text_to_normal  every report vector is replaced by that of one normal report: the training
                  study labelled normal whose vector is nearest (Euclidean) to the mean vector
                  of all training studies labelled normal (its uid is recorded);
  image_blank     every image is replaced by a black one (all pixels 0, then normalised as
                  usual).
For each, at image and study level (a study's probability is the mean over its images):
mean_change (mean of perturbed - original), mean_abs_change, flip_fraction (fraction whose
label at the evaluation threshold flips), n. A model that does not read a modality moves
exactly 0 when it is perturbed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrfusion import figures
from cxrfusion.common import PipelineError
from cxrfusion.dataset import Split
from cxrfusion.formats import (
    IMAGES_H5,
    read_prepared,
    read_text_cache,
    text_cache,
    text_cache_attrs,
)
from cxrfusion.metrics import study_predictions
from cxrfusion.model import Classifier, normalise
from cxrfusion.params import Params, fields_of
from cxrfusion.scoring import score

OUTCOMES = {"true_positive": "true positive", "true_negative": "true negative",
            "false_positive": "false positive", "false_negative": "false negative"}


def reference_normal(p: Params, text_input: str,
                     alias: str | None = None) -> tuple[int, np.ndarray]:
    """uid and vector of the training study labelled normal whose report vector is nearest
    (Euclidean) to the mean vector of all training studies labelled normal (`alias`: of
    text.encoders' encoder `alias`, whose reading `p.text` then is)."""
    studies, _ = read_prepared()
    uids, vectors, _ = read_text_cache(text_cache(text_input, alias=alias),
                                       expect=text_cache_attrs(p.text, fields_of(text_input)))
    normal = studies.loc[(studies["split"] == "train") & (studies["label"] == 0), "uid"]
    rows = np.flatnonzero(np.isin(uids, normal.to_numpy()))
    if not len(rows):
        raise PipelineError("no training study is labelled normal: the normal reference report "
                            "for explain is undefined.")
    candidates = vectors[rows].astype(np.float64)
    distance = ((candidates - candidates.mean(0)) ** 2).sum(1)
    best = rows[int(np.argmin(distance))]  # ties: the smallest uid (text.h5 is in uid order)
    return int(uids[best]), vectors[best]


def _replace(split: Split, **changes) -> Split:
    if "images" in changes:
        changes["cache_rows"] = None  # blank pixels live in memory, not in the image cache
    return dataclasses.replace(split, **changes)


def _changes(rows: pd.DataFrame, base: np.ndarray, new: np.ndarray, threshold: float) -> dict:
    def stats(a, b) -> dict:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return {"n": int(len(a)), "mean_change": float(np.mean(b - a)),
                "mean_abs_change": float(np.mean(np.abs(b - a))),
                "flip_fraction": float(np.mean((a >= threshold) != (b >= threshold)))}

    keys = rows[["uid", "label"]]
    study_a = study_predictions(keys.assign(probability=base.astype(np.float64)))
    study_b = study_predictions(keys.assign(probability=new.astype(np.float64)))
    return {"image": stats(base, new),
            "study": stats(study_a["probability"], study_b["probability"])}


def modality_reliance(model: Classifier, split: Split, normal_text: torch.Tensor | None,
                      threshold: float, batch_size: int, amp: bool = True,
                      image_size: int | None = None) -> tuple[dict, np.ndarray]:
    """How the probability of abnormal moves when the report vector is replaced by
    `normal_text` and when every image is blanked (all pixels 0), for any variant.

    Returns ({"text_to_normal": {...}, "image_blank": {...}}, the unperturbed probabilities).
    The split must hold the inputs the model reads (and may hold the other); a model that does
    not read an input moves exactly 0 when it is perturbed.
    """
    if (model.uses_text and (split.text is None or normal_text is None)) or (
            model.uses_image and split.images is None and not split.streamed):
        raise ValueError(f"the {model.variant} model's inputs are missing from the split")
    if not model.uses_image:  # what the model does not read is not given to it
        split = _replace(split, images=None)
    if not model.uses_text:
        split = _replace(split, text=None)
    base, _ = score(model, split, batch_size, amp)
    result = {}
    if model.uses_text:
        vector = normal_text.to(split.text.device, split.text.dtype).reshape(1, -1)
        swapped = _replace(split, text=vector.expand(len(split), -1).contiguous())
        text_probs, _ = score(model, swapped, batch_size, amp)
    else:  # a model that reads no report cannot move when it changes
        text_probs = base
    result["text_to_normal"] = _changes(split.rows, base, text_probs, threshold)
    if model.uses_image:
        size = split.images.shape[-1] if split.images is not None else image_size
        if size is None:
            raise ValueError("a streamed split needs image_size")
        blank = torch.zeros((len(split), size, size), dtype=torch.uint8, device=split.labels.device)
        blank_probs, _ = score(model, _replace(split, images=blank), batch_size, amp)
    else:  # a model that reads no image cannot move when it is blanked
        blank_probs = base
    result["image_blank"] = _changes(split.rows, base, blank_probs, threshold)
    return result, base


def grad_cam(model: Classifier, image: torch.Tensor, text: torch.Tensor | None = None,
             target: int | None = None) -> tuple[np.ndarray, float]:
    """Grad-CAM of one uint8 (S, S) image: float32 (S, S) in 0..1, and P(abnormal).

    target: the class explained (1 abnormal, 0 normal); default the more probable one. The
    score differentiated is that class's log-odds, logit[target] - logit[other].
    """
    if model.cnn is None:
        raise PipelineError(f"the {model.variant} model has no image branch to explain.")
    model.eval()
    device = model.pixel_mean.device
    x = normalise(image.reshape(1, *image.shape[-2:]).to(device), model.pixel_mean, model.pixel_std)
    with torch.no_grad():
        features = model.cnn.forward_features(x).float()
    features.requires_grad_(True)  # gradients from the head down to the last block only
    with torch.enable_grad():
        logits = model.classify(features, None if text is None else text.reshape(1, -1).to(device))
        probability = float(logits.detach().softmax(1)[0, 1])
        if target is None:
            target = int(logits[0, 1] > logits[0, 0])
        score = logits[0, target] - logits[0, 1 - target]
        (grads,) = torch.autograd.grad(score, features)
    weights = grads.mean((2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=tuple(image.shape[-2:]), mode="bilinear",
                        align_corners=False)[0, 0]
    top = cam.max()
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return cam.cpu().numpy().astype(np.float32), probability


def select_examples(rows: pd.DataFrame, probabilities: np.ndarray, threshold: float,
                    per_outcome: int, seed: int) -> pd.DataFrame:
    """Up to `per_outcome` test studies of each outcome (at study level), drawn with `seed`
    from the studies in uid order; one image each: the first frontal view, else the first."""
    images = rows.reset_index(drop=True).assign(probability=np.asarray(probabilities, np.float64))
    studies = study_predictions(images[["uid", "label", "probability"]]).set_index("uid")
    called = studies["probability"] >= threshold
    actual = studies["label"] == 1
    outcome = {"true_positive": actual & called, "true_negative": ~actual & ~called,
               "false_positive": ~actual & called, "false_negative": actual & ~called}
    rng = np.random.default_rng(seed)
    picks = []
    for name in OUTCOMES:
        candidates = studies.index[outcome[name].to_numpy()].to_numpy()
        k = min(per_outcome, len(candidates))
        chosen = np.sort(rng.choice(candidates, size=k, replace=False)) if k else []
        for rank, uid in enumerate(chosen, 1):
            own = images.index[images["uid"] == uid]
            views = images.loc[own, "view"] if "view" in images else pd.Series("", index=own)
            frontal = own[views.to_numpy() == "Frontal"]
            i = int(frontal[0] if len(frontal) else own[0])
            picks.append({"file": f"{name}_{rank}.png", "outcome": name, "row": i,
                          "uid": images.at[i, "uid"], "filename": images.at[i, "filename"],
                          "view": views.at[i], "label": int(images.at[i, "label"]),
                          "probability": images.at[i, "probability"],
                          "study_probability": float(studies.at[uid, "probability"])})
    columns = ["file", "outcome", "row", "uid", "filename", "view", "label", "probability",
               "study_probability"]
    return pd.DataFrame(picks, columns=columns)


def _pixels(split: Split, row: int) -> torch.Tensor:
    if split.images is not None:
        return split.images[row]
    with h5py.File(IMAGES_H5, "r") as f:  # a streamed split: the image from the cache
        return torch.from_numpy(f["images"][int(split.cache_rows[row])])


def _caption(pick) -> str:
    return (f"uid {pick.uid} ({pick.view or 'view ?'})\n"
            f"P(abnormal) {pick.probability:.3f}, study {pick.study_probability:.3f}")


def write_heatmaps(model: Classifier, split: Split, picks: pd.DataFrame, threshold: float,
                   variant: str, folder: Path) -> None:
    grid = {label: [] for label in OUTCOMES.values()}
    for pick in picks.itertuples():
        image = _pixels(split, pick.row)
        text = split.text[pick.row] if model.uses_text else None
        target = int(pick.study_probability >= threshold)  # the study's predicted class
        cam, _ = grad_cam(model, image, text, target)
        predicted = "abnormal" if target else "normal"
        image = image.cpu().numpy()
        title = (f"{variant} model, {OUTCOMES[pick.outcome]}: uid {pick.uid}, {pick.filename}\n"
                 f"P(abnormal) = {pick.probability:.3f} (image), {pick.study_probability:.3f} "
                 f"(study); label {'abnormal' if pick.label else 'normal'}; Grad-CAM for "
                 f"'{predicted}'" + ("" if cam.any() else " (no region speaks for it: 0)"))
        figures.gradcam(image, cam, title, folder / pick.file)
        grid[OUTCOMES[pick.outcome]].append((image, cam, _caption(pick)))
    figures.gradcam_grid(grid, f"Grad-CAM of the {variant} model's CNN, test studies\n"
                               f"(heatmap for the predicted class at threshold {threshold:g})",
                         folder / "grid.png")
    picks.drop(columns="row").to_csv(folder / "heatmaps.csv", index=False)
