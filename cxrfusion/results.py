"""The comparison as a reader reads it: metrics/comparison.md, which README.md shows, written
from comparison.json alone. Every column is named by what it measures; every sentence that
states a result is made from a verdict (cxrfusion/verdicts.py), never typed by hand."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from cxrfusion import params
from cxrfusion.metrics import MEASURES
from cxrfusion.params import VARIANTS, Comparison, Params

README_BLOCK = re.compile(r"<!-- results: metrics/comparison\.md -->\n(.*?)<!-- /results -->", re.S)

# Table 1 from the simplest reader up: those that read no report (once), then per text input the
# others, those that also read the image last (image, text, fusion)
TABLE_ORDER = sorted(VARIANTS, key=lambda v: (VARIANTS[v].reads_report, VARIANTS[v].reads_image))


def measures(result: dict) -> dict:
    """metric -> what its column measures (the table of measures, metrics.MEASURES)."""
    return {m.name: m.column.format(**result) for m in MEASURES}


def cell(s: dict, prefix: str = "", signed: bool = False) -> str:
    """mean ± sd [low, high]; the sd where there is one (a model over several seeds)."""
    f = "{:+.3f}" if signed else "{:.3f}"
    sd = f" ± {s['sd']:.3f}" if s.get("sd") is not None else ""
    return f"{prefix}{f.format(s['mean'])}{sd} [{f.format(s['low'])}, {f.format(s['high'])}]"


def p_value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value >= 0.001 else "< 0.001"


def _ci(d: dict, key: str = "") -> str:
    low, high = (d[key]["low"], d[key]["high"]) if key else (d["low"], d["high"])
    return f"{low:+.3f} to {high:+.3f}"


def sentence(c: Comparison, d: dict, alpha: float, margin: float, units: str) -> str:
    """One comparison's result in words, from its verdict: never "no difference" where the
    verdict is inconclusive. `units`: what the test set counts (studies, or patients)."""
    adjusted = d["p_adjusted"] is not None
    what = (f"{c.label} AUROC {d['mean']:+.3f} ({1 - alpha:.0%} interval {_ci(d)}; "
            f"{'family-adjusted' if adjusted else 'exploratory, unadjusted'} p "
            f"{_p_phrase(d['p_adjusted'] if adjusted else d['p'])})")
    a, b = params.noun(c.a), params.noun(c.b)
    if d["verdict"] in ("higher", "lower"):
        side = "better" if d["verdict"] == "higher" else "worse"
        return f"{a.capitalize()} ranks the test studies {side} than {b}: {what}."
    if d["verdict"] == "equivalent":
        return (f"{a.capitalize()} and {b} are equivalent within ±{margin:g} AUROC: {what}; "
                f"the {1 - 2 * alpha:.0%} interval {_ci(d, 'equivalence_interval')} lies "
                "inside the margins.")
    return (f"Not shown either way: {what}. Neither a difference nor equivalence within "
            f"±{margin:g} is shown; the test run would detect a difference of "
            f"{d['design']['detectable']:.3f} with {d['design']['power']:.0%} power, and "
            f"{reach(d, margin, units)}.")


def answer_sentences(primary: Comparison, d: dict, placebo: Comparison | None,
                     e: dict | None, alpha: float, margin: float, units: str) -> str:
    """The primary's sentence, then, with the placebo in the family, what the report's content
    adds beyond the capacity of the branch that reads it (fusion - shuffled, tested right
    after the primary): the gain is the report's only when both are shown."""
    first = sentence(primary, d, alpha, margin, units)
    if placebo is None:
        return first
    against = (f"{placebo.label} AUROC {e['mean']:+.3f} ({1 - alpha:.0%} interval {_ci(e)}; "
               f"family-adjusted p {_p_phrase(e['p_adjusted'])})")
    a, b = params.noun(placebo.a), params.noun(placebo.b)
    if d["verdict"] == "higher":
        if e["verdict"] == "higher":
            return (f"{first} It also ranks them better than {b}: {against}; so the gain "
                    "comes from what the reports say, not from the capacity of the branch "
                    "that reads them.")
        return (f"{first} But it is not shown to rank them better than {b}: {against}; so the "
                "gain may be the capacity of the branch that reads the report, not what the "
                "report says.")
    shown = e["verdict"] in ("higher", "lower")
    return (f"{first} Against {b}, tested only after the primary is shown: {against}; "
            + (f"{a} ranks them {'better' if e['verdict'] == 'higher' else 'worse'}."
               if shown else "not shown either way."))


def _p_phrase(value: float) -> str:
    p = p_value(value)
    return p if p.startswith("<") else "= " + p


def reach(d: dict, margin: float, units: str) -> str:
    """What would show equivalence within the margin: more test studies (patients) with these
    seeds, or more seeds with these test studies, or neither alone."""
    g, seeds = d["design"], len_seeds(d)
    n, s = g["units_for_equivalence"], g["seeds_for_equivalence"]
    more_units = (f"about {n:,} test {units} with these {seeds} seeds" if n else
                  f"no number of test {units} with {seeds} seeds (their spread alone is too "
                  "large)" if seeds > 1 else
                  f"no number of test {units} can be said with one seed (no spread between "
                  "seeds is estimated)")
    more_seeds = (f"about {s} seeds with these test {units}" if s else
                  f"no number of seeds with these test {units} (their part alone is too large)")
    return f"equivalence within ±{margin:g} would need {more_units}, or {more_seeds}"


def len_seeds(d: dict) -> int:
    return sum(key.startswith("seed-") for key in d)


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(*titles) -> list[str]:
    return [_row(titles), "|" + " --- |" * len(titles)]


def method(result: dict, p: Params) -> str:
    b, q = result["bootstrap"], result["question"]
    rule = p.evaluate.threshold
    rule = rule if isinstance(rule, str) else f"fixed at {rule}"
    units = result["resampled"]
    val = (f" Each round also redraws the {result['validation_studies']} validation studies "
           f"and chooses every run's threshold ({rule}) again on them, so intervals at the "
           "threshold include where it fell." if b["validation_resampled"] else
           f" Thresholds ({rule}) stay as chosen on the validation studies.")
    once = [VARIANTS[v].noun for v in VARIANTS if VARIANTS[v].trained_once]
    return (f"Test studies: {result['test_studies']}; seeds per model: {result['seeds']} "
            f"({', '.join(map(str, p.train.seeds))})"
            + (f", but {' and '.join(once)}, deterministic, trained once: its one run stands "
               "for every seed, so a difference with it varies with the other model's seeds "
               "alone" if once else "")
            + ". Every number is a mean over seeds. "
            f"The AUROC differences (Table 1) are tested without resampling: {q['test']}. "
            f"The declared family of {len(q['family'])} comparisons is controlled at "
            f"α = {q['alpha']:g} by weighted Holm, the primary first at "
            f"{q['weights'][q['primary']]:.0%} of α"
            + (f", the placebo ({Comparison.parse(q['placebo']).label}) right after it with "
               "all of the primary's α once the primary is shown (a fixed sequence, which "
               "then passes it on to the secondaries)" if q.get("placebo") else "")
            + "; its equivalence tests, a family of their own, likewise. Every other "
            f"interval is descriptive, {b['level']:.0%}, from one "
            f"two-level bootstrap over test {units} and seeds ({b['resamples']:,} resamples, "
            f"seed {b['seed']}; no verdict rests on it).{val}")


def inferential(result: dict) -> list[str]:
    """Table 1: the AUROC differences, one test and one verdict a row."""
    q, units = result["question"], result["resampled"]
    level, eq = f"{1 - q['alpha']:.0%}", f"{1 - 2 * q['alpha']:.0%}"
    lines = [f"**Table 1. AUROC differences: the inferential rows.** One t a row (df: "
             f"Satterthwaite's, test {units} and seeds): p two-sided, p < {q['alpha']:g} "
             f"exactly when the {level} interval excludes 0 (unadjusted). Adjusted p: weighted "
             f"Holm over the family (weights in the role column"
             + ("; the placebo's: the primary's, which it receives once the primary is shown"
                if q.get("placebo") else "")
             + f"), which controls the "
             f"family-wise error rate at {q['alpha']:g}; adjusted interval: at 1 − weight × α, "
             "single-step, so it excludes 0 only where the row is shown (a shown row's may "
             f"still hold 0). Verdict: higher or lower when the adjusted p < {q['alpha']:g}; "
             f"else equivalent when the adjusted p of the two one-sided tests (the {eq} "
             f"interval inside ±{q['margin']:g}; a family of its own, same procedure) < "
             f"{q['alpha']:g}; else inconclusive. Detectable: the difference the test run "
             f"finds with 80 % power at the row's share of α; last column: test {units} that "
             f"would show equivalence within ±{q['margin']:g} with 80 % power, these seeds, "
             "if the true difference were 0 (— : the spread between seeds alone is too large; "
             "n/a: a difference is shown).", ""]
    lines += _header("text input", "comparison", "role (weight)", f"Δ AUROC [{level} interval]",
                     "p", "adjusted p", "adjusted interval", f"{eq} interval", "verdict",
                     "detectable Δ", f"test {units} for equivalence")
    for c, d in _auroc_rows(result):
        g = d["design"]
        role = d["role"] + (f" ({d['weight']:.2f})" if d.get("weight") is not None else "")
        adj = d.get("adjusted_interval")
        lines.append(_row([c.text_input, c.label, role, cell(d, signed=True),
                           p_value(d["p"]), p_value(d["p_adjusted"]),
                           f"[{adj['low']:+.3f}, {adj['high']:+.3f}]" if adj else "—",
                           f"[{d['equivalence_interval']['low']:+.3f}, "
                           f"{d['equivalence_interval']['high']:+.3f}]", f"**{d['verdict']}**",
                           f"{g['detectable']:.3f}", _for_equivalence(d)]))
    return lines


def _for_equivalence(d: dict) -> str:
    """The test units that would show equivalence: n/a where a difference is shown."""
    if d["verdict"] in ("higher", "lower"):
        return "n/a"
    n = d["design"]["units_for_equivalence"]
    return f"{n:,}" if n else "—"


def _auroc_rows(result: dict):
    """(Comparison, its AUROC entry): the primary first, then the family, then the rest."""
    order = {name: i for i, name in enumerate(result["question"]["family"])}
    rows = [(c, result["differences"][i][c.key]["auroc"])
            for i in result["differences"] for c in comparisons(result, i)]
    return sorted(rows, key=lambda r: order.get(r[0].name, len(order)))


def comparisons(result: dict, text_input: str) -> list[Comparison]:
    """The pairs comparison.json holds for one text input, in PAIRS' order, each pair's
    encoders grouped (params.pair_order)."""
    found = [Comparison.from_key(key, text_input) for key in result["differences"][text_input]]
    return sorted(found, key=params.pair_order)  # comparison.json's keys are sorted by name


def findings(result: dict) -> list[str]:
    q = result["question"]
    lines = ["**What the rows say** (generated from the verdicts):", ""]
    for c, d in _auroc_rows(result):
        lines.append(f"- *{c.text_input}, {c.label}* ({d['role']}): "
                     f"{sentence(c, d, q['alpha'], q['margin'], result['resampled'])}")
    return lines


def models(result: dict) -> list[str]:
    """Table 2: each model on the test studies, descriptive."""
    names = measures(result)
    lines = ["**Table 2. Each model on the test studies (descriptive).** Cell: mean ± sd over "
             "seeds [interval]; a model trained once, its one run [interval]. Sensitivity at a "
             "fixed specificity is read off each run's test ROC, linear between its points (as "
             "the ROC figure draws it; tied scores are one diagonal step, what breaking the tie "
             "at random gives), so every model is compared at the same specificity; the "
             "validation threshold is each run's own. ECE noise floor: the 95th percentile of "
             "the ECE a perfectly calibrated model with the same scores would have by chance "
             "(labels drawn from its probabilities, 1,000 times; mean over seeds): an ECE below "
             "it is not evidence of miscalibration.", ""]
    lines += _header("text input", "model", *names.values(), "ECE noise floor")
    inputs = list(result["models"])
    arms = sorted(result["models"][inputs[0]],  # grouped by encoder, then in the table's order
                  key=lambda v: params.arm_order(v, TABLE_ORDER))
    blind = [v for v in arms if not params.row(v).reads_report]  # once, with the first input
    for text_input, v in [(inputs[0], v) for v in blind] + [
            (i, v) for i in inputs for v in arms if v not in blind]:
        m = result["models"][text_input][v]
        lines.append(_row([text_input if params.row(v).reads_report else "— (reads no report)",
                           params.title(v), *(cell(m[k]) for k in names),
                           f"{m['ece_floor']['mean']:.3f}"]))
    return lines


def descriptive(result: dict) -> list[str]:
    """Table 3: the paired differences of every other measure, descriptive."""
    names = {k: v for k, v in measures(result).items() if k != "auroc"}
    lines = ["**Table 3. Paired differences of the other measures (descriptive: outside the "
             "family, no test).** Cell: mean over seeds [interval].", ""]
    lines += _header("text input", "comparison", *names.values())
    for text_input, pairs in result["differences"].items():
        for c in comparisons(result, text_input):
            d = pairs[c.key]
            lines.append(_row([text_input, c.label,
                               *(cell(d[k], signed=True) for k in names)]))
    return lines


def table(result: dict, p: Params) -> str:
    """metrics/comparison.md: the answer to the primary question first, then the method, the
    inferential table and its sentences, the models, and the descriptive differences."""
    q = result["question"]
    primary = Comparison.parse(q["primary"])
    verdict = result["differences"][primary.text_input][primary.key]["auroc"]["verdict"]
    lines = [f"**Primary question** (`compare.primary` = {primary.name}): with the "
             f"{primary.text_input} as text input, does {params.noun(primary.a)} rank the test "
             f"studies better than {params.noun(primary.b)} (AUROC)? **{verdict.capitalize()}.** "
             f"{q['answer']}", "",
             method(result, p), "", *inferential(result), "", *findings(result), "",
             *models(result), "", *descriptive(result)]
    return "\n".join(lines) + "\n"


def summary(result: dict) -> dict:
    """metrics/summary.json, the headline DVC's experiment table shows: the image model's AUROC
    (it reads no report: once), per text input those of the models that read it, and each
    declared AUROC difference's (the family's) mean, interval ends and verdict (36 numbers for
    the default family). Everything else is in comparison.json."""
    first = next(iter(result["models"].values()))
    reading = [v for v in first if params.row(v).reads_report]  # per text input
    out = {v: {"auroc": first[v]["auroc"]["mean"]} for v in first if v not in reading}
    family = set(result["question"]["family"])
    for text_input, models in result["models"].items():
        out[text_input] = {"auroc": {v: models[v]["auroc"]["mean"] for v in reading}}
        for c in [c for c in comparisons(result, text_input) if c.name in family]:
            d = result["differences"][text_input][c.key]["auroc"]
            out[text_input][c.summary_key] = {"mean": d["mean"], "low": d["low"], "high": d["high"],
                                           "verdict": d["verdict"]}
    return out


def forest_rows(result: dict, inputs: list[str], seeds: list[int]) -> dict:
    """The differences as the forest plot reads them: per input, Comparison and metric."""
    shown = [m.name for m in MEASURES if m.forest]
    rows = {}
    for text_input in inputs:
        rows[text_input] = {}
        for c in comparisons(result, text_input):
            d = result["differences"][text_input][c.key]
            rows[text_input][c] = {
                m: {**d[m], "per_seed": [d[m][f"seed-{s}"] for s in seeds]} for m in shown}
    return rows


TABLE_2 = "**Table 2."


def readme_block(table: str) -> str:
    """What README.md shows of comparison.md: all of it up to Table 2 (each model, and then
    the descriptive differences of the other measures), which it names by path."""
    head, found, _ = table.partition(TABLE_2)
    return head + ("Table 2 (each model on the test studies) and Table 3 (the paired "
                   "differences of the other measures), descriptive: "
                   "[metrics/comparison.md](metrics/comparison.md).\n" if found else "")


def into_readme(readme: Path, table: str) -> str:
    """README.md's text with its results block replaced by `table`'s (comparison.md)."""
    text = readme.read_text()
    if not README_BLOCK.search(text):
        raise SystemExit(f"{readme} has no <!-- results: metrics/comparison.md --> block")
    return README_BLOCK.sub(lambda _: "<!-- results: metrics/comparison.md -->\n"
                                      f"{readme_block(table)}<!-- /results -->", text)


if __name__ == "__main__":  # `make repro`: README.md's block follows metrics/comparison.md
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    readme.write_text(into_readme(readme, Path("metrics/comparison.md").read_text()))
