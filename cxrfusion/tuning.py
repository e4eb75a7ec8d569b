"""An equal tuning budget, chosen on validation (tune.candidates; stages `tune_<arm>`).

Each arm (image, fusion and its placebo, text, on each text input) trains every candidate
setting at the first seed and keeps the one its validation images rank best at the epoch each
candidate kept (tune.criterion: AUROC or loss, as history.json logs them); the test studies
are never read. The choice is written to metrics/tuning/<arm>/choice.json, which every train
stage of the arm reads: it trains with the chosen setting, and at the candidates' seed takes
the chosen candidate's run instead of training it again (the same run: same seed, same data,
same setting). With no grid the choice is empty and every arm trains as declared.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

from cxrfusion import choosing, formats, params
from cxrfusion.common import PipelineError, atomic_path, write_json
from cxrfusion.formats import Run
from cxrfusion.params import Params

log = logging.getLogger(__name__)


def tune(run: Run, p: Params) -> dict:
    """Train each of tune.candidates of `run`'s arm at `run`'s seed, choose one on the
    validation images, and write the arm's choice.json (always: the arm's train stages read
    it; with no grid it says so and nothing trains)."""
    rows = []
    settings = params.candidates(p, run.variant)
    if settings:
        from cxrfusion.training import train  # torch and timm only when something trains
    for k, setting in enumerate(settings):
        try:
            result = train(dataclasses.replace(run, candidate=k),
                           params.with_setting(p, setting))
        except PipelineError as err:
            raise PipelineError(f"tune.candidates: candidate {k} of {run.arm} "
                                f"({params.spelled(setting)}) failed: {err}") from None
        kept = result["history"][result["chosen"] - 1]["val"]
        rows.append(choosing.scored({"candidate": k, "setting": setting,
                                     "epoch": result["chosen"], "val_auroc": kept["auroc"],
                                     "val_loss": kept["loss"]}, p.tune.criterion, run.arm))
    choice = choosing.choice(run.arm, run.seed, p.tune.criterion, rows)
    chosen = choice["chosen"]
    run.candidates.mkdir(parents=True, exist_ok=True)  # DVC's output, empty without a grid
    write_json(run.choice, choice)
    if rows:
        log.info("%s: candidate %d of %d chosen (%s, validation %s %.4f)", run.arm, chosen,
                 len(rows), params.spelled(choice["setting"]), p.tune.criterion,
                 rows[chosen][f"val_{p.tune.criterion}"])
    return choice


def chosen(run: Run, p: Params) -> tuple[Params, dict]:
    """The parameters `run` trains with (the chosen candidate's setting applied) and its arm's
    choice, from metrics/tuning/<arm>/choice.json, written by stage tune_<arm>; with no grid
    declared and no choice written (a stage called outside DVC), `p` as it is."""
    declared = params.candidates(p, run.variant)
    if not declared and not run.choice.exists():  # no grid, no stage tune run (a benchmark)
        return p, choosing.NO_GRID
    stage = dataclasses.replace(run, candidate=0).stage
    try:
        choice = json.loads(run.choice.read_text())
        made = ([row["setting"] for row in choice["candidates"]], choice["arm"],
                choice["criterion"] if declared else None)
        setting = choice["setting"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PipelineError(f"{run.choice}: missing or unreadable; it is written by stage "
                            f"{stage}: run `dvc repro`.") from None
    if made != (declared, run.arm, p.tune.criterion if declared else None):
        raise PipelineError(f"{run.choice} chose among other candidates, or by another "
                            f"criterion, than tune.* declares for {run.arm}: run `dvc repro` "
                            f"(stage {stage} tunes again).")
    return params.with_setting(p, setting), choice


def reuse(run: Run, p: Params, choice: dict) -> bool:
    """At the seed the candidates trained at, `run` is the chosen candidate's run: copy its
    weights and training log (params.json then records `run`, as training it would). False
    when there is nothing to reuse (no grid, another seed)."""
    if choice["chosen"] is None or run.seed != choice["seed"]:
        return False
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's other processes: rank 0 copies
        return True
    candidate = dataclasses.replace(run, candidate=choice["chosen"])
    if not (candidate.models.is_dir() and candidate.train_log.is_dir()):
        raise PipelineError(f"{run.choice} chose {candidate.models}, which is missing (or its "
                            f"log {candidate.train_log}): `dvc checkout` brings them back, or "
                            f"`dvc repro` makes them again (stage {candidate.stage}).")
    recorded = json.loads((candidate.models / "params.json").read_text())
    asked = json.loads(json.dumps(formats.record(p, run)))  # as params.json holds it
    if trained_as(recorded, run.variant) != trained_as(asked, run.variant):
        raise PipelineError(f"{candidate.models} was trained with other parameters than "
                            f"{run.path} asks for now: run `dvc repro` (stage "
                            f"{candidate.stage} tunes again).")
    for source, target in ((candidate.models, run.models),
                           (candidate.train_log, run.train_log)):
        with atomic_path(target) as tmp:
            shutil.copytree(source, tmp)
            if target == run.models:
                write_json(tmp / "params.json", formats.record(p, run))
    from cxrfusion import checkpoint  # torch: only where a run is reused

    checkpoint.remove(run)  # an interrupted training of it, if any: not needed now
    log.info("%s: the chosen candidate's run (%s), not trained again", run.path, candidate.path)
    return True


# how a run is fed, not what it learns: they may change after the candidates trained
FEEDING = ("train.seeds", "train.in_memory_gb", "train.workers")


def trained_as(record: dict, variant: str) -> dict:
    """The options of a params.json record (formats.record) that shape what `variant` learns:
    its train, model and augment sections, less FEEDING and the options it does not read (the
    CNN's for the text model, the report's for the image model). Other sections (compare,
    explain, ...) may change after a candidate trained without making it another run."""
    row = params.row(variant)
    unread = (() if row.cnn else (*params.IMAGE_ONLY, "model.backbone")) + (
        () if row.reads_report else params.REPORT_ONLY)
    return {f"{section}.{key}": value for section in ("train", "model", "augment")
            for key, value in record[section].items()
            if f"{section}.{key}" not in (*FEEDING, *unread)}
