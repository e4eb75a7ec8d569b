"""Stage `study_report`: the study report a reviewer asks for, around the comparison's answer.

Writes metrics/study_report.md (participant flow, characteristics by partition and their balance,
robustness by subgroup, failure analysis, reproducibility, the CLAIM items it fills;
cxrfusion/study_report.py, cxrfusion/subgroups.py), metrics/study_report/flow.png (the participant
flow) and metrics/study_report/subgroups.json (the subgroup tables' numbers). It reads only what
the stages before it wrote, and a dataset without patients or views gives the sections that
apply.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from cxrfusion import figures, formats, params, study_report, subgroups
from cxrfusion.common import PipelineError, atomic_path, main, write_json
from cxrfusion.formats import IMAGES_COUNTS, PREPARED_COUNTS, read_prepared
from cxrfusion.metrics import study_predictions
from cxrfusion.params import Params

log = logging.getLogger("study_report")

MARKDOWN = Path("metrics/study_report.md")
FIGURES = Path("metrics/study_report")
SUBGROUPS = FIGURES / "subgroups.json"  # the subgroup table's numbers, for a reader's own use
HEATMAPS = Path("metrics/explain/heatmaps.csv")  # the studies explain drew (optional)


def read_json(path: Path) -> dict:
    if not path.exists():
        raise PipelineError(f"{path} not found: run `dvc repro` first.")
    return json.loads(path.read_text())


def scored_runs(p: Params) -> dict:
    """Every run's test studies (uid, label, probability) and its validation threshold."""
    out = {}
    for run in formats.runs(p):
        if not run.predictions.exists():
            raise PipelineError(f"{run.predictions} not found: run `dvc repro` (evaluate) first.")
        out[run] = (study_predictions(pd.read_csv(run.predictions)),
                    read_json(run.test_metrics)["threshold"])
    return out


def write_study_report(p: Params) -> str:
    studies, images = read_prepared()
    flowed = study_report.flow(studies, images, read_json(PREPARED_COUNTS),
                               read_json(IMAGES_COUNTS))
    table = study_report.characteristics(studies, p.text.inputs)
    first = {run.variant: run for run in formats.runs(p) if run.seed == p.train.seeds[0]}
    reproduced = {"changed": study_report.changed_parameters(p),
                  "versions": study_report.versions(),
                  "pins": {run.label: study_report.pins(read_json(run.models / "model.json"))
                           for run in first.values()}}
    sizes = {split: s["studies"] for split, s in flowed["by_split"].items()}
    scored = scored_runs(p)
    failed = study_report.failures(studies, scored,
                                   pd.read_csv(HEATMAPS) if HEATMAPS.exists() else None,
                                   p.text.inputs)
    subgrouped = subgroups.score(studies, scored, p)
    tuned = {run.arm: read_json(run.choice) for run in formats.runs(p)
             if run.seed in (p.train.seeds[0], None)}  # None: an arm trained once
    text = study_report.markdown(p, flowed, table, study_report.balance(table, sizes),
                                 reproduced, failed, subgrouped, tuned)
    with atomic_path(FIGURES) as tmp:
        tmp.mkdir()
        figures.flow_diagram(flowed, tmp / "flow.png")
        write_json(tmp / SUBGROUPS.name, {"subgroups": subgrouped[0],
                                          "left_out": subgrouped[1]})
    with atomic_path(MARKDOWN) as tmp:
        tmp.write_text(text)
    log.info("wrote %s and %s/", MARKDOWN, FIGURES)
    return text


if __name__ == "__main__":
    main(lambda: write_study_report(params.load()))
