"""Robustness by subgroup (study_report.subgroups): which test studies form each subgroup, and the
table of each model's AUROC and the family's AUROC differences on them (stage `study_report`).

The subgroups are fixed before any test study is read: a lateral view or not, one image or
several, and report-length tertiles of each text input cut on the training studies. They are
scored in the comparison's own bootstrap rounds (statistics.on_subgroups), but they are
exploratory: outside the declared family, unadjusted, and never given a verdict.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrfusion import params
from cxrfusion.common import PipelineError
from cxrfusion.formats import runs_of
from cxrfusion.params import Comparison, Params, fields_of
from cxrfusion.results import cell
from cxrfusion.statistics import on_subgroups
from cxrfusion.studies import report_words

VIEWS_KNOWN = ("Frontal", "Lateral")  # prepare's views; Unknown names none


def members(studies: pd.DataFrame, test_uids, kinds: list[str],
            inputs: list[str]) -> tuple[dict, list[str]]:
    """({subgroup name: a bool per test study, in the order of `test_uids`}, and a sentence for
    each kind left out and why). `studies`: studies.csv, every split (words are cut on train)."""
    test = studies.set_index("uid").loc[list(test_uids)]
    groups, left_out = {}, []
    if "view" in kinds:
        views = test["views"].fillna("").astype(str)
        if not studies["views"].fillna("").astype(str).str.contains("|".join(VIEWS_KNOWN)).any():
            left_out.append("view: the dataset names no image's view (every view Unknown)")
        else:
            lateral = views.str.contains("Lateral").to_numpy()
            groups["with a lateral view"], groups["without a lateral view"] = lateral, ~lateral
    if "images" in kinds:
        one = (test["n_images"] == 1).to_numpy()
        groups["one image"], groups["several images"] = one, ~one
    if "words" in kinds:
        train = studies[studies["split"] == "train"]
        for text_input in inputs:
            groups.update(tertiles(report_words(train, fields_of(text_input)),
                                   report_words(test, fields_of(text_input)), text_input))
    return groups, left_out


def tertiles(train: pd.Series, test: pd.Series, text_input: str) -> dict:
    """The test studies in each third of the training studies' report lengths (in words):
    up to the first tertile, up to the second, beyond; where the tertiles tie (many empty
    reports), the thirds merge and fewer subgroups remain."""
    cuts = sorted({int(np.floor(q)) for q in np.quantile(train, [1 / 3, 2 / 3])})
    words = test.to_numpy()
    out, low = {}, None
    for cut in cuts + [None]:
        above = np.ones(len(words), bool) if low is None else words > low
        below = np.ones(len(words), bool) if cut is None else words <= cut
        if low is None:
            span = f"≤ {cut}" if cut > 0 else "0"
        else:
            span = f"> {low}" if cut is None else f"{low + 1}–{cut}" if cut > low + 1 else str(cut)
        out[f"{text_input}: {span} words"] = above & below
        low = cut
    return out


def score(studies: pd.DataFrame, scored: dict, p: Params) -> tuple[dict, list[str]]:
    """({text input: {subgroup: on_subgroups' result, or its studies and abnormal count where
    fewer than study_report.min_per_label of a label leave it unscored}}, the kinds left out).
    `scored`: {Run: (test studies: uid, label, probability; threshold)}, every run on the same
    test studies; drawn as compare draws them (compare.bootstrap, .seed, .alpha; patients)."""
    first = next(iter(scored.values()))[0]
    uids, labels = first["uid"].to_numpy(), first["label"].to_numpy()
    groups, left_out = members(studies, uids, p.study_report.subgroups, p.text.inputs)
    minimum = p.study_report.min_per_label
    scorable = {name: m for name, m in groups.items()
                if min(labels[m].sum(), (1 - labels[m]).sum()) >= minimum}
    patients = (studies.set_index("uid").loc[uids, "patient"].to_numpy()
                if "patient" in studies.columns else None)
    c, seeds, out = p.compare, p.train.seeds, {}
    for text_input in p.text.inputs:
        runs = {v: runs_of(v, text_input, seeds)  # an arm trained once: 1
                for v in params.arms(p)}
        models = {v: {"probs": np.stack([_aligned(scored[run][0], uids) for run in mine]),
                      "thresholds": np.array([scored[run][1] for run in mine])}
                  for v, mine in runs.items()}
        results = (on_subgroups(labels, models, params.pairs(p), scorable, c.bootstrap,
                                c.seed, patients, level=1 - c.alpha) if scorable else {})
        out[text_input] = {name: results.get(name) or {"studies": int(m.sum()),
                                                       "abnormal": int(labels[m].sum())}
                           for name, m in groups.items()}
    return out, left_out


def _aligned(predictions: pd.DataFrame, uids: np.ndarray) -> np.ndarray:
    """A run's test probabilities in the order of `uids`, which it must score exactly."""
    by_uid = predictions.set_index("uid")["probability"]
    if len(by_uid) != len(uids) or not by_uid.index.isin(uids).all():
        raise PipelineError("the runs score different test studies: rerun `dvc repro` so "
                            "that every run uses the same split.")
    return by_uid.loc[uids].to_numpy()


def table(rows: dict, family: dict, text_input: str, minimum: int) -> list[str]:
    """One text input's subgroup table in markdown: per subgroup its test studies, the rounds
    scored, each model's AUROC and each difference of the family on this input, and which of
    those differences the interval shows; a subgroup too small to score is listed."""
    primary = next(iter(family))  # the family's names, primary first
    pairs = [Comparison.parse(name) for name in family
             if Comparison.parse(name).text_input == text_input]
    arms = next((list(s["models"]) for s in rows.values() if "models" in s), [])
    head = (["subgroup", "studies (abnormal)", "rounds scored", *(f"{v} AUROC" for v in arms)]
            + [c.label + (" (primary)" if c.name == primary else "") for c in pairs]
            + ["interval excludes 0"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, s in rows.items():
        cells = [name, f"{s['studies']} ({s['abnormal']})"]
        if "rounds" not in s:
            cells += ["—", f"not scored: fewer than {minimum} of a label"]
            lines.append("| " + " | ".join(cells + ["—"] * (len(head) - len(cells))) + " |")
            continue
        shown = [f"{c.label} {'> 0' if d['low'] > 0 else '< 0'}" for c in pairs
                 if (d := s["pairs"][c.ascii_label])["low"] is not None
                 and (d["low"] > 0 or d["high"] < 0)]
        cells += [str(s["rounds"]), *(_cell(s["models"][v]) for v in arms),
                  *(_cell(s["pairs"][c.ascii_label], signed=True) for c in pairs),
                  "; ".join(shown) or "none"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(s: dict, signed: bool = False) -> str:
    if s["low"] is None:
        return f"{s['mean']:+.3f}" if signed else f"{s['mean']:.3f}"
    return cell(s, signed=signed)
