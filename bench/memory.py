"""Measures docs/scaling.md's host-memory row (and docs/design.md's peak): peak host memory of
`train` at the real study's size, on this machine's CPU.

    .venv/bin/python bench/memory.py [--code DIR] [--images 7466] [--size 240] [--batch 64]

Builds, in a temporary folder, what `train` reads for IU X-ray at full size: data/prepared
(3,851 studies, 7,466 images, the default split fractions), features/images.h5 (random uint8
images at --size px), the text cache of the first text input (features/text/<input>.h5; 768-dim
vectors, as BioBERT's) and features/images_counts.json, with the stages' own writers. Then,
each in a child process of its own, measures the peak resident memory (ru_maxrss, via wait4):
  loading   what `train` does before its first step: `load_splits` of the rows it trains on
            (the host memory a GPU run needs; printed also above the imports' own peak);
  train     `python -m stages.train fusion <first seed> <first text input>`, one epoch on the
            CPU (there the activations of the CPU's forward and backward come on top).
Prints one JSON object. --code names the checkout whose `stages/` runs (default: this one), so
that two commits are measured on the same data; a checkout from before train.seeds and
text.inputs (one run per variant, a single text.h5 report cache, a `text` column) is measured in
its own formats.

The backbone is a small one (--backbone, default tinynet_e, an EfficientNet scaled down): the
question is the copies of the image cache, and EfficientNet-B1 would take ~20 min an epoch on 2
cores. `image_cache_mb` is the unit of those copies (N x S x S bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# written inside the checkout under test, with its own formats (attributes differ by version)
MAKE_DATA = textwrap.dedent("""
    import inspect, json, sys
    import h5py, numpy as np, pandas as pd, yaml
    from cxrfusion import formats
    from cxrfusion.studies import split_studies
    n_images, size = int(sys.argv[1]), int(sys.argv[2])
    p = yaml.safe_load(open("params.yaml"))
    if hasattr(formats, "text_cache"):  # one cache per text input; the report fields as columns
        from cxrfusion import params
        text_input = p["text"]["inputs"][0]
        if hasattr(params, "built"):  # typed parameters; the input's fields an argument
            text = (params.built(p).text, params.fields_of(text_input))
        elif "fields" in inspect.signature(formats.text_cache_attrs).parameters:
            text = (p["text"], params.fields_of(text_input))
        else:  # commits before: text.fields slipped into the parameters
            text = (params.for_text_input(p, text_input)["text"],)
        fields = dict.fromkeys(f for i in p["text"]["inputs"] for f in params.fields_of(i))
        report, cache = {f: "No acute disease." for f in fields}, formats.text_cache(text_input)
    else:  # commits before text.inputs: one text.h5 report cache, studies.csv's `text` column
        text, report, cache = (p["text"],), {"text": "No acute disease."}, formats.TEXT_H5
    rng = np.random.default_rng(0)
    n_studies = round(n_images / 1.94)  # IU X-ray: 7,466 images of 3,851 studies
    uids = np.arange(1, n_studies + 1)
    labels = (rng.random(n_studies) < 0.64).astype(int)  # 64 % abnormal, as IU X-ray
    split = split_studies(uids, labels, p["split"]["test"], p["split"]["val"], 0)
    of_image = np.sort(np.concatenate([uids, rng.choice(uids, n_images - n_studies)]))
    studies = pd.DataFrame({"uid": uids, "label": labels, "split": split,
                            "n_images": np.bincount(of_image)[1:], "views": "Frontal",
                            "mesh": "normal", **report})
    row = of_image - 1
    images = pd.DataFrame({"uid": of_image, "filename": [f"{i}.png" for i in range(n_images)],
                           "view": "Frontal", "label": labels[row], "split": split[row]})
    formats.PREPARED.mkdir(parents=True)
    studies.to_csv(formats.STUDIES, index=False)
    images.to_csv(formats.IMAGES, index=False)
    formats.IMAGES_H5.parent.mkdir(parents=True)
    with h5py.File(formats.IMAGES_H5, "w") as f:
        fit = (p["image"]["fit"],) if "fit" in p["image"] else ()  # commits before image.fit
        data = formats.create_image_cache(f, n_images, size, *fit)
        for start in range(0, n_images, 256):
            block = min(256, n_images - start)
            data[start:start + block] = rng.integers(0, 256, (block, size, size), dtype=np.uint8)
        f.create_dataset("filenames", data=images["filename"].to_numpy(object),
                         dtype=h5py.string_dtype())
        f.create_dataset("skipped", data=np.array([], dtype=object), dtype=h5py.string_dtype())
    attrs = {**formats.text_cache_attrs(*text), "revision": "None",
             "fingerprint": "sha256:synthetic", "dim": 768}
    formats.write_text_cache(cache, uids, rng.standard_normal((n_studies, 768)), attrs)
    with open(formats.IMAGES_COUNTS, "w") as f:  # what cache_images reports
        json.dump({"cached": n_images, "skipped": 0, "skipped_files": [], "skipped_images": []}, f)
""")


# what `train` does before its first step: the caches read into the splits it trains on
LOAD = textwrap.dedent("""
    import inspect, json, resource
    from cxrfusion import params
    from cxrfusion.dataset import load_splits
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    names = {"names": ("train", "val")}  # commits before `names` read every split
    kw = names if "names" in inspect.signature(load_splits).parameters else {}
    p = params.load()
    reads = True  # what the first fusion run reads: commits before took a flag for the text
    if hasattr(params, "built"):  # ...now its text input, of typed parameters
        reads = p.text.inputs[0]
    elif "text_input" in inspect.signature(load_splits).parameters:
        reads = p["text"]["inputs"][0]
    elif hasattr(params, "for_run"):  # ...with the run's values slipped into the parameters
        from cxrfusion.formats import Run
        p = params.for_run(p, Run("fusion", p["train"]["seeds"][0], p["text"]["inputs"][0]))
    splits, _ = load_splits(p, True, reads, **kw)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"imports_mb": before / 1024, "loaded_mb": after / 1024}))
""")


def peak(command: list[str], cwd, env) -> tuple[float, float, str]:
    """Seconds, peak resident memory (MB) and output of a child process: its own peak, no
    other's (wait4)."""
    start = time.perf_counter()
    with open(Path(cwd, "child.log"), "w+") as out:
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(command)} failed:\n{text[-4000:]}")
    return seconds, usage.ru_maxrss / 1024, text  # ru_maxrss: KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", type=Path, default=ROOT,
                    help="checkout whose stages/ and params.yaml run (default: this one)")
    ap.add_argument("--images", type=int, default=7466, help="images (default 7466: IU X-ray)")
    ap.add_argument("--size", type=int, default=240, help="image side, px (default 240)")
    ap.add_argument("--backbone", default="tinynet_e",
                    help="timm backbone (default tinynet_e: see above)")
    ap.add_argument("--batch", type=int, default=64, help="train.batch_size (default 64)")
    ap.add_argument("--no-train", action="store_true",
                    help="measure the loading only (default: loading and one epoch)")
    a = ap.parse_args()
    code = a.code.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        p = yaml.safe_load((code / "params.yaml").read_text())
        p["image"]["size"] = a.size
        p["model"]["backbone"] = a.backbone
        p["train"].update(epochs=1, batch_size=a.batch, device="cpu")
        Path(tmp, "params.yaml").write_text(yaml.safe_dump(p))
        env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", MAKE_DATA, str(a.images), str(a.size)], cwd=tmp,
                       env=env, check=True)
        _, _, loaded = peak([sys.executable, "-c", LOAD], tmp, env)
        loading = json.loads(loaded.strip().splitlines()[-1])
        result = {
            "code": str(code), "images": a.images, "size": a.size,
            "image_cache_mb": round(a.images * a.size * a.size / 1e6, 1),
            "loading_peak_rss_mb": round(loading["loaded_mb"], 1),
            "loading_peak_above_imports_mb": round(loading["loaded_mb"] - loading["imports_mb"], 1),
        }
        if not a.no_train:
            # the first fusion run; a commit before train.seeds trains `fusion` alone
            run = ([str(p["train"]["seeds"][0]), p["text"]["inputs"][0]]
                   if "seeds" in p["train"] else [])
            seconds, train_peak, _ = peak([sys.executable, "-m", "stages.train", "fusion", *run],
                                          tmp, env)
            result.update(backbone=a.backbone, batch=a.batch, epochs=1,
                          train_seconds=round(seconds, 1), train_peak_rss_mb=round(train_peak, 1))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
