"""Training (cxrfusion.training.train) and stages/evaluate.py on the tiny demo of conftest's
`cached` fixture."""
from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import first_run, splits_of
from sklearn import metrics as skm

from cxrfusion import metrics as metrics_mod
from cxrfusion.common import PipelineError
from cxrfusion.dataset import load_splits
from cxrfusion.formats import record, text_cache
from cxrfusion.model import load_model, reads
from cxrfusion.params import Params, as_dict
from cxrfusion.scoring import score
from cxrfusion.training import train
from stages.evaluate import evaluate

METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "auroc", "auprc", "confusion"}


def _reloaded_val_loss(run, p: Params) -> float:
    """Validation loss of the weights saved in models/<run> (fresh process state)."""
    model, _ = load_model(run.models)
    splits, _ = load_splits(p, reads(run.variant)[0], run.text_input)
    return score(model, splits["val"], p.train.batch_size)[1]


def _batches_per_epoch(p: Params) -> int:
    n = int((pd.read_csv("data/prepared/images.csv")["split"] == "train").sum())
    bs = p.train.batch_size
    return math.ceil(n / bs) - (1 if n % bs == 1 else 0)  # a last batch of 1 image is dropped


# --- training -------------------------------------------------------------------------------------

def test_training_lowers_the_loss(cached):
    cached.train.epochs = 8
    history = train(first_run("text", cached), cached)["history"]
    assert [row["epoch"] for row in history] == list(range(1, 9))
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    for row in history:
        for phase in ("train", "val"):
            assert set(row[phase]) == {"loss", "accuracy", "precision", "recall", "f1", "auroc"}
            assert 0 < row[phase]["loss"] < 5
            assert 0 <= row[phase]["auroc"] <= 1


def test_fusion_training_writes_its_outputs(cached):
    p = cached
    run = first_run("fusion", p)
    result = train(run, p)
    history, chosen = result["history"], result["chosen"]
    assert len(history) == 2 and chosen in (1, 2)

    folder = Path("models/fusion/findings+impression/seed-0")
    assert run.models == folder
    assert sorted(f.name for f in folder.iterdir()) == ["history.json", "model.json",
                                                        "model.safetensors", "params.json"]
    assert sorted(p.name for p in Path("models/fusion").iterdir()) == ["findings+impression"]
    assert json.loads((folder / "history.json").read_text()) == history
    # the run's resolved parameters: its seed and text input, the rest as given
    saved = json.loads((folder / "params.json").read_text())
    assert saved == json.loads(json.dumps(record(p, run)))
    assert saved["train"]["seed"] == 0 and saved["train"]["seeds"] == p.train.seeds
    assert saved["text"]["input"] == "findings+impression"
    assert saved["text"]["fields"] == ["findings", "impression"]
    assert saved["run"] == {"variant": "fusion", "seed": 0, "text_input": "findings+impression"}
    config = json.loads((folder / "model.json").read_text())
    assert config["variant"] == "fusion"
    assert config["seed"] == 0 and config["text_input"] == "findings+impression"
    # the weights are pinned by name: the backbone with its timm tag, the encoder with its revision
    backbone = p.model.backbone  # name.tag, e.g. efficientnet_b1.ra4_e3600_r240_in1k
    assert "." in backbone and config["backbone"] == backbone
    assert config["pretrained_tag"] == backbone.split(".", 1)[1] and config["pretrained"] is False
    assert config["text_model"] == "models/demo_encoder" and config["text_revision"] is None
    assert config["text_dim"] == 16 and config["image_size"] == 32 and config["image_fit"] == "pad"
    assert config["epoch"] == chosen and config["select"] == "best_val_loss"
    assert config["hidden"] == 256 and config["dropout"] == pytest.approx(0.3)
    assert [config["mean"], config["std"]] == [list(s) for s in load_model(folder)[0].input_stats()]
    assert not list(folder.parent.glob(".*"))  # no temporary folder left behind

    # DVCLive: the kept epoch's metrics, and one row per epoch in the plots
    assert run.train_log == Path("metrics/train/fusion/findings+impression/seed-0")
    live = json.loads(
        Path("metrics/train/fusion/findings+impression/seed-0/metrics.json").read_text())
    assert live["epoch_kept"] == chosen
    for phase in ("train", "val"):
        for key, value in history[chosen - 1][phase].items():
            assert live[phase][key] == pytest.approx(value)
        loss = pd.read_csv(run.train_log / f"plots/metrics/{phase}/loss.tsv", sep="\t")
        assert loss["step"].tolist() == [0, 1]
        assert loss["loss"].tolist() == pytest.approx([row[phase]["loss"] for row in history])

    # the saved weights (batch-norm statistics included) reproduce the kept epoch's val loss
    assert _reloaded_val_loss(run, p) == pytest.approx(history[chosen - 1]["val"]["loss"], rel=1e-5)


# --- selection ------------------------------------------------------------------------------------

EIGHT_EPOCHS_SEED = 7  # with this seed the validation loss is lowest before epoch 8 (at 2)


@pytest.fixture
def eight_epochs(cached) -> Params:
    # `best` and `last` differ: the text model trained with EIGHT_EPOCHS_SEED
    cached.train.epochs = 8
    return cached


def _eight(p: Params):
    return first_run("text", p, seed=EIGHT_EPOCHS_SEED)


def test_dvc_metrics_show_the_kept_epoch_not_the_last(eight_epochs):
    run = _eight(eight_epochs)
    result = train(run, eight_epochs)
    chosen, history = result["chosen"], result["history"]
    assert chosen < 8  # the fixture's premise: kept and last differ
    live = json.loads((run.train_log / "metrics.json").read_text())
    assert live["epoch_kept"] == chosen
    assert live["val"] == history[chosen - 1]["val"] != history[7]["val"]
    assert live["train"] == history[chosen - 1]["train"]
    # the per-epoch plots still hold every epoch
    loss = pd.read_csv(run.train_log / "plots/metrics/val/loss.tsv", sep="\t")
    assert loss["loss"].tolist() == pytest.approx([row["val"]["loss"] for row in history])


def test_select_last_keeps_the_last_epoch(eight_epochs):
    eight_epochs.train.select = "last"
    run = _eight(eight_epochs)
    result = train(run, eight_epochs)
    assert result["chosen"] == 8
    assert json.loads((run.models / "model.json").read_text())["epoch"] == 8
    assert _reloaded_val_loss(run, eight_epochs) == pytest.approx(
        result["history"][-1]["val"]["loss"], rel=1e-6)


def test_select_best_val_loss_keeps_the_argmin(eight_epochs):
    eight_epochs.train.select = "best_val_loss"
    run = _eight(eight_epochs)
    result = train(run, eight_epochs)
    losses = [row["val"]["loss"] for row in result["history"]]
    best = int(np.argmin(losses)) + 1
    assert best < 8, "the example should keep an epoch before the last; pick another seed"
    assert result["chosen"] == best
    assert json.loads((run.models / "model.json").read_text())["epoch"] == best
    # the weights of that epoch were kept, not the last epoch's
    reloaded = _reloaded_val_loss(run, eight_epochs)
    assert reloaded == pytest.approx(losses[best - 1], rel=1e-6)
    assert reloaded != pytest.approx(losses[-1], rel=1e-6)


# --- determinism ----------------------------------------------------------------------------------

def test_training_is_deterministic(cached):
    cached.train.epochs = 3
    run = first_run("text", cached)
    first = train(run, cached)
    weights = (run.models / "model.safetensors").read_bytes()
    evaluate(run, cached)
    scores = (run.test_metrics).read_bytes()
    again = train(run, cached)
    assert again == first
    assert (run.models / "model.safetensors").read_bytes() == weights
    evaluate(run, cached)
    assert (run.test_metrics).read_bytes() == scores

    # a changed seed changes the training and the test metrics (its own run, beside seed 0's)
    other_run = first_run("text", cached, seed=1)
    other = train(other_run, cached)
    assert other["history"] != first["history"]
    assert other["history"][0]["train"]["loss"] != first["history"][0]["train"]["loss"]
    evaluate(other_run, cached)
    assert json.loads((other_run.test_metrics).read_text())["study"] != \
        json.loads(scores)["study"]
    assert (run.models / "model.safetensors").read_bytes() == weights  # seed 0's untouched


# --- non-finite loss ------------------------------------------------------------------------------

def test_nan_inputs_stop_training(cached):
    run = first_run("text", cached)
    # attributes kept: the cache still matches
    with h5py.File(text_cache(run.text_input), "r+") as f:
        vectors = f["vectors"][:]
        vectors[:] = np.nan
        f["vectors"][...] = vectors
    with pytest.raises(PipelineError, match=r"loss became nan at epoch 1, batch 1\b"):
        train(run, cached)
    assert not Path("models/text").exists()


def test_non_finite_loss_names_epoch_and_batch(cached, monkeypatch):
    import cxrfusion.training as train_module  # where train_epoch looks up `forward`

    real_forward, calls = train_module.forward, []

    def forward(model, images, text, amp):
        logits = real_forward(model, images, text, amp)
        if model.training:
            calls.append(len(logits))
            if len(calls) == per_epoch + 3:  # epoch 2, batch 3
                return logits + float("inf")
        return logits

    per_epoch = _batches_per_epoch(cached)
    assert per_epoch > 3
    monkeypatch.setattr(train_module, "forward", forward)
    with pytest.raises(PipelineError) as err:
        train(first_run("text", cached), cached)
    message = str(err.value)
    assert "epoch 2, batch 3" in message
    assert "train.lr" in message
    # losses are checked once per epoch (no GPU sync per step): the epoch ends, no other starts
    assert len(calls) == 2 * per_epoch
    assert not Path("models/text").exists()


# --- evaluate -------------------------------------------------------------------------------------

def test_evaluate_writes_predictions_and_metrics(cached):
    p = cached
    run = first_run("text", p)
    train(run, p)
    result = evaluate(run, p)
    assert run.test_metrics == Path("metrics/test/text/findings+impression/seed-0.json")
    assert run.predictions == Path("metrics/predictions/text/findings+impression/seed-0.csv")

    predictions = pd.read_csv(run.predictions)
    assert list(predictions.columns) == ["uid", "filename", "label", "probability"]
    images = pd.read_csv("data/prepared/images.csv")
    test_rows = images[images["split"] == "test"]
    assert len(predictions) == len(test_rows) > 0
    assert predictions["filename"].is_unique
    merged = predictions.merge(test_rows, on="filename", suffixes=("", "_csv"),
                               validate="one_to_one")
    assert len(merged) == len(test_rows)
    assert ((merged["uid"] == merged["uid_csv"]).all()
            and (merged["label"] == merged["label_csv"]).all())
    assert predictions["probability"].between(0, 1).all()
    assert predictions["probability"].nunique() > 1

    saved = json.loads(run.test_metrics.read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved) == {"run", "threshold", "threshold_rule", "study", "image",
                          "sensitivity_at_specificity", "val_studies"}
    assert saved["run"] == {"variant": "text", "seed": 0, "text_input": "findings+impression"}
    # evaluate.threshold: youden (the default), chosen on the validation studies
    assert p.evaluate.threshold == "youden" and saved["threshold_rule"] == "youden"
    threshold = saved["threshold"]
    assert 0 <= threshold < 1
    studies_csv = pd.read_csv("data/prepared/studies.csv")
    assert saved["val_studies"] == (studies_csv["split"] == "val").sum()
    for level in ("image", "study"):
        assert METRIC_KEYS <= set(saved[level])
        assert saved[level] == result[level]  # floats survive JSON exactly

    # image level: one prediction per image
    y, prob = predictions["label"], predictions["probability"]
    assert saved["image"]["n"] == len(predictions)
    assert saved["image"]["auroc"] == pytest.approx(skm.roc_auc_score(y, prob), abs=1e-4)
    assert saved["image"]["accuracy"] == pytest.approx(skm.accuracy_score(y, prob >= threshold))

    # study level, by hand: mean probability over a study's images, then sklearn
    studies = predictions.groupby("uid").agg(label=("label", "first"),
                                             probability=("probability", "mean"))
    assert (predictions.groupby("uid")["label"].nunique() == 1).all()
    y, prob = studies["label"], studies["probability"]
    pred = (prob >= threshold).astype(int)
    study = saved["study"]
    assert study["n"] == len(studies) == test_rows["uid"].nunique()
    assert study["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert study["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert study["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
    assert study["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
    # csv keeps 6 digits
    assert study["auroc"] == pytest.approx(skm.roc_auc_score(y, prob), abs=1e-4)
    assert study["auprc"] == pytest.approx(skm.average_precision_score(y, prob), abs=1e-4)
    assert study["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert study["brier"] == pytest.approx(skm.brier_score_loss(y, prob))
    assert 0 <= study["ece"] <= 1
    assert study["binning"] == f"{metrics_mod.ece_bins(len(studies))} equal-mass bins"
    # the fixed specificity: read off the test ROC, no threshold (tested by hand elsewhere)
    at = saved["sensitivity_at_specificity"]
    assert at["specificity"] == p.evaluate.specificity == 0.9
    assert at["sensitivity"] == pytest.approx(
        metrics_mod.sensitivity_at_specificity(y, prob, 0.9), abs=1e-4)
    # the validation predictions are saved, one row per validation image
    val = pd.read_csv(run.validation)
    assert set(val["uid"]) == set(studies_csv.loc[studies_csv["split"] == "val", "uid"])
    assert list(val.columns) == ["uid", "filename", "label", "probability"]

    # the files `dvc plots` draws are study-level too
    confusion = pd.read_csv(run.curve("confusion"))
    assert len(confusion) == len(studies)
    assert confusion["actual"].tolist() == y.tolist()
    assert confusion["predicted"].tolist() == pred.tolist()  # at the chosen threshold
    roc = pd.read_csv(run.curve("roc"))
    assert list(roc.columns) == ["fpr", "tpr"] and roc["tpr"].iloc[-1] == 1.0
    assert list(pd.read_csv(run.curve("pr")).columns) == ["recall", "precision"]


def test_evaluate_uses_the_saved_model(cached):
    """Predictions come from models/<run>: the same weights give the same file."""
    run = first_run("text", cached)
    train(run, cached)
    evaluate(run, cached)
    first = (run.predictions).read_text()
    model, _ = load_model(run.models)
    splits, _ = load_splits(cached, False, run.text_input)
    probs, _ = score(model, splits["test"], 8)
    assert pd.read_csv(run.predictions)["probability"].to_numpy() == pytest.approx(probs, rel=1e-5)
    evaluate(run, cached)
    assert (run.predictions).read_text() == first


def test_predictions_keep_full_precision(cached):
    """compare reads predictions.csv: it must hold the probabilities evaluate scored."""
    run = first_run("text", cached)
    train(run, cached)
    evaluate(run, cached)
    model, _ = load_model(run.models)
    splits, _ = load_splits(cached, False, run.text_input)
    probs, _ = score(model, splits["test"], 8)
    written = pd.read_csv(run.predictions)["probability"].to_numpy()
    assert np.array_equal(written.astype(np.float32), probs)


def test_nan_validation_inputs_stop_training(cached):
    from cxrfusion.formats import read_prepared

    cached.train.epochs = 1
    run = first_run("text", cached)
    train(run, cached)  # a good run first: its outputs must survive the failed one

    studies, _ = read_prepared()
    val = set(studies.loc[studies["split"] == "val", "uid"])
    with h5py.File(text_cache(run.text_input), "r+") as f:
        vectors = f["vectors"][:]
        vectors[np.isin(f["uids"][:], list(val))] = np.nan
        f["vectors"][...] = vectors
    logged = run.train_log
    before = {f: f.read_bytes() for f in logged.rglob("*") if f.is_file()}
    assert before
    with pytest.raises(PipelineError, match="epoch 1"):
        train(run, cached)
    assert (run.models / "model.safetensors").exists()  # the previous run's model
    # and the previous run's training metrics, not the failed run's partial ones
    assert {f: f.read_bytes() for f in logged.rglob("*") if f.is_file()} == before
    assert not list(run.train_log.parent.glob(f".{run.train_log.name}*"))  # no temporary folder


def test_skipped_images_leave_all_variants_the_same_rows(cached):
    from stages import cache_images

    images = pd.read_csv("data/prepared/images.csv")
    broken = images.loc[images["split"] == "test", "filename"].iloc[0]
    Path("data/raw/images/images_normalized", broken).write_bytes(b"not a png")
    cached.image.skip_bad = True
    cache_images.cache_images(cached)
    assert json.loads(Path("features/images_counts.json").read_text())["skipped"] == 1

    by_variant = {v: splits_of(cached, v)[0]
                  for v in ("fusion", "image", "text")}
    assert broken not in set(by_variant["image"]["test"].rows["filename"])
    for split in ("train", "val", "test"):
        files = {v: by_variant[v][split].rows["filename"].tolist() for v in by_variant}
        assert files["fusion"] == files["image"]
        assert files["text"] == files["image"], split


# --- compare --------------------------------------------------------------------------------------

def _write_predictions(run, uids, labels) -> None:
    """What evaluate writes for a run: its test and validation predictions, and test.json."""
    for path in (run.predictions, run.validation, run.test_metrics):
        path.parent.mkdir(parents=True, exist_ok=True)
    for path in (run.predictions, run.validation):
        pd.DataFrame({"uid": uids, "filename": [f"{u}.png" for u in uids], "label": labels,
                      "probability": np.linspace(0.1, 0.9, len(uids))}).to_csv(path, index=False)
    run.test_metrics.write_text(json.dumps({
        "threshold": 0.5, "threshold_rule": "fixed", "study": {"brier": 0.2, "ece": 0.1}}))


def _every_run(params):
    from cxrfusion.formats import runs

    every = runs(params)
    # image and image_frozen per seed; fusion, text, placebo, fusion_frozen per input and seed;
    # the TF-IDF baseline per input
    assert len(every) == 2 * 2 + 4 * 2 * 2 + 2
    return every


def test_compare_refuses_test_studies_of_one_class(workdir, params):
    from stages.compare import compare

    for run in _every_run(params):
        _write_predictions(run, range(6), [1] * 6)
    with pytest.raises(PipelineError, match=r"the test studies hold 6 abnormal and 0 normal: .*"
                                            r"split.test"):
        compare(params)
    assert not Path("metrics/comparison.json").exists()


def test_compare_refuses_runs_scored_on_other_studies(workdir, params):
    from cxrfusion.formats import Run
    from stages.compare import compare

    other = Run("text", 1, "indication")
    for run in _every_run(params):  # one run on another split
        _write_predictions(run, range(1, 7) if run == other else range(6), [0, 1] * 3)
    with pytest.raises(PipelineError, match=r"text/indication/seed-1 scores other test studies "
                                            r"than fusion/findings\+impression/seed-0"):
        compare(params)
    assert not Path("metrics/comparison.json").exists()


def test_compare_refuses_a_run_not_evaluated(workdir, params):
    """Every seed of every variant and text input: a missing one is named, not averaged away."""
    from cxrfusion.formats import Run
    from stages.compare import compare

    for run in _every_run(params):
        if run != Run("image", 1):
            _write_predictions(run, range(6), [0, 1] * 3)
    with pytest.raises(PipelineError, match=r"metrics/predictions/image/seed-1.csv not found"):
        compare(params)
    assert not Path("metrics/comparison.json").exists()


def test_an_image_cache_of_another_images_csv_is_refused(cached):
    """images.csv rewritten (prepare run again) but images.h5 not: its missing images must not
    pass for unreadable ones and vanish from every variant."""
    images = pd.read_csv("data/prepared/images.csv")
    extra = images.iloc[[0]].assign(filename="a_new_image.png")
    pd.concat([images, extra]).to_csv("data/prepared/images.csv", index=False)
    for variant in ("fusion", "image"):
        with pytest.raises(PipelineError, match=r"features/images.h5 neither holds nor skipped 1 "
                                                r"images .*a_new_image.png.*dvc repro "
                                                r"cache_images"):
            splits_of(cached, variant)
    # the text variant reads no pixels, only the list of skipped images, which is stale too
    with pytest.raises(PipelineError, match=r"features/images_counts.json counts \d+ images but "
                                            r"data/prepared/images.csv has \d+: .*cache_images"):
        splits_of(cached, "text")


# --- memory: one copy of what is scored -------------------------------------------------------

def test_splits_are_views_of_one_array_of_only_their_rows(cached):
    from cxrfusion.formats import IMAGES_H5, read_image_cache

    size = cached.image.size
    names, pixels = read_image_cache(IMAGES_H5)
    splits, _ = splits_of(cached, "fusion", ("train", "val"))
    assert set(splits) == {"train", "val"}  # train reads no test row
    train_images, val_images = splits["train"].images, splits["val"].images
    storage = train_images.untyped_storage()
    # one array for both splits, each a view of it: no per-split or reordered copy
    assert val_images.untyped_storage().data_ptr() == storage.data_ptr()
    assert storage.nbytes() == (len(train_images) + len(val_images)) * size * size
    row_of = {n: i for i, n in enumerate(names)}
    for split in splits.values():  # the right pixels, in the rows' order
        for k in (0, len(split) - 1):
            np.testing.assert_array_equal(split.images[k].numpy(),
                                          pixels[row_of[split.rows["filename"][k]]])
    # evaluate and explain read the test rows alone
    test = splits_of(cached, "image", ("test",))[0]["test"]
    assert test.images.untyped_storage().nbytes() == len(test) * size * size
    assert (test.rows["split"] == "test").all()


def test_a_split_larger_than_half_the_free_gpu_memory_stays_on_the_host(monkeypatch, caplog):
    import torch

    from cxrfusion.training import fits_on_device

    assert fits_on_device(10**12, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 * 10**9, 80 * 10**9))
    assert fits_on_device(4 * 10**9, torch.device("cuda"))
    with caplog.at_level("WARNING"):
        assert not fits_on_device(5 * 10**9, torch.device("cuda"))
    assert "stay in host memory and each batch is copied to the GPU" in caplog.text


def test_host_images_are_copied_batch_by_batch(cached):
    """The path a GPU without room takes (images_too=False), checked on the CPU: the same
    batches as the split held whole on the device."""
    import torch

    split = splits_of(cached, "fusion", ("val",))[0]["val"]
    whole, host = split.to("cpu"), split.to("cpu", images_too=False)
    assert host.host_images and not whole.host_images  # the copy path, even on the CPU
    index = list(torch.randperm(len(split), generator=torch.Generator().manual_seed(0)).split(5))
    for a, b in zip(whole.batches(index), host.batches(index)):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_evaluate_reads_the_caches_as_the_model_was_trained(cached):
    """evaluate depends on the model, not on image.* and text.* in params.yaml: a changed
    image.size (not yet cached) does not make it read the cache otherwise."""
    run = first_run("image", cached)
    train(run, cached)
    before = evaluate(run, cached)
    cached.image.size = 48
    cached.text.max_length = 64
    assert evaluate(run, cached)["study"] == before["study"]


def test_a_model_saved_before_fit_and_casing_were_recorded_is_refused(tmp_path, params):
    from cxrfusion.saved_model import trained_settings

    old = as_dict(params)
    del old["image"]["fit"]
    (tmp_path / "params.json").write_text(json.dumps(old))
    with pytest.raises(PipelineError, match=r"params.json has no image.fit: .*retrain it"):
        trained_settings(tmp_path, params)


def test_the_text_variant_refuses_a_skip_list_of_other_images(cached):
    """The text variant reads only images_counts.json: a list naming images that images.csv
    does not hold comes from another images.csv, even when the counts agree."""
    from cxrfusion.formats import IMAGES_COUNTS

    report = json.loads(IMAGES_COUNTS.read_text())
    report.update(cached=report["cached"] - 1, skipped=1, skipped_images=["not_an_image.png"])
    IMAGES_COUNTS.write_text(json.dumps(report))
    with pytest.raises(PipelineError, match=r"images_counts.json counts .* another images.csv"):
        splits_of(cached, "text")
