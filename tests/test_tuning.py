"""An equal tuning budget (tune.candidates, cxrfusion/tuning.py): the grid's checks, each arm's
choice made on validation only, and the train stages that take it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, first_run, tiny

from cxrfusion import params as described
from cxrfusion.choosing import choose
from cxrfusion.common import PipelineError
from cxrfusion.formats import IMAGES, STUDIES
from cxrfusion.tuning import chosen, tune
from stages.train import train_tuned

GRID = [{"train.lr": 0.03}, {"train.lr": 0.0003}]
WORDS = [{"tfidf.c": 0.1}, {"tfidf.c": 10}]  # the TF-IDF baseline's: as many (tune.tfidf)


def test_the_demo_declares_no_grid():
    with open(ROOT / "params.yaml") as f:
        assert yaml.safe_load(f)["tune"]["candidates"] == []


@pytest.mark.parametrize("grid, message", [
    ({"image": GRID}, r"a mapping of each \(fusion, image, text, shuffled, image_frozen, "
                      r"fusion_frozen\)"),
    ({arm: GRID[:1 + (arm == "text")] for arm in described.NETWORKS}, r"an equal budget"),
    ([{"image.size": 64}], r"candidate 0 sets image\.size, which a candidate here cannot set"),
    ([{"train.lr": 0.1}, {"train.lr": 0.1}], r"candidate 1 repeats an earlier one"),
    ([{"train.lr": -1}], r"tune\.candidates: candidate 0 \(\{train\.lr: -1\}\) is refused: "
                         r"parameter train\.lr=-1 is not allowed: use a positive number; "
                         r"change it in tune\.candidates\.$"),
    ([{"train.augment": "affine"}, {"train.augment": "none"}],
     r"candidate 1 trains text as candidate 0 does \(\{\}: the rest of it is not read by text"),
    ([{"train.batch_size": 1}], r"candidate 0 \(\{train\.batch_size: 1\}\) is refused: "
                                r"parameter train\.batch_size=1"),
    ({**{arm: GRID for arm in described.NETWORKS}, "text": [{"train.lr": 1}, {"train.warmup_"
                                                                               "epochs": 9}]},
     r"candidate 1 of text \(\{train\.warmup_epochs: 9\}\) is refused: parameter "
     r"train\.warmup_epochs=9"),
    ([{}], r"candidate 0 is \{\}"),
    # the networks' grid names the networks only: the TF-IDF baseline has its own list
    ({**{arm: GRID for arm in described.NETWORKS}, "tfidf": WORDS}, r"a mapping of each "
                                                                     r"\(fusion, image, text, "
                                                                     r"shuffled, image_frozen, "
                                                                     r"fusion_frozen\)"),
    ([{"train.lr": 0.03, "tfidf.c": 0.1}], r"candidate 0 sets tfidf\.c, which a candidate here "
                                            r"cannot set"),
])
def test_a_bad_grid_is_refused_before_anything_trains(grid, message):
    lists = grid.values() if isinstance(grid, dict) else [grid]
    count = max((len(x) for x in lists if isinstance(x, (list, tuple))), default=0)
    words = [{"tfidf.c": 10.0 ** k} for k in range(count)]  # the baseline's: as many, valid
    with pytest.raises(PipelineError, match=message):
        described.validate(tiny({"tune": {"candidates": grid, "tfidf": words}}))


@pytest.mark.parametrize("words, message", [
    ([], r"tune\.tfidf=\[\] is not allowed: give the TF-IDF baseline as many candidates as "
         r"tune\.candidates gives each network arm \(2\): an equal budget"),
    (WORDS[:1], r"as many candidates as tune\.candidates gives each network arm \(2\)"),
    ([{"train.lr": 0.1}, {"tfidf.c": 1}], r"candidate 0 sets train\.lr, which a candidate here "
                                          r"cannot set; it may set tfidf\.c"),
    ([{"tfidf.c": 1}, {"tfidf.c": 1}], r"candidate 1 repeats an earlier one"),
    ([{"tfidf.c": 0}, {"tfidf.c": 1}], r"tune\.tfidf: candidate 0 \(\{tfidf\.c: 0\}\) is "
                                       r"refused: parameter tfidf\.c=0 is not allowed"),
])
def test_the_baselines_list_is_refused_unless_it_is_an_equal_budget(words, message):
    with pytest.raises(PipelineError, match=message):
        described.validate(tiny({"tune": {"candidates": GRID, "tfidf": words}}))
    with pytest.raises(PipelineError, match=r"as many candidates as tune\.candidates gives each "
                                            r"network arm \(0\)"):
        described.validate(tiny({"tune": {"tfidf": WORDS}}))  # the baseline alone: unequal


def test_a_grid_per_arm_or_shared_gives_each_arm_its_list():
    per_arm = {arm: GRID if arm != "text" else [{"model.hidden": 8}, {"model.hidden": 16}]
               for arm in described.NETWORKS}
    p = described.validate(tiny({"tune": {"candidates": per_arm, "tfidf": WORDS}}))
    assert described.candidates(p, "text") == [{"model.hidden": 8}, {"model.hidden": 16}]
    assert described.candidates(p, "tfidf") == WORDS
    assert described.candidates(tiny({"tune": {"candidates": GRID}}), "shuffled") == GRID
    assert described.candidates(tiny(), "image") == described.candidates(tiny(), "tfidf") == []


def test_the_criterion_picks_the_best_on_validation_and_the_first_of_equals():
    rows = [{"val_auroc": 0.7, "val_loss": 0.5}, {"val_auroc": 0.8, "val_loss": 0.6},
            {"val_auroc": 0.8, "val_loss": 0.4}, {"val_auroc": 0.6, "val_loss": 0.4}]
    assert choose(rows, "auroc") == 1 and choose(rows, "loss") == 2


def _permute_test_labels(seed: int = 1) -> None:
    """Shuffle the labels of the test studies (and of their images) in data/prepared."""
    studies = pd.read_csv(STUDIES, dtype=str, keep_default_na=False)
    test = studies["split"] == "test"
    new = dict(zip(studies.loc[test, "uid"],
                   np.random.default_rng(seed).permutation(studies.loc[test, "label"])))
    assert any(new[u] != old for u, old in zip(studies.loc[test, "uid"],
                                                studies.loc[test, "label"]))
    studies.loc[test, "label"] = studies.loc[test, "uid"].map(new)
    studies.to_csv(STUDIES, index=False)
    images = pd.read_csv(IMAGES, dtype=str, keep_default_na=False)
    images.loc[images["split"] == "test", "label"] = images["uid"].map(new)
    images.to_csv(IMAGES, index=False)


def test_the_choice_is_made_on_validation_and_reused_at_the_first_seed(cached):
    p = cached
    p.train.epochs = 1
    p.tune.candidates = GRID
    run = first_run("text", p)
    choice = tune(run, p)
    assert [row["setting"] for row in choice["candidates"]] == GRID
    aurocs = [row["val_auroc"] for row in choice["candidates"]]
    assert choice["chosen"] == int(np.argmax(aurocs)) and choice["seed"] == p.train.seeds[0]
    assert choice["setting"] == GRID[choice["chosen"]]
    for k in range(len(GRID)):  # each candidate's weights and DVCLive log, beside the choice
        assert (run.candidates / f"candidate-{k}" / "model.safetensors").exists()
        assert (run.choice.parent / f"candidate-{k}" / "metrics.json").exists()
    history = json.loads((run.candidates / f"candidate-{choice['chosen']}" /
                          "history.json").read_text())
    assert choice["candidates"][choice["chosen"]]["val_auroc"] == history[
        choice["candidates"][choice["chosen"]]["epoch"] - 1]["val"]["auroc"]

    # the test studies' labels play no part: permuted, the same choice, the same scores
    written = run.choice.read_bytes()
    _permute_test_labels()
    assert tune(run, p) == choice and run.choice.read_bytes() == written

    # the first seed's run is the chosen candidate's, byte for byte what training it gives
    assert train_tuned(run, p) is None  # reused, not trained
    reused = {f.name: f.read_bytes() for f in run.models.iterdir()}
    logged = (run.train_log / "metrics.json").read_bytes()
    recorded = json.loads(reused["params.json"])
    assert recorded["run"] == run.record and recorded["train"]["lr"] == choice["setting"][
        "train.lr"]
    assert (run.train_log / "metrics.json").exists()
    from cxrfusion.training import train
    train(run, chosen(run, p)[0])
    assert {f.name: f.read_bytes() for f in run.models.iterdir()} == reused
    assert (run.train_log / "metrics.json").read_bytes() == logged

    # the other seeds train with the chosen setting
    later = first_run("text", p, seed=p.train.seeds[1])
    assert train_tuned(later, p) is not None
    assert json.loads((later.models / "params.json").read_text())["train"]["lr"] == (
        choice["setting"]["train.lr"])

    # a candidate trained with other parameters than asked for now (tuned, then train.epochs
    # changed without tuning again): refused, not copied under the new parameters' name
    p.train.epochs = 2
    with pytest.raises(PipelineError, match=r"trained with other parameters than .* asks for"):
        train_tuned(run, p)
    p.train.epochs = 1
    # ... but not for an option that does not shape the run (another section, or one the text
    # model does not read): still the chosen candidate's run
    p.compare.alpha, p.train.augment, p.train.workers = 0.01, "affine", 1
    assert train_tuned(run, p) is None
    p.compare.alpha, p.train.augment, p.train.workers = 0.05, None, 4
    # another criterion than the choice was made by: tune again
    p.tune.criterion = "loss"
    with pytest.raises(PipelineError, match=r"or by another criterion"):
        chosen(run, p)
    p.tune.criterion = "auroc"

    # the chosen candidate's run gone (not checked out): said, not trained silently instead
    shutil.rmtree(run.candidates / f"candidate-{choice['chosen']}")
    with pytest.raises(PipelineError, match=r"which is missing .*`dvc checkout`"):
        train_tuned(run, p)


def test_a_train_stage_refuses_a_choice_among_other_candidates(cached):
    p = cached
    run = first_run("text", p)
    assert chosen(run, p)[0] is p  # no grid declared and none run: nothing to choose
    p.tune.candidates = GRID
    with pytest.raises(PipelineError, match=r"choice\.json: missing.*stage tune_text@"):
        chosen(run, p)  # a grid declared: its choice is needed
    p.tune.candidates = []
    tune(run, p)  # no grid: an empty choice, nothing trained
    assert json.loads(run.choice.read_text()) == {
        "arm": run.arm, "seed": None, "criterion": None, "candidates": [], "chosen": None,
        "setting": {}}
    assert chosen(run, p)[0] is p and not list(run.candidates.iterdir())
    p.tune.candidates = GRID
    with pytest.raises(PipelineError, match=r"other candidates, or by another criterion, than "
                                            r"tune\.\* declares for text/.*: run `dvc repro` "
                                            r"\(stage tune_text@"):
        chosen(run, p)


def test_the_study_report_lists_each_arms_candidates_and_choice(params):
    from cxrfusion.study_report import _tuning_lines

    assert "No tuning grid was declared" in "\n".join(_tuning_lines(params, {}))
    params.tune.candidates = GRID
    rows = [{"candidate": k, "setting": s, "epoch": 1, "val_auroc": a, "val_loss": 0.5}
            for k, (s, a) in enumerate(zip(GRID, (0.61, 0.72)))]
    tuned = {arm: {"seed": 0, "criterion": "auroc", "chosen": 1, "candidates": rows}
             for arm in ("image", "fusion/indication")}
    tuned["tfidf/indication"] = {"seed": None, "criterion": "auroc", "chosen": 0, "candidates": [
        {**row, "setting": w, "epoch": None} for row, w in zip(rows, WORDS)]}  # no epochs
    text = "\n".join(_tuning_lines(params, tuned))
    # the TF-IDF fits cost seconds: the cost counts the network arms' runs
    assert "Cost: 2 x 2 network arms = 4 candidate runs, 2 more than without a grid" in text
    assert "| image | **1 (chosen)** | `{train.lr: 0.0003}` | 1 | 0.720 | 0.5000 |" in text
    assert "| fusion/indication | 0 | `{train.lr: 0.03}` | 1 | 0.610 | 0.5000 |" in text
    assert "| tfidf/indication | **0 (chosen)** | `{tfidf.c: 0.1}` | — | 0.610 | 0.5000 |" in text


def test_the_real_study_command_sets_parameters_params_accepts(tmp_path):
    """docs/real-study.md's `dvc exp run` line, as DVC applies its -S settings (Hydra's override
    grammar) to params.yaml, gives parameters that pass every rule, its tuning grid included."""
    import re
    import shlex
    import shutil

    from dvc.utils.hydra import apply_overrides

    block = (ROOT / "docs/real-study.md").read_text().split("```bash\n")[1].split("```")[0]
    block = block.replace("\\\n", " ")
    command = next(line for line in block.splitlines() if line.startswith("dvc exp run"))
    for name in ("GRID", "WORDS"):  # the shell variables the command reads
        value = shlex.split(re.search(rf"^{name}=(.*)$", block, re.M)[1])[0]
        command = command.replace(f"${name}", value)
    words = shlex.split(command.replace("$REV", "0" * 40))
    settings = [words[i + 1] for i, w in enumerate(words) if w == "-S"]
    assert {s.partition("=")[0] for s in settings} >= {"tune.candidates", "tune.tfidf"}
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", settings)
    p = described.validate(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    assert len(described.candidates(p, "tfidf")) == len(described.candidates(p, "image")) == 3


def test_a_candidate_the_criterion_cannot_rank_is_refused():
    """Validation images of one label give no AUROC: ranking by it would keep candidate 0 by
    default (a NaN compares false), so the stage stops as that candidate is scored."""
    from cxrfusion.choosing import scored

    row = {"candidate": 1, "val_auroc": float("nan"), "val_loss": 0.4}
    with pytest.raises(PipelineError, match=r"tune\.criterion=auroc: candidate 1 of "
                                            r"text/indication has no validation auroc \(nan\).*"
                                            r"use tune\.criterion: loss"):
        scored(row, "auroc", "text/indication")
    assert scored(row, "loss", "text/indication") is row
