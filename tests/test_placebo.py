"""The placebo arm (`shuffled`): its reports, each study given another study's vector of the same
split and, where patients are named, another patient's (cxrfusion/placebo.py, stage
`shuffle_reports`); what feeds it, and the refusals around it."""
from __future__ import annotations

import re

import h5py
import numpy as np
import pandas as pd
import pytest

from cxrfusion.common import PipelineError
from cxrfusion.dataset import run_splits
from cxrfusion.formats import (
    Run,
    read_prepared,
    read_text_cache,
    text_cache,
    write_text_cache,
)
from cxrfusion.placebo import donors


def studies_table(n: int = 40, patients: int | None = None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"uid": np.arange(100, 100 + n), "label": rng.integers(0, 2, n),
                          "split": rng.choice(["train", "val", "test"], n, p=[.6, .2, .2])})
    if patients:
        table["patient"] = rng.integers(0, patients, n)
    return table


@pytest.mark.parametrize("patients", [None, 12])
def test_each_study_gets_another_study_of_its_split(patients):
    table = studies_table(60, patients)
    given = donors(table, seed=3)
    assert sorted(given) == list(range(len(table)))                      # a permutation
    assert (given != np.arange(len(table))).all()                        # never itself
    assert (table["split"].to_numpy()[given] == table["split"].to_numpy()).all()
    if patients:                                                         # never its patient's
        assert (table["patient"].to_numpy()[given] != table["patient"].to_numpy()).all()


def test_the_permutation_is_seeded_and_never_reads_a_label():
    table = studies_table(50)
    given = donors(table, seed=1)
    assert np.array_equal(donors(table, seed=1), given)
    assert not np.array_equal(donors(table, seed=2), given)
    permuted = table.assign(label=np.random.default_rng(9).permutation(table["label"]))
    assert np.array_equal(donors(permuted, seed=1), given)
    assert np.array_equal(donors(table.drop(columns="label"), seed=1), given)


def test_a_patient_with_half_a_split_is_refused():
    table = pd.DataFrame({"uid": range(6), "label": 0, "split": "test",
                          "patient": [7, 7, 7, 7, 1, 2]})
    with pytest.raises(PipelineError, match=r"split 'test'.*one patient has 4 of its 6"):
        donors(table, seed=0)


def test_shuffle_reports_writes_each_studys_donor_vector(cached):
    """The shuffled cache holds, for every study of studies.csv, its donor's vector from the
    source cache, the donor's uid and the source's attributes (readers check those)."""
    text_input = cached.text.inputs[0]
    uids, vectors, attrs = read_text_cache(text_cache(text_input))
    source = pd.DataFrame(vectors, index=uids)
    with h5py.File(text_cache(text_input, True), "r") as f:
        shuffled_uids, shuffled, donor_uids = f["uids"][:], f["vectors"][:], f["donors"][:]
        shuffled_attrs = dict(f.attrs)
    studies, _ = read_prepared()
    assert sorted(shuffled_uids) == sorted(studies["uid"])
    assert np.array_equal(shuffled, source.loc[donor_uids].to_numpy())
    assert (donor_uids != shuffled_uids).all()
    split = studies.set_index("uid")["split"]
    assert (split[donor_uids].to_numpy() == split[shuffled_uids].to_numpy()).all()
    assert {k: shuffled_attrs[k] for k in attrs} == attrs
    assert shuffled_attrs["shuffled_seed"] == cached.placebo.seed


def test_the_placebo_is_fed_the_shuffled_vectors(cached):
    text_input = cached.text.inputs[0]
    fusion, _ = run_splits(cached, Run("fusion", 0, text_input), ("test",))
    placebo, _ = run_splits(cached, Run("shuffled", 0, text_input), ("test",))
    assert placebo["test"].rows.equals(fusion["test"].rows)           # the same studies
    assert placebo["test"].images.equal(fusion["test"].images)        # and images
    assert not placebo["test"].text.equal(fusion["test"].text)        # other reports
    own = pd.DataFrame(fusion["test"].text.numpy(), index=fusion["test"].rows["uid"])
    given = pd.DataFrame(placebo["test"].text.numpy(), index=placebo["test"].rows["uid"])
    # every vector the placebo reads is a test study's own: none crosses from training
    assert set(map(tuple, given.to_numpy())) <= set(map(tuple, own.to_numpy()))


def test_a_missing_vector_stops_the_shuffle(cached):
    from stages.shuffle_reports import shuffle_reports

    text_input = cached.text.inputs[0]
    uids, vectors, attrs = read_text_cache(text_cache(text_input))
    write_text_cache(text_cache(text_input), uids[1:], vectors[1:], attrs)
    with pytest.raises(PipelineError, match=rf"has no vector for 1 studies.*uid {uids[0]}"):
        shuffle_reports(text_input, cached)


def test_the_placebo_records_the_vectors_it_read_and_predict_refuses_it(tmp_path, params):
    import json

    from cxrfusion.formats import record
    from cxrfusion.predict import load_predictor

    folder = tmp_path / "models" / "shuffled" / "indication" / "seed-0"
    folder.mkdir(parents=True)
    recorded = record(params, Run("shuffled", 0, "indication"))
    assert recorded["text"]["vectors"] == "features/text/indication.shuffled.h5"
    assert record(params, Run("fusion", 0, "indication"))["text"]["vectors"] == (
        "features/text/indication.h5")
    (folder / "params.json").write_text(json.dumps(recorded))
    with pytest.raises(PipelineError, match="placebo arm .* other studies' reports"):
        load_predictor(folder)


def _row(verdict: str, mean: float, p: float) -> dict:
    return {"verdict": verdict, "mean": mean, "low": mean - 0.05, "high": mean + 0.05,
            "p": p, "p_adjusted": p, "design": {"detectable": 0.1, "power": 0.8,
                                                 "units_for_equivalence": None,
                                                 "seeds_for_equivalence": None},
            "seed-0": 0.0, "seed-1": 0.0}


@pytest.mark.parametrize("primary, placebo, says", [
    ("higher", "higher", "It also ranks them better than the placebo .*so the gain comes from "
                         "what the reports say, not from the capacity"),
    ("higher", "inconclusive", "But it is not shown to rank them better than the placebo .*"
                               "so the gain may be the capacity of the branch"),
    ("inconclusive", "inconclusive", "Against the placebo .*, tested only after the primary is "
                                     "shown: .*; not shown either way"),
])
def test_the_answer_reads_the_primary_with_its_placebo(primary, placebo, says):
    from cxrfusion.params import Comparison
    from cxrfusion.results import answer_sentences, sentence

    first, second = Comparison.parse("fusion-image/indication"), Comparison.parse(
        "fusion-shuffled/indication")
    d = _row(primary, 0.1 if primary == "higher" else 0.01, 0.01 if primary == "higher" else 0.6)
    e = _row(placebo, 0.08 if placebo == "higher" else 0.01,
             0.02 if placebo == "higher" else 0.7)
    text = answer_sentences(first, d, second, e, 0.05, 0.05, "studies")
    assert text.startswith(sentence(first, d, 0.05, 0.05, "studies"))
    assert re.search(says, text), text
    assert "fusion − shuffled AUROC" in text
    assert answer_sentences(first, d, None, None, 0.05, 0.05, "studies") == sentence(
        first, d, 0.05, 0.05, "studies")                  # compare.placebo false


def test_the_placebo_trained_after_fusion_is_the_placebo_trained_alone(cached):
    """train_fusion trains fusion, then the placebo, in one process: each run seeds
    everything itself, so the placebo's weights are those of a process of its own."""
    import shutil

    from cxrfusion.training import train

    cached.train.epochs = 1
    text_input = cached.text.inputs[0]
    fusion, placebo = Run("fusion", 0, text_input), Run("shuffled", 0, text_input)
    train(fusion, cached)
    train(placebo, cached)
    after = (placebo.models / "model.safetensors").read_bytes()
    shutil.rmtree(placebo.models)
    train(placebo, cached)
    assert (placebo.models / "model.safetensors").read_bytes() == after
    assert (fusion.models / "model.safetensors").read_bytes() != after
