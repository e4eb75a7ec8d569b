"""Measures bench/README.md's targets (docs/performance.md): the original notebook's training
step vs the project's cached pipeline, on one device.

    python bench/benchmark.py [--compile] > bench/result.json   # one H100/H200 (gpu_check.sh)
    python bench/benchmark.py --tiny --device cpu               # CPU smoke test (tests run it)

The one entry point: runs every measurement in one process on one device (CUDA when present,
else the CPU), with random weights (same compute as the real checkpoints) and SYNTHETIC pictures
and reports (cxrfusion/sources/demo.py), and prints one JSON object with every section, the
ratios, the projection and the pass/fail targets. The measurements live in small scripts that
also run alone (bench/README.md):

  bench/original_step.py  original_step: the notebook as it was
  bench/loop.py           project_loop (batch sweep, text-only), compute_ceiling, options
  bench/caches.py         cache_images, embed_text
  bench/common.py         what they share: sizes, synthetic data, timing, JSON out, SIGTERM
  this script             projected_full_study_s (caches + 3 CNN variants x 40 epochs x 6,000
                          images + the text-only variant: project_full_study), ratios, targets

Progress goes to stderr. Nothing is downloaded; every file is written to a temporary folder
that is removed at the end. The CPU smoke test (tiny sizes, one intra-op thread, meaningless
rates) takes under a minute on 2 cores; the targets in the JSON are meant for the real-size GPU
run.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `cxrfusion`

# each of these scripts imports bench.common first: it sets environment defaults before torch
from bench import caches, loop, original_step
from bench.common import (
    STUDY_IMAGES,
    STUDY_REPORTS,
    Sizes,
    add_compile_options,
    main,
    make_inputs,
    rnd,
)

# The real study's training (params.yaml, README "Running the real study")
STUDY_TRAIN_IMAGES = 6_000
STUDY_EPOCHS = 40
STUDY_CNN_VARIANTS = 3  # fusion, its placebo and image; the text variant trains the head alone

TARGETS = {  # name: (comparison, threshold)
    "project_loop_vs_compute_ceiling": (">=", 0.90),
    "project_loop_vs_original_step": (">=", 20.0),
    "embed_text_s": ("<", 10.0),
    "cache_images_scaling_efficiency": (">=", 0.80),
    "projected_full_study_s": ("<=", 300.0),
}


# --- the projection, the ratios and the verdicts ---------------------------------------------

def project_full_study(result: dict) -> dict:
    """Seconds for the real study's caches and training at the measured rates."""
    loop_rates = result["project_loop"]
    images = STUDY_IMAGES / result["cache_images"]["images_per_s_all_workers"]
    reports = result["embed_text"]["seconds_for_3851"]
    cnn = STUDY_CNN_VARIANTS * STUDY_EPOCHS * STUDY_TRAIN_IMAGES / loop_rates["images_per_s"]
    text = STUDY_EPOCHS * STUDY_TRAIN_IMAGES / loop_rates["text_only_images_per_s"]
    return {"total_s": images + reports + cnn + text, "cache_images_s": images,
            "embed_text_s": reports, "cnn_variants_s": cnn, "text_variant_s": text,
            "assumes": f"{STUDY_IMAGES} images cached on all cores; {STUDY_REPORTS} reports; "
                       f"{STUDY_CNN_VARIANTS} CNN variants x {STUDY_EPOCHS} epochs x "
                       f"{STUDY_TRAIN_IMAGES} images at project_loop.images_per_s (best batch); "
                       "text-only variant measured (head-only train_epoch at the default batch)",
            "excludes": "process and CUDA start-up, model building, Split.to, the per-epoch "
                        "validation pass, evaluate and compare"}


def verdicts(values: dict) -> dict:
    check = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t}
    return {name: {"value": rnd(values[name]), "target": f"{op} {threshold}",
                   "pass": bool(check[op](values[name], threshold))}
            for name, (op, threshold) in TARGETS.items()}


def summarise(result: dict) -> None:
    """The projection, the ratios and the verdicts, from every section measured."""
    loop_rates, ceiling = result["project_loop"], result["compute_ceiling"]["images_per_s_by_batch"]
    original = result["original_step"]["images_per_s"]
    result["projection"] = project_full_study(result)
    result["projected_full_study_s"] = result["projection"]["total_s"]
    result["ratios"] = {
        "project_loop_vs_compute_ceiling":
            loop_rates["images_per_s"] / ceiling[str(loop_rates["best_batch"])],
        "project_loop_vs_compute_ceiling_default_batch":
            loop_rates["images_per_s_default_batch"] / ceiling[str(loop_rates["default_batch"])],
        "project_loop_vs_original_step": loop_rates["images_per_s"] / original,
        "project_loop_default_batch_vs_original_step":
            loop_rates["images_per_s_default_batch"] / original,
    }
    result["targets"] = verdicts({**result["ratios"],
                                  "embed_text_s": result["embed_text"]["seconds_for_3851"],
                                  "cache_images_scaling_efficiency":
                                      result["cache_images"]["scaling_efficiency"],
                                  "projected_full_study_s": result["projected_full_study_s"]})
    result["all_targets_pass"] = all(t["pass"] for t in result["targets"].values())


# --- every section, in one process -----------------------------------------------------------

def measure(s: Sizes, device, result: dict, work: Path, args) -> None:
    """Fill `result` section by section (a section appears once it is complete)."""
    inputs = make_inputs(s, work, result)
    # every fork (cache_images' pool, the DataLoader's workers) happens before the parent
    # process first tokenises in parallel (embed_text): forking after that can deadlock
    # (torch.compile's workers are started with fork + exec: safe)
    result["cache_images"], cache = caches.measure_cache_images(s, inputs)
    result["original_step"] = original_step.measure_section(s, inputs, device)
    split = loop.measure_loop_sections(s, cache, device, result)
    result["embed_text"] = caches.measure_embed_text(s, inputs.encoder, inputs.texts, device)
    summarise(result)
    # last: compiling is the step most likely to run long
    loop.measure_options_section(s, split, device, result, args.compile, args.compile_limit)


if __name__ == "__main__":
    main("benchmark", __doc__.split("\n\n")[0], measure, add_options=add_compile_options)
