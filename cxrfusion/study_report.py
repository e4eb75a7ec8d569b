"""The study report (metrics/study_report.md): what a reviewer asks of a study around its
answer, from the outputs the stages wrote. Participant flow from the raw dataset to each split, the
characteristics of each partition and their balance, reproducibility, and the CLAIM items the
report fills. Every count is read from a stage's output, never recomputed another way.
"""
from __future__ import annotations

import json
import math
from importlib import metadata

import pandas as pd

from cxrfusion import params, subgroups, verdicts
from cxrfusion.formats import SPLITS
from cxrfusion.params import PLACEBO, Comparison, Params, defaults, fields_of
from cxrfusion.studies import join_text, report_words

PACKAGES = ("torch", "timm", "transformers", "dvc", "numpy", "scikit-learn")
FAILURES = 5  # the test studies listed where two models disagree most, per comparison
WORDS = 12    # the first words of a study's report shown beside it
Z95 = 1.96  # a split is flagged when a difference exceeds what random assignment gives 95 % of
# the time: |standardised difference| > 1.96 sqrt(1/n_a + 1/n_b) (its standard error)


# --- 1. participant flow -------------------------------------------------------------------------

def flow(studies: pd.DataFrame, images: pd.DataFrame, prepared: dict, cached: dict) -> dict:
    """From the raw dataset to each split: prepare's counts.json (what it read and dropped, and
    what each split holds), cache_images' images_counts.json (what it skipped), and the tables
    (the studies left with no readable image: every image of theirs skipped)."""
    dropped = prepared["dropped"]
    skipped = set(cached.get("skipped_images", []))
    unreadable = images.assign(bad=images["filename"].isin(skipped)).groupby("uid")["bad"].all()
    by_split = {}
    for split in SPLITS:
        counted = prepared["by_split"][split]
        mine = studies.loc[studies["split"] == split, "uid"]
        by_split[split] = {
            "studies": counted["studies"], "abnormal": counted["abnormal_studies"],
            "images": counted["images"],
            "no_readable_image": int(unreadable.reindex(mine, fill_value=False).sum()),
            **({"patients": counted["patients"]} if "patients" in counted else {})}
    return {
        "read": {"studies": prepared["studies"] + dropped["studies_unindexed"]
                 + dropped["studies_without_mesh"],
                 "images": prepared["images"] + dropped["images_of_dropped_studies"]},
        "dropped": {"No Indexing (never labelled)": dropped["studies_unindexed"],
                    "no MeSH terms": dropped["studies_without_mesh"]},
        "dropped_images": dropped["images_of_dropped_studies"],
        "kept": {"studies": prepared["studies"], "images": prepared["images"]},
        "empty_text": dict(prepared["studies_with_empty_text"]),
        "images_skipped": len(skipped),
        "by_split": by_split,
    }


# --- 2. characteristics by partition -------------------------------------------------------------

def characteristics(studies: pd.DataFrame, inputs: list[str]) -> dict:
    """Per split: each characteristic's mean and standard deviation (a share for a yes/no)."""
    columns = {"abnormal": studies["label"].astype(float),
               "images per study": studies["n_images"].astype(float),
               "with a lateral view": studies["views"].fillna("").str.contains("Lateral")
               .astype(float)}
    for text_input in inputs:
        words = report_words(studies, fields_of(text_input))
        columns[f"{text_input}: words"] = words.astype(float)
        columns[f"{text_input}: empty"] = (words == 0).astype(float)
    table = pd.DataFrame(columns)
    out = {}
    for split in SPLITS:
        mine = table[studies["split"].to_numpy() == split]
        out[split] = {name: {"mean": float(mine[name].mean()), "sd": float(mine[name].std(ddof=0))}
                      for name in table.columns}
    return out


def standardised_difference(a: dict, b: dict) -> float:
    """(mean a - mean b) / sqrt((sd a^2 + sd b^2) / 2); 0 where both spreads are 0."""
    pooled = math.sqrt((a["sd"] ** 2 + b["sd"] ** 2) / 2)
    return 0.0 if pooled == 0 else (a["mean"] - b["mean"]) / pooled


def balance(table: dict, sizes: dict) -> dict:
    """The largest |standardised difference| of any characteristic, train against val and
    against test, and the bound random assignment of studies of these sizes stays within 95 %
    of the time (Z95): a bad split shows as one beyond it. (A fixed 0.1 would flag noise: one
    empty report in 59 validation studies is 0.19.)"""
    out = {}
    for other in ("val", "test"):
        diffs = {name: standardised_difference(table["train"][name], table[other][name])
                 for name in table["train"]}
        worst = max(diffs, key=lambda k: abs(diffs[k]))
        out[f"train vs {other}"] = {"characteristic": worst, "difference": diffs[worst],
                                    "bound": Z95 * math.sqrt(1 / sizes["train"]
                                                             + 1 / sizes[other])}
    return out


# --- 3. reproducibility --------------------------------------------------------------------------

def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_parameters(p: Params) -> dict:
    """Every parameter whose value is not the described default (cxrfusion/params.py)."""
    default = _flat(defaults())
    return {k: v for k, v in _flat(params.as_dict(p)).items() if k in default and default[k] != v}


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def pins(model_json: dict) -> dict:
    """What a model records of the weights it read (model.json)."""
    keys = ("backbone", "pretrained", "pretrained_tag", "image_encoder", "text_model",
            "text_revision", "text_reading", "text_prompt", "text_trust_remote_code")
    out = {k: model_json[k] for k in keys if model_json.get(k) not in (None, "")}
    if "image_encoder" in out:  # a frozen arm's encoder, in one phrase
        e = out["image_encoder"]
        out["image_encoder"] = (f"{e['alias']}: {e['model']}"
                                + (f"@{e['revision']}" if e.get("revision") else "")
                                + f", {e['pooling']} pooling, {e['size']} px ({e['fit']}), "
                                f"{e['fingerprint'][:19]}…")
    return out


# --- 4. failure analysis -------------------------------------------------------------------------

def _excerpt(text: str) -> str:
    words = text.split()
    return " ".join(words[:WORDS]) + (" …" if len(words) > WORDS else "") if words else "(empty)"


def failures(studies: pd.DataFrame, scored: dict, explained: pd.DataFrame | None,
             inputs: list[str]) -> dict:
    """The test studies where fusion and the image model, and fusion and the text model,
    disagree most (by seed-mean probability), and the studies every run gets wrong at its own
    validation threshold; each with its label, every model's probability (mean and spread over
    seeds), the first words of its report per text input, and its Grad-CAM file where `explain`
    drew one. `scored`: {Run: (test studies: uid, label, probability; threshold)}."""
    test = studies[studies["split"] == "test"].set_index("uid")
    words = {i: test.apply(join_text, axis=1, fields=fields_of(i)).map(_excerpt) for i in inputs}
    gradcam = ({} if explained is None else
               explained.drop_duplicates("uid").set_index("uid")["file"].to_dict())

    def model(variant, text_input):
        rows = [df.set_index("uid")["probability"] for run, (df, _) in scored.items()
                if run.variant == variant and run.text_input in (text_input, None)]
        table = pd.concat(rows, axis=1)
        sd = table.std(axis=1, ddof=0) if len(rows) > 1 else table.iloc[:, 0] * math.nan
        return table.mean(axis=1), sd  # an arm trained once: one run, no sd (NaN)

    def row(uid, probs) -> dict:
        return {"uid": int(uid), "label": int(test.loc[uid, "label"]),
                "probability": {name: [float(m[uid]), float(sd[uid])]
                                for name, (m, sd) in probs.items()},
                "words": {i: words[i][uid] for i in inputs}, "gradcam": gradcam.get(uid)}

    out = {"disagreements": {}}
    arms = list(dict.fromkeys(run.variant for run in scored))  # params.arms' order
    by_input = {i: {v: model(v, i if params.row(v).reads_report else None) for v in arms}
                for i in inputs}
    against = {b for a, b in params.PAIRS if a == "fusion"}  # the default fusion's, each encoder
    for text_input, probs in by_input.items():
        for a, other in [("fusion", v) for v in arms if params.variant_of(v) in against]:
            gap = (probs[a][0] - probs[other][0]).abs().sort_values(ascending=False,
                                                                    kind="stable")
            out["disagreements"][(text_input, other)] = [
                {**row(uid, probs), "gap": float(gap[uid])} for uid in gap.index[:FAILURES]]
    wrong = None
    for df, threshold in scored.values():
        miss = (df["probability"] >= threshold).astype(int) != df["label"]
        mine = set(df.loc[miss, "uid"])
        wrong = mine if wrong is None else wrong & mine
    out["always_wrong"] = [row(uid, by_input[inputs[0]]) for uid in sorted(wrong or ())]
    return out


def _probability(mean: float, sd: float) -> str:
    """mean ± sd over a model's seeds; the one run's probability for an arm trained once."""
    return f"{mean:.2f}" if math.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def _failure_lines(failed: dict, inputs: list[str]) -> list[str]:
    def table(rows, gap: bool) -> list[str]:
        arms = list(rows[0]["probability"]) if rows else []
        head = ["study", "label", *arms] + (["gap"] if gap else []) + [
            f"{i}: first words" for i in inputs] + ["Grad-CAM"]
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for r in rows:
            probs = r["probability"]
            cells = [str(r["uid"]), "abnormal" if r["label"] else "normal",
                     *(_probability(*probs[v]) for v in arms)]
            cells += [f"{r['gap']:.2f}"] if gap else []
            cells += [r["words"][i].replace("|", "/") for i in inputs]
            cells.append(f"![](explain/{r['gradcam']})" if r["gradcam"] else "—")
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    lines = ["## Failure analysis", "",
             "Test studies. Probability of abnormal: mean ± SD over seeds (a model trained "
             "once: its one run's). Grad-CAM: the explained run's heatmap (`explain.*`), where "
             "it drew the study. On real data these rows quote patients' reports: a derivative "
             "of the dataset, under its licence, not for publication as is.", ""]
    for (text_input, other), rows in failed["disagreements"].items():
        lines += [f"**Fusion against {params.noun(other)}, text input "
                  f"{text_input}**: the {len(rows)} test studies where their seed-mean "
                  "probabilities differ most (gap).", "", *table(rows, gap=True), ""]
    always = failed["always_wrong"]
    lines.append(f"**Wrong for every run** of every model, each at its own validation "
                 f"threshold: {len(always)} studies" + (" (probabilities: the first text "
                                                        f"input, {inputs[0]})." if always
                                                        else "."))
    if always:
        lines += ["", *table(always, gap=False)]
    return lines + [""]


# --- 5. CLAIM 2024 -------------------------------------------------------------------------------

CLAIM = [  # (the item, where this report or the project fills it, or why it cannot)
    ("Data sources; eligibility (inclusion and exclusion)", "Participant flow"),
    ("Ground truth: definition", "Participant flow: label 0 when the study's MeSH term is "
     "`normal`, else 1 (`cxrfusion/studies.py`)"),
    ("Ground truth: source, annotators and their qualifications",
     "not filled: IU X-ray's MeSH terms were coded from the reports by NLM indexers "
     "(Demner-Fushman et al., JAMIA 2016); who coded each study is not in the data"),
    ("Partitions: how assigned, and the level at which they are disjoint",
     "Participant flow (the split: its unit, stratification and seed)"),
    ("Flow of participants, with a diagram (item 33)", "Participant flow and `flow.png`"),
    ("Demographic and clinical characteristics by partition (item 34)",
     "Characteristics by partition; demographics (age, sex) are not filled: IU X-ray has none"),
    ("Preprocessing, model, training and selection of the model",
     "docs/pipeline.md, params.yaml, Reproducibility"),
    ("Performance metrics, their uncertainty and the statistical test",
     "metrics/comparison.md, docs/statistics.md"),
    ("Robustness and subgroup analysis", "Robustness by subgroup (exploratory; declared in "
     "`study_report.subgroups`)"),
    ("Failure analysis", "Failure analysis: the studies the models disagree on most, and those "
     "every run gets wrong"),
    ("Software, code and data availability (item 41)", "Reproducibility; the code is this "
     "repository; the data are the dataset's, under its licence"),
]


# --- 6. the report, in markdown ------------------------------------------------------------------

def _cell(s: dict, share: bool) -> str:
    return f"{s['mean']:.1%}" if share else f"{s['mean']:.2f} ± {s['sd']:.2f}"


def _subgroup_lines(p: Params, subgrouped: tuple) -> list[str]:
    rows, left_out = subgrouped
    c, minimum = p.compare, p.study_report.min_per_label
    lines = ["## Robustness by subgroup", "",
             f"Exploratory: outside the declared family, unadjusted {1 - c.alpha:.0%} "
             "intervals, no verdict. Subgroups of the test studies declared in "
             "`study_report.subgroups`; report length is cut at the tertiles of the training "
             "studies. Each subgroup is scored in the comparison's own bootstrap rounds (the "
             "same test-study and seed draws, restricted to its members); a round whose drawn "
             f"members lack a label is skipped (rounds scored, of {c.bootstrap}). A subgroup "
             f"with fewer than {minimum} test studies of either label is listed, not scored. An "
             "interval that holds 0 shows no difference either way in that subgroup: not "
             "shown, which is not the absence of one."]
    if left_out:
        lines.append("Left out: " + "; ".join(left_out) + ".")
    if not rows or not any(rows.values()):
        return lines + ["", "No subgroup declared (`study_report.subgroups: []`).", ""]
    family = verdicts.family(c.primary, params.secondaries(c), c.primary_share, c.placebo).weights
    for text_input, by_name in rows.items():
        lines += ["", f"**Text input {text_input}**: AUROC, mean over seeds [interval].", "",
                  *subgroups.table(by_name, family, text_input, minimum)]
    return lines + [""]


def markdown(p: Params, flowed: dict, table: dict, balanced: dict, reproduced: dict,
             failed: dict | None = None, subgrouped: tuple | None = None,
             tuned: dict | None = None) -> str:
    """The report: its header, then one section after another (each a list of lines)."""
    source = p.data.source
    lines = ["# Study report", "",
             "Generated by `dvc repro` (stage `study_report`) from the stages' outputs. On real "
             "data it is a derivative of the dataset, under its licence: not for publication as "
             "is. "
             f"Data source: `{source}`" + (" (SYNTHETIC demo data)." if source == "demo" else "."),
             "", *_flow_lines(p, flowed), "", *_characteristics_lines(flowed, table, balanced)]
    lines += ["", *_plan_lines(p, flowed)]
    if subgrouped is not None:
        lines += ["", *_subgroup_lines(p, subgrouped)]
    if failed is not None:
        lines += ["", *_failure_lines(failed, p.text.inputs)]
    lines += ["", *_training_lines(p), "", *_tuning_lines(p, tuned or {}), "",
              *_reproducibility_lines(p, reproduced), "",
              "## CLAIM 2024", "",
              "| item | where |", "| --- | --- |"]
    lines += [f"| {item} | {where} |" for item, where in CLAIM]
    return "\n".join(lines) + "\n"


def _flow_lines(p: Params, f: dict) -> list[str]:
    lines = ["## Participant flow", "", "![participant flow](study_report/flow.png)", "",
             "| step | studies | images |", "| --- | --- | --- |",
             f"| read from the dataset | {f['read']['studies']} | {f['read']['images']} |"]
    for why, n in f["dropped"].items():
        lines.append(f"| dropped: {why} | {n} | |")
    lines += [f"| images of dropped or unknown studies | | {f['dropped_images']} |",
              f"| kept | {f['kept']['studies']} | {f['kept']['images']} |",
              f"| images unreadable, skipped by `cache_images` | | {f['images_skipped']} |"]
    for text_input, n in f["empty_text"].items():
        lines.append(f"| kept with an empty {text_input} | {n} | |")
    patients = "patients" in f["by_split"]["train"]
    unit = "patient (all of a patient's studies in one split)" if patients else "study (uid)"
    how = ("The dataset's official split (`split.official`; its validate partition is "
           "val, for model selection and thresholds)." if p.split.official else
           f"Split by {unit}, stratified by label, seed {p.split.seed}: "
           f"{p.split.test:.0%} test, then {p.split.val:.0%} of the rest "
           "for validation (model selection and thresholds).")
    lines += ["", how,
              "", "| split | studies | abnormal | images | studies with no readable image |"
              + (" patients |" if patients else ""),
              "| --- | --- | --- | --- | --- |" + (" --- |" if patients else "")]
    for split, s in f["by_split"].items():
        lines.append(f"| {split} | {s['studies']} | {s['abnormal']} | {s['images']} | "
                     f"{s['no_readable_image']} |" + (f" {s['patients']} |" if patients else ""))
    return lines


def _characteristics_lines(f: dict, table: dict, balanced: dict) -> list[str]:
    patients = "patients" in f["by_split"]["train"]
    lines = ["## Characteristics by partition", "",
             "Mean ± SD over the split's studies, or a share. Balance: the largest "
             "standardised difference of any characteristic, against the bound random "
             "assignment of this many studies stays within 95 % of the time."
             + ("" if patients else " Patients are not named by this dataset: each study "
                "is its own unit."), "",
             "| characteristic | " + " | ".join(SPLITS) + " |",
             "| --- |" + " --- |" * len(SPLITS)]
    for name in table["train"]:
        share = name.endswith(("abnormal", "empty", "lateral view"))  # yes/no: a share
        lines.append(f"| {name} | " + " | ".join(_cell(table[s][name], share) for s in SPLITS)
                     + " |")
    lines.append("")
    for pair, b in balanced.items():
        flag = ("**beyond it: check the split**" if abs(b["difference"]) > b["bound"] else
                "within it")
        lines.append(f"- {pair}: largest standardised difference {b['difference']:+.3f} "
                     f"({b['characteristic']}); random assignment: ±{b['bound']:.3f}; {flag}")
    return lines


def _plan_lines(p: Params, flowed: dict) -> list[str]:
    """The a-priori sample size of the primary comparison, from params' `plan` section."""
    g, c = p.plan, p.compare
    primary = Comparison.parse(c.primary)
    fam = verdicts.family(c.primary, params.secondaries(c), c.primary_share, c.placebo)
    alpha_row = c.alpha * fam.level(primary.name)
    expected = {"fusion": g.auroc_fusion, "image": g.auroc_image}
    lines = ["## Sample size (a priori)", "",
             f"The primary comparison, {primary.label} with the {primary.text_input} as text "
             f"input, tested at its share of α ({alpha_row:g}) with 80 % power, if fusion's "
             f"AUROC is {g.auroc_fusion:g} and the image model's {g.auroc_image:g} "
             f"(`plan.*` in params.yaml, each with its reason), {g.prevalence:.1%} of the test "
             f"studies abnormal, the two estimates correlated {g.correlation:g}, and the "
             f"difference's between-seed SD {g.sd_seeds:g}. Hanley-McNeil variances, normal "
             "quantiles (`verdicts.planned_test_studies`).", "",
             "| seeds a model | test studies needed |", "| --- | --- |"]
    if primary.a not in expected or primary.b not in expected:
        return lines[:2] + [f"No plan: `plan` declares the fusion and image AUROCs only, and "
                            f"the primary is {primary.label}."]
    for seeds in sorted({g.seeds, len(p.train.seeds)}):
        n = verdicts.planned_test_studies(expected[primary.a], expected[primary.b],
                                          g.prevalence, g.correlation, g.sd_seeds, seeds,
                                          alpha_row)
        lines.append(f"| {seeds} | {n:,} |" if n else
                     f"| {seeds} | none suffices: the seeds' spread alone is too large |")
    by_split = flowed["by_split"]
    return lines + ["", f"This run's test split holds {by_split['test']['studies']:,} studies."]


def _training_lines(p: Params) -> list[str]:
    """The one training recipe every network arm is trained with, as resolved, the placebo's
    and the TF-IDF baseline's settings."""
    t, r, f = p.train, params.recipe(p.train, p.image.pretrained), p.tfidf
    frozen = "; ".join(f"`{alias}` ({enc['model']}, {enc['pooling']} pooling)"
                       for alias, enc in p.frozen_image.encoders.items())
    texts = "; ".join(f"`{alias}` ({enc['model']}, {enc['pooling']} pooling)"
                      for alias, enc in p.text.encoders.items())
    cnn = r["lr_backbone"] if r["lr_backbone"] is not None else t.lr
    return ["## Training", "",
            f"Every network arm is trained with the same recipe, `train.recipe` = {t.recipe} (the "
            "options left null take its values; docs/options.md): optimizer "
            f"{r['optimizer']}, weight decay {r['weight_decay']:g}, learning rate {t.lr:g} "
            f"(the CNN's {cnn:g}), schedule {r['schedule']} after {r['warmup_epochs']} warmup "
            f"epochs, augmentation {r['augment']}, {t.epochs} epochs of batch {t.batch_size}, "
            f"the epoch kept by {t.select} on the validation studies; seeds {t.seeds}; a "
            "tuning grid's choice on top (Tuning, below). The "
            f"placebo (`{PLACEBO[1]}`) is fusion fed each study another study's report vector "
            f"of the same split (`placebo.seed` = {p.placebo.seed}): fusion's inputs and "
            "capacity without the report's content. The TF-IDF baseline is fitted once a text "
            "input on the training studies' reports, one a study (`tfidf.*`: terms of up to "
            f"{f.ngrams} words found in {f.min_df} reports or more, the {f.max_features:,} most "
            f"frequent, {'lowercased' if f.lowercase else 'cased'}; an L2 logistic regression "
            f"with C = {f.c:g}), deterministic, so not once a seed; a tuning grid's choice on "
            "top."
            + (" The frozen arms (`image_frozen@<alias>`, `fusion_frozen@<alias>`) train the "
               "same head, with the same recipe, on the vectors of each frozen image encoder "
               f"(each dimension standardised by the training images'), in place of the "
               f"fine-tuned CNN: {frozen}." if frozen else "")
            + (" Fusion, its placebo and text-only are trained again, with the same recipe, on "
               f"each other text encoder's vectors (`<arm>@<alias>`): {texts}." if texts
               else "")]


def _tuning_lines(p: Params, tuned: dict) -> list[str]:
    """Each arm's candidates (tune.candidates), their validation scores and the one chosen,
    from metrics/tuning/<arm>/choice.json (`tuned`: arm -> choice)."""
    lines = ["### Tuning", ""]
    count = len(params.candidates(p, next(iter(params.VARIANTS))))  # every arm's (params)
    if not count or not tuned:
        return lines + ["No tuning grid was declared (`tune.candidates` = []): every arm is "
                        "trained with the settings above, none chosen on validation."]
    best = {"auroc": "highest validation AUROC", "loss": "lowest validation loss"}
    seed, criterion = (next(iter(tuned.values()))[k] for k in ("seed", "criterion"))
    networks = [arm for arm in tuned
                if params.variant_of(arm.split("/")[0]) in params.NETWORKS]
    lines += [f"Every arm trained {count} candidate settings (the same number for each arm, "
              f"the placebo's and the TF-IDF baseline's included), the networks at seed {seed},"
              f" and kept the one with the {best[criterion]} (`tune.criterion` = {criterion}),"
              " a network's at the epoch it kept, scored on the validation images only; every "
              "seed then trained with the setting chosen, the first seed's run being the chosen "
              f"candidate's. Cost: {count} x {len(networks)} network arms = "
              f"{count * len(networks)} candidate runs, {(count - 1) * len(networks)} more "
              "than without a grid (the TF-IDF fits take seconds).", "",
              "| arm | candidate | setting | epoch kept | validation AUROC | validation loss |",
              "| --- | --- | --- | --- | --- | --- |"]
    for arm, choice in tuned.items():
        for row in choice["candidates"]:
            mark = "**" if row["candidate"] == choice["chosen"] else ""
            lines.append(f"| {arm} | {mark}{row['candidate']}{' (chosen)' if mark else ''}"
                         f"{mark} | `{params.spelled(row['setting'])}` | "
                         f"{'—' if row['epoch'] is None else row['epoch']} | "
                         f"{row['val_auroc']:.3f} | {row['val_loss']:.4f} |")
    return lines


def _reproducibility_lines(p: Params, r: dict) -> list[str]:
    return ["## Reproducibility", "",
            "Parameters that differ from the described defaults (`python -m "
            "cxrfusion.params`): " + (", ".join(f"`{k}={json.dumps(v)}`" for k, v in
                                                r["changed"].items()) or "none") + ".",
            f"Seeds: training {p.train.seeds}, split {p.split.seed}, bootstrap "
            f"{p.compare.seed}. Devices asked for: training `{p.train.device}`, "
            f"text encoder `{p.text.device}`.",
            "Weights read (model.json): " + "; ".join(
                f"{run}: " + ", ".join(f"{k} `{v}`" for k, v in pin.items())
                for run, pin in r["pins"].items()) + ".",
            "Packages: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
            "The commit and the run times are not written here, so that a rerun writes the "
            "same bytes: `git log -1` gives the commit, `dvc exp show` the experiment."]
