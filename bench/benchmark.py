"""Throughput benchmark: the original notebook's training step vs the project's cached pipeline.

The one entry point: runs every measurement in one process on one device (CUDA when present,
else the CPU), with random weights (same compute as the real checkpoints) and SYNTHETIC pictures
and reports (cxrfusion/sources/demo.py), and prints one JSON object with every section, the
ratios, the projection and the pass/fail targets. The measurements live in small scripts that
also run alone (bench/README.md):

  bench/original_step.py  original_step: the notebook as it was
  bench/loop.py           project_loop (batch sweep, text-only), compute_ceiling, options
  bench/caches.py         cache_images, embed_text
  bench/common.py         sizes, synthetic data, timing, targets, JSON out, SIGTERM

  projected_full_study_s  caches + 2 CNN variants x 40 epochs x 6,000 images + the text-only
                          variant (bench/common.py: project_full_study).

Progress goes to stderr. Nothing is downloaded; every file is written to a temporary folder
that is removed at the end.

On a GPU machine (one H100/H200), from the repository root:

    .venv/bin/python bench/benchmark.py --compile > bench/result.json

A CPU smoke test of every code path (tiny sizes, one intra-op thread, meaningless rates; under a
minute on 2 cores; tests/test_benchmark.py runs it):

    .venv/bin/python bench/benchmark.py --tiny --device cpu

The targets in the JSON are meant for the real-size GPU run.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `cxrfusion`

from bench.common import Sizes, add_compile_options, main, make_inputs, summarise  # noqa: E402
from bench import caches, loop, original_step  # noqa: E402


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
