"""Fills docs/options.md's results table: the demo's result for each option a researcher will
try first (issue 18), replicated over train.seeds like the default, one `dvc exp run -S` each.

    python bench/options.py run [NAME ...]   # each option (default: all): dvc exp run --temp
                                             # -S ... (3 to 6 min each on 2 cores; the
                                             # workspace is not touched), its comparison kept
                                             # in docs/options/<name>.json
    python bench/options.py table            # docs/options.md's results table from them and
                                             # the workspace's metrics/comparison.json

Not DVC's queue (docs/sweeps.md): on the 2-core development machine a second queue worker would
share the same cores, so one `--temp` experiment at a time is as fast, and it lets the script
read each experiment's comparison as it ends.

Each experiment is an ordinary DVC experiment (`dvc exp show` lists it by name; `dvc exp
apply <name>` brings it into the workspace). docs/options/<name>.json keeps the experiment's
whole metrics/comparison.json (every model, difference and seed, the declared question and
each AUROC difference's verdict) under "comparison". A file kept before stages/compare.py gave
verdicts has none: its table row says so, with the command that reruns it. The results are
SYNTHETIC: the demo's data.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrfusion.params import Comparison  # noqa: E402

log = logging.getLogger("options")

# name -> the -S settings of its experiment (each option alone, all else the default)
OPTIONS = {
    "augment-affine": ["train.augment=affine"],
    "augment-affine+jitter": ["train.augment=affine+jitter"],
    "fusion-projector": ["model.fusion=projector"],
    "fusion-gated": ["model.fusion=gated"],
    "lr-backbone": ["train.lr_backbone=0.0003"],
    "backbone-b1": ["model.backbone=efficientnet_b1.ra4_e3600_r240_in1k"],
    "recipe-study": ["train.recipe=study"],  # the real study's recipe (docs/real-study.md)
}
KEPT = ROOT / "docs" / "options"
DOC = ROOT / "docs" / "options.md"
DIFFERENCES = {c.key: c.label  # comparison.json's key -> the column's name
               for c in (Comparison("fusion", "image"), Comparison("fusion", "text"),
                         Comparison("fusion", "shuffled"))}  # the last: fusion vs its placebo
MODELS = ("image", "text", "fusion", "shuffled")
MISSING = "—"  # a model or difference a file kept before the placebo does not have


def command(name: str) -> str:
    return "dvc exp run " + " ".join(f"-S {s}" for s in OPTIONS[name])


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def experiment_ref(name: str) -> str:
    """The newest experiment of that name on the current commit (refs/exps/..../<name>)."""
    head = git("rev-parse", "HEAD").strip()
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    if not git("for-each-ref", ref).strip():
        raise SystemExit(f"no experiment {name!r} on {head[:8]}: run `python bench/options.py "
                         f"run {name}` first")
    return ref


def run(names: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # stages call python
    KEPT.mkdir(parents=True, exist_ok=True)
    for name in names:
        log.info("%s: %s", name, command(name))
        subprocess.run(["dvc", "exp", "run", "--temp", "--force", "-n", name,
                        *[a for s in OPTIONS[name] for a in ("-S", s)]], cwd=ROOT, env=env,
                       check=True)
        ref = experiment_ref(name)
        comparison = json.loads(git("show", f"{ref}:metrics/comparison.json"))
        if not has_verdicts(comparison):  # kept whole: models, differences, the question
            raise SystemExit(f"{ref}:metrics/comparison.json has no verdicts: the experiment "
                             "ran an older stages/compare.py; commit the current one and rerun")
        gates = {}
        for path in git("ls-tree", "-r", "--name-only", ref, "metrics/test").split():
            metrics = json.loads(git("show", f"{ref}:{path}"))
            if "report_weight" in metrics:  # gated fusion: the weight of the report
                gates[path] = metrics["report_weight"]
        kept = {"name": name, "command": command(name), "experiment": ref,
                "commit": git("rev-parse", "HEAD").strip(), "comparison": comparison}
        if gates:
            kept["report_weight"] = gates
        (KEPT / f"{name}.json").write_text(json.dumps(kept, indent=1) + "\n")
        log.info("%s: kept in %s", name, (KEPT / f"{name}.json").relative_to(ROOT))


def has_verdicts(comparison: dict) -> bool:
    """Whether a comparison.json is of the schema with verdicts (stages/compare.py since the
    declared question): every AUROC difference records one, and the question is declared."""
    return "question" in comparison and all(
        "verdict" in d.get("auroc", {})
        for pairs in comparison["differences"].values() for d in pairs.values())


def _cell(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def rule(comparison: dict) -> str:
    """How a comparison's intervals (and verdicts, where it has them) were made."""
    b, units = comparison["bootstrap"], comparison["resampled"]
    if not has_verdicts(comparison):
        return (f"{0.95:.0%} interval from a two-level bootstrap over test {units} and seeds "
                f"({b['resamples']:,} resamples), thresholds fixed as chosen on the validation "
                "studies; no test and no verdict (run before the declared question)")
    q = comparison["question"]
    redrawn = ("the validation studies redrawn and every run's threshold chosen again on them"
               if b.get("validation_resampled") else "thresholds fixed as chosen on validation")
    if "procedure" in q:  # one t test a row, the family by a declared procedure
        return (f"the AUROC differences tested by one t a row ({q['test']}), the family of "
                f"{len(q['family'])} by {q['procedure']} at {q['alpha']:g}: higher or lower "
                f"when the adjusted p is below it, equivalent when the two one-sided tests within "
                f"±{q['margin']:g} survive the same procedure, else inconclusive; other measures: "
                f"{1 - q['alpha']:.0%} intervals from a two-level bootstrap over test {units} and "
                f"seeds ({b['resamples']:,} resamples, {redrawn})")
    adjusted = "Holm-adjusted" if q["adjustment"] == "holm" else f"{q['adjustment']}-adjusted"
    return (f"{1 - q['alpha']:.0%} interval from a two-level bootstrap over test {units} and "
            f"seeds ({b['resamples']:,} resamples, {redrawn}); the AUROC verdict as "
            f"metrics/comparison.md gives it: higher or lower when the {adjusted} p over the "
            f"family of {len(q['family'])} comparisons is below {q['alpha']:g}, equivalent "
            f"when the {1 - 2 * q['alpha']:.0%} interval lies inside ±{q['margin']:g}, else "
            "inconclusive")


NO_VERDICT = "— (run before verdicts)"


def rows(name: str, setting: str, comparison: dict) -> list[str]:
    verdicts = has_verdicts(comparison)
    out = []
    for text_input, block in comparison["differences"].items():
        models = comparison["models"][text_input]
        cells = [f"{models[v]['auroc']['mean']:.3f}" if v in models else MISSING
                 for v in MODELS]
        for diff in DIFFERENCES:
            if diff not in block:
                cells += [MISSING, MISSING]
                continue
            cells += [_cell(block[diff]["auroc"]),
                      f"**{block[diff]['auroc']['verdict']}**" if verdicts else NO_VERDICT]
        cells += [_cell(block[diff]["f1"]) if diff in block else MISSING
                  for diff in DIFFERENCES]
        out.append(f"| {name} | {setting} | {text_input} | " + " | ".join(cells) + " |")
    return out


def caption(rules: dict) -> list[str]:
    """One line per rule: the rows that used it, where they were run, how to rerun them."""
    lines = []
    for (text, verdicts), kept in rules.items():
        names = [name for name, _ in kept]
        commits = sorted({commit[:8] for _, commit in kept if commit})
        workspace = any(commit is None for _, commit in kept)
        where = "; ".join(filter(None, [
            "default: the workspace's metrics/comparison.json" if workspace else "",
            f"the options: experiments on commit {', '.join(commits)}" if commits else ""]))
        rerun = ("" if verdicts else
                 f" Their verdict cells read “{NO_VERDICT}”; to give them verdicts, rerun "
                 f"`python bench/options.py run {' '.join(n for n in names if n in OPTIONS)}`.")
        lines.append(f"- {', '.join(names)} ({where}): {text}.{rerun}")
    return lines


def table() -> str:
    base = json.loads((ROOT / "metrics" / "comparison.json").read_text())
    header = ["option", "`dvc exp run -S`", "text input", "image AUROC", "text AUROC",
              "fusion AUROC", "placebo AUROC", *(f"{d} {m}" for d in DIFFERENCES.values()
                                for m in ("AUROC", "AUROC verdict")),
              *(f"{d} F1 (descriptive)" for d in DIFFERENCES.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += rows("default (the original's settings)", "(none)", base)
    rules = {(rule(base), has_verdicts(base)): [("default", None)]}  # -> (row, commit)
    gates = []
    for name, settings in OPTIONS.items():
        path = KEPT / f"{name}.json"
        if not path.exists():
            lines.append(f"| {name} | `{' '.join(settings)}` | not run |"
                         + " |" * (len(header) - 3))
            continue
        kept = json.loads(path.read_text())
        comparison = kept["comparison"]
        lines += rows(name, " ".join(f"`{o}`" for o in settings), comparison)
        rules.setdefault((rule(comparison), has_verdicts(comparison)), []).append(
            (name, kept.get("commit")))
        for run, w in sorted(kept.get("report_weight", {}).items()):
            seed_input = re.sub(r"^metrics/test/fusion/|\.json$", "", run)
            gates.append(f"| {seed_input} | {w['studies']['mean']:.3f} | "
                         f"{w.get('abnormal', {}).get('mean', float('nan')):.3f} | "
                         f"{w.get('normal', {}).get('mean', float('nan')):.3f} |")
    n = base["test_studies"]
    seeds = base["seeds"]
    kept_all = {name: json.loads((KEPT / f"{name}.json").read_text())["comparison"]
                for name in OPTIONS if (KEPT / f"{name}.json").exists()}
    text = [f"SYNTHETIC demo data ({n} test studies). Each cell: the mean over {seeds} seeds "
            "(AUROC of each model), or the paired difference's mean over seeds [interval]; F1 "
            "at the threshold chosen on validation is descriptive (no test). "
            + ("The rows did not all use one rule:" if len(rules) > 1 else "The rule:"), "",
            *caption(rules), "", *lines]
    if gates:
        text += ["", ("Gated fusion: the weight its gate gives the report (mean over the test "
                      "studies of the mean of 1 − z; 0: the image alone, 1: the report "
                      "alone)."), "",
                 "| run | all studies | abnormal | normal |", "| --- | --- | --- | --- |", *gates]
    text += ["", "What the rows say (generated from the verdicts, option by option; the "
             "verdicts are each experiment's own family's):", "", *readings(base, kept_all)]
    return "\n".join(text)


def readings(base: dict, kept: dict[str, dict]) -> list[str]:
    """What the rows say, in sentences made from the kept comparisons (none typed by hand): per
    text input, the options whose image model beats the default's, and what fusion - image and
    fusion - shuffled read under each, with their verdicts."""
    lines = []
    for text_input in base["differences"]:
        def auroc(c: dict, key: str) -> dict | None:
            return c["differences"][text_input].get(key, {}).get("auroc")
        image = base["models"][text_input]["image"]["auroc"]["mean"]
        rows = {n: c for n, c in kept.items() if has_verdicts(c)}
        stronger = {n: c for n, c in rows.items()
                    if c["models"][text_input]["image"]["auroc"]["mean"] > image}
        parts = []
        for name, c in [("default", base), *stronger.items()]:
            d, e = auroc(c, "fusion_minus_image"), auroc(c, "fusion_minus_shuffled")
            placebo = (f"; fusion − placebo {e['mean']:+.3f}, {_verdict(e)}" if e else "")
            parts.append(f"{name} (image {c['models'][text_input]['image']['auroc']['mean']:.3f})"
                         f": fusion − image {d['mean']:+.3f}, {_verdict(d)}{placebo}")
        lines.append(f"- **{text_input}**: {len(stronger)} of {len(rows)} options give the image "
                     f"model a higher AUROC than the default's {image:.3f}. "
                     + "; ".join(parts) + ".")
    return lines


def _verdict(d: dict) -> str:
    return d["verdict"] + (" (exploratory)" if d.get("role") == "exploratory" else "")


def write_table() -> None:
    doc = DOC.read_text()
    begin, end = "<!-- options table: begin -->", "<!-- options table: end -->"
    if begin not in doc or end not in doc:
        raise SystemExit(f"{DOC} lacks the markers {begin} ... {end}")
    head, rest = doc.split(begin)
    DOC.write_text(f"{head}{begin}\n{table()}\n{end}{rest.split(end)[1]}")
    log.info("wrote the table into %s", DOC.relative_to(ROOT))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("run").add_argument("names", nargs="*", choices=[[], *OPTIONS], default=[])
    sub.add_parser("table")
    a = parser.parse_args()
    if a.what == "run":
        run(a.names or list(OPTIONS))
    write_table()
