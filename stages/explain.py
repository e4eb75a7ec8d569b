"""Stage `explain`: what the CNN looks at, and how much a model leans on each input.

    python -m stages.explain

Reads one trained run, `explain.variant` (fusion | image) trained with `explain.model_seed` (the
first of train.seeds when null) on `explain.text_input` (the first of text.inputs when null;
for the image model, the reports swapped in), and the test studies, and writes
  metrics/explain/          Grad-CAM heatmaps overlaid on the X-ray for a seeded selection of
                            test studies, `explain.per_outcome` of each outcome (true positive,
                            true negative, false positive, false negative; fewer when the test
                            set has fewer), one image each (the study's first frontal view, else
                            its first image): <outcome>_<k>.png, grid.png (all of them),
                            heatmaps.csv (which study and image each file shows)
  metrics/explain.json      the modality reliance on the test set (below)

The methods (Grad-CAM, the modality reliance, which studies are shown) are in
cxrfusion/explain.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from cxrfusion import params
from cxrfusion.common import atomic_path, main, resolve_device, write_json
from cxrfusion.dataset import run_splits
from cxrfusion.explain import modality_reliance, reference_normal, select_examples, write_heatmaps
from cxrfusion.formats import Run
from cxrfusion.model import load_model, normalise
from cxrfusion.params import Params
from cxrfusion.saved_model import evaluation_threshold, trained_settings

log = logging.getLogger("explain")

OUT = Path("metrics/explain.json")
FIGURES = Path("metrics/explain")


def explained_run(p: Params) -> Run:
    e = p.explain  # checked by params.load
    seed = p.train.seeds[0] if e.model_seed is None else e.model_seed
    text_input = p.text.inputs[0] if e.text_input is None else e.text_input
    return Run.of(e.variant, seed, text_input)


def explain(p: Params) -> dict:
    e, t = p.explain, p.train
    run = explained_run(p)
    variant = run.variant
    device = resolve_device(t.device)
    model, config = load_model(run.models, device)
    trained = trained_settings(run.models, p)  # the caches as the model read them
    threshold, source = evaluation_threshold(run.models, trained)
    reports = run.text_input  # the image model reads none: explain.text_input's, as embedded
    if not model.uses_text:
        reports = e.text_input or p.text.inputs[0]
        trained.text = p.text
    # both inputs, whatever the variant reads (explain.variant: one that reads the image)
    test = run_splits(trained, run, names=("test",), text_input=reports)[0]["test"].to(device)
    ref_uid, ref_vector = reference_normal(trained, reports, run.text_alias)
    reliance, probs = modality_reliance(model, test, torch.from_numpy(ref_vector), threshold,
                                        t.batch_size, t.amp, config["image_size"])
    picks = select_examples(test.rows, probs, threshold, e.per_outcome, e.seed)
    with torch.no_grad():
        side = model.cnn.forward_features(normalise(
            torch.zeros(1, config["image_size"], config["image_size"], dtype=torch.uint8,
                        device=device),
            model.pixel_mean, model.pixel_std)).shape[-1]
    if side < 2:
        log.warning("the last convolutional block is %dx%d at %d px: the heatmaps cannot localise "
                    "anything; use image.size >= 64.", side, side, config["image_size"])
    with atomic_path(FIGURES) as tmp:
        tmp.mkdir()
        write_heatmaps(model, test, picks, threshold, variant, tmp)
    result = {"variant": variant, "seed": run.seed, "text_input": reports,
              "model": str(run.models), "threshold": threshold,
              "test": {"studies": int(test.rows["uid"].nunique()), "images": len(test)},
              "reference_normal_uid": ref_uid, "heatmaps": len(picks),
              "feature_map": [int(side), int(side)], **reliance}
    write_json(OUT, result)
    for name in ("text_to_normal", "image_blank"):
        s = reliance[name]["study"]
        log.info("%s %s: mean change %+.4f, mean |change| %.4f, %.1f %% of test studies flip",
                 variant, name, s["mean_change"], s["mean_abs_change"], 100 * s["flip_fraction"])
    log.info("threshold %g from %s; %d heatmaps in %s", threshold, source, len(picks), FIGURES)
    return result


if __name__ == "__main__":
    main(lambda: explain(params.load()))
