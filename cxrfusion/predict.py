"""Use a trained model: the probability that a new study is abnormal, and its label.

    python -m cxrfusion.predict --model models/fusion/findings+impression/seed-0 \\
        --image a.png --image b.png --findings "The heart is enlarged." --impression "Cardiomegaly."
    python -m cxrfusion.predict --model models/image/seed-1 --csv studies.csv --out predictions.csv

Any trained run can be named: models/<variant>[/<text input>]/seed-<seed>, and the TF-IDF
baseline, models/tfidf/<text input> (it reads the report's words alone; the placebo is refused).

The study is read exactly as the pipeline read its training and test studies:
  images  `cxrfusion.imaging.load_xray` at the model's image size and fit (what `cache_images`
          cached), normalised and scored by `cxrfusion.scoring.score` (what `evaluate` runs);
          a frozen arm's (models/image_frozen@<alias>/..., models/fusion_frozen@<alias>/...):
          read at its encoder's size and fit by the same encoder (checked against model.json's
          fingerprint) with `cxrfusion.image_encoder.embed` (what `embed_images` runs);
  report  the fields the model was trained on, joined by `cxrfusion.studies.join_text`, read by
          the same frozen encoder (model, revision, lowercase, pooling, max_length from the
          model's params.json) with `cxrfusion.text_encoder.embed` (what `embed_text` runs);
  study   the mean of its images' probabilities (`cxrfusion.metrics.study_predictions`);
  label   abnormal when the probability is at or above the threshold `evaluate` used
          on validation (metrics/test/<run>.json), else the model's `evaluate.threshold`.

Probabilities agree with metrics/predictions/<run>.csv to about 1e-7, not always to the
last bit: on the CPU a row's result depends in its last bit on the batch it is computed in
(see tests/test_predict_explain.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrfusion import image_encoder, params, tfidf
from cxrfusion.common import PipelineError, atomic_path, main, resolve_device
from cxrfusion.dataset import Split
from cxrfusion.formats import load_csv, read_text_cache_attrs, text_cache
from cxrfusion.imaging import BadImage, load_xray
from cxrfusion.metrics import study_predictions
from cxrfusion.model import Classifier, load_model
from cxrfusion.params import TEXT_FIELDS, VARIANTS, Params, built
from cxrfusion.saved_model import evaluation_threshold, image_fit, saved_settings
from cxrfusion.scoring import score
from cxrfusion.studies import join_text
from cxrfusion.text_encoder import (
    CASINGS,
    embed,
    encoder_fingerprint,
    fingerprint_casing,
    load_encoder,
    resolve_reading,
)

log = logging.getLogger("predict")

DEFAULT_MODEL = "models/fusion/findings+impression/seed-0"  # the defaults' first fusion run
OUTPUT_COLUMNS = ["uid", "n_images", "probability", "label", "prediction", "threshold"]


@dataclass(frozen=True)
class Words:
    """The TF-IDF baseline as predict reads it (cxrfusion/tfidf.py): the report, no image."""
    fitted: dict             # models/tfidf/<input>/tfidf.json
    uses_image = False
    uses_text = True


@dataclass
class Predictor:
    """A trained model with everything needed to read new studies as it was trained to."""
    model: Classifier | Words
    config: dict                 # models/<run>/model.json (the TF-IDF baseline: its variant)
    settings: Params             # models/<run>/params.json: the settings it was trained with
    fields: list[str]            # the report fields it reads (none for the image model)
    folder: Path
    device: torch.device
    threshold: float
    threshold_source: str
    _encoder: tuple | None = field(default=None, repr=False)
    _image_encoder: object = field(default=None, repr=False)

    @property
    def variant(self) -> str:
        return self.config["variant"]

    def encoder(self):
        """(tokenizer, model, reading) of the frozen text encoder, loaded once and checked."""
        if self._encoder is None:
            t = self.settings.text
            tokenizer, encoder = load_encoder(t.model, t.revision, self.device, t.lowercase,
                                              t.trust_remote_code)
            check_encoder(t.model, tokenizer, encoder, self.config, self.folder, t.lowercase)
            reading = resolve_reading(t.model, t.revision, encoder, t.pooling, t.prompt)
            self._encoder = (tokenizer, encoder, reading)
        return self._encoder

    def image_encoder(self):
        """A frozen arm's image encoder (model.json's image_encoder), loaded once and checked:
        the weights and the reading must be the ones its vectors were made with."""
        if self._image_encoder is None:
            recorded = self.config["image_encoder"]
            settings = {k: recorded[k] or None for k in ("model", "revision")}
            settings.update(pooling=recorded["pooling"],
                            trust_remote_code=recorded["trust_remote_code"])
            encoder = image_encoder.load(settings, self.device)
            if (encoder.fingerprint, encoder.size) != (recorded["fingerprint"], recorded["size"]):
                raise PipelineError(
                    f"the image encoder {recorded['model']} (fingerprint {encoder.fingerprint}, "
                    f"{encoder.size} px) is not the one whose vectors the model in {self.folder} "
                    f"was trained on (fingerprint {recorded['fingerprint']}, {recorded['size']} "
                    "px, from model.json): restore it, or rerun `dvc repro` (embed_images, "
                    "train) to retrain.")
            self._image_encoder = (settings, encoder)
        return self._image_encoder


def load_predictor(folder, device: str = "auto", threshold: float | None = None) -> Predictor:
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"model folder {folder} not found: train it first (`dvc repro`; "
                            "its runs are models/<variant>[/<text input>]/seed-<seed>, and "
                            "models/tfidf/<text input>) or name another with --model.")
    record = saved_settings(folder)
    variant = record.get("run", {}).get("variant")
    if params.variant_of(str(variant)) in VARIANTS and params.row(variant).shuffled:
        raise PipelineError(f"{folder} is the placebo arm ({variant}): it was trained on other "
                            "studies' reports, so what it makes of a study's own report means "
                            "nothing; it exists only to be compared with fusion. Name a fusion "
                            "model instead (models/fusion/<text input>/seed-<seed>).")
    settings, fields = built(record), list(record["text"].get("fields", ()))
    dev = resolve_device(device, "option --device")
    if params.variant_of(str(variant)) in VARIANTS and params.row(variant).trained_once:
        model, config = Words(tfidf.load(folder / tfidf.MODEL)), {"variant": variant}
    else:
        model, config = load_model(folder, dev)
    value, source = evaluation_threshold(folder, settings, threshold)
    return Predictor(model, config, settings, fields, folder, dev, value, source)


def check_encoder(name: str, tokenizer, encoder, config: dict, folder: Path,
                  lowercase="auto") -> None:
    """The encoder must be the one whose vectors the model was trained on, reading reports in
    the same case: the fingerprint saved in model.json (or, for models saved without one, the
    one of features/text/<input>.h5) names both. `lowercase`: the text.lowercase it was loaded
    with."""
    hidden, text_dim = encoder.config.hidden_size, config["text_dim"]
    if hidden != text_dim:
        raise PipelineError(f"the text encoder {name} gives {hidden}-dimensional report vectors "
                            f"but the model in {folder} was trained on {text_dim}-dimensional "
                            "ones: the encoder is not the one the model was trained with; "
                            "restore it or retrain with `dvc repro`.")
    recorded, source = config.get("text_fingerprint"), folder / "model.json"
    cache = text_cache(config["text_input"]) if config.get("text_input") else None
    if recorded is None and cache is not None and cache.exists():
        recorded, source = read_text_cache_attrs(cache).get("fingerprint"), cache
    now = encoder_fingerprint(name, encoder, tokenizer)
    if recorded is None or recorded == now:
        return
    (base, lower), (recorded_base, recorded_lower) = (fingerprint_casing(now),
                                                       fingerprint_casing(recorded))
    if recorded_base == base and recorded_lower is None:
        raise PipelineError(f"the model in {folder} was trained before the casing of its reports "
                            f"was recorded (fingerprint {recorded}, from {source}): whether it "
                            f"read them {CASINGS[lower]}, as the text encoder {name} now does, is "
                            "unknown; rerun `dvc repro` (embed_text, train) to retrain it.")
    if recorded_base == base:
        asked = lowercase if isinstance(lowercase, str) else str(lowercase).lower()
        raise PipelineError(
            f"the model in {folder} was trained on reports read {CASINGS[recorded_lower]} "
            f"(fingerprint {recorded}, from {source}) but the text encoder {name} now reads them "
            f"{CASINGS[lower]} (text.lowercase={asked} in {folder / 'params.json'}): set "
            f"text.lowercase: {str(recorded_lower).lower()} there to read them as in training, "
            "or rerun `dvc repro` (embed_text, train) to retrain.")
    raise PipelineError(f"the text encoder {name} (fingerprint {now}) is not the one whose "
                        f"vectors the model in {folder} was trained on (fingerprint {recorded}, "
                        f"from {source}): the encoder changed since; restore it, or rerun "
                        "`dvc repro` (embed_text, train) to retrain.")


# --- reading a study ------------------------------------------------------------------------------

def load_images(paths: list, size: int, fit: str) -> torch.Tensor:
    """uint8 (N, size, size), decoded and fitted as `cache_images` does (the one shared
    function); `fit` is the model's (`saved_model.image_fit`), whatever params.yaml says now."""
    out = []
    for path in paths:
        if not Path(path).is_file():
            raise PipelineError(f"image {path} not found.")
        try:
            out.append(load_xray(path, size, fit))
        except BadImage as err:
            raise PipelineError(f"cannot read image {path}: it is empty, truncated or not an "
                                f"image ({err}).") from None
    return torch.from_numpy(np.stack(out))


def embed_reports(predictor: Predictor, texts: list[str]) -> np.ndarray:
    """Report vectors as `embed_text` made them: same encoder, pooling and max_length."""
    t = predictor.settings.text
    tokenizer, encoder, reading = predictor.encoder()
    return embed(texts, tokenizer, encoder, reading, t.max_length, t.batch_size,
                 predictor.device, progress=False)


def predict_studies(predictor: Predictor, images: pd.DataFrame,
                    texts: pd.Series | None) -> pd.DataFrame:
    """Study-level probabilities.

    images: one row per image with columns uid, path (for a model without image branch: one
            row per study, path unused).
    texts:  report text per uid (None for the image model).
    """
    model, config = predictor.model, predictor.config
    rows = images.reset_index(drop=True)
    if isinstance(model, Words):  # one row a study: its report's probability
        probs = tfidf.probabilities(model.fitted, [texts[u] for u in rows["uid"]])
        return _called(predictor, rows[["uid"]].assign(probability=probs, n_images=0))
    if getattr(model, "frozen", False):  # the frozen encoder's vector of each image
        settings, encoder = predictor.image_encoder()
        decoded = load_images(rows["path"].tolist(), encoder.size,
                              config["image_encoder"]["fit"]).numpy()
        pixels = torch.from_numpy(image_encoder.embed(
            iter(decoded), len(decoded), encoder, settings["pooling"],
            predictor.settings.frozen_image.batch_size, predictor.device, progress=False))
    else:
        pixels = (load_images(rows["path"].tolist(), config["image_size"],
                              image_fit(config, predictor.folder))
                  if model.uses_image else None)
    vectors = None
    if model.uses_text:
        codes, uids = pd.factorize(rows["uid"])  # each study's report embedded once
        vectors = torch.from_numpy(embed_reports(predictor, [texts[u] for u in uids])[codes])
    labels = torch.zeros(len(rows), dtype=torch.int64)  # unknown: only the loss reads them
    split = Split(rows, pixels, vectors, labels).to(predictor.device)
    t = predictor.settings.train
    probs, _ = score(model, split, t.batch_size, t.amp)
    scored = rows.assign(probability=probs.astype("float64"))
    studies = study_predictions(scored.assign(label=0)).drop(columns="label")
    studies["n_images"] = studies["uid"].map(rows.groupby("uid").size()) if model.uses_image else 0
    return _called(predictor, studies)


def _called(predictor: Predictor, studies: pd.DataFrame) -> pd.DataFrame:
    """Each study's probability called abnormal or normal at the predictor's threshold."""
    studies["label"] = (studies["probability"] >= predictor.threshold).astype(int)
    studies["prediction"] = np.where(studies["label"] == 1, "abnormal", "normal")
    studies["threshold"] = predictor.threshold
    return studies[OUTPUT_COLUMNS]


# --- the command line -----------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cxrfusion.predict",
        description="Probability that a chest X-ray study is abnormal, from a model the pipeline "
                    "trained. One study: --image (repeatable) and the report (--text, or its "
                    "fields); many: --csv. Give what the model reads (fusion: images and report; "
                    "image: images; text: report). Run it from the project's root folder.",
        epilog="examples:\n"
               "  python -m cxrfusion.predict --image a.png --image b.png \\\n"
               "      --findings 'The heart is enlarged.' --impression 'Cardiomegaly.'\n"
               "  python -m cxrfusion.predict --model models/image/seed-0 --csv studies.csv "
               "--out p.csv\n"
               "output: CSV, one row per study: uid, n_images, probability (of abnormal), label "
               "(1 abnormal), prediction, threshold",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="folder of a trained model, models/<variant>[/<text input>]/seed-<seed> "
                        "or models/tfidf/<text input> (the TF-IDF baseline), as `dvc repro` "
                        f"writes it (default: {DEFAULT_MODEL})")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image of the study (PNG, or any format Pillow reads); repeat it for "
                        "each image: the study's probability is the mean over its images "
                        "(default: none)")
    p.add_argument("--text", default=None,
                   help="the report text, already joined as the model was trained on it, "
                        "instead of the fields below (default: none)")
    for name in TEXT_FIELDS:
        p.add_argument(f"--{name}", default=None, metavar="TEXT",
                       help=f"the report's {name} (default: none); the fields the model was "
                            "trained on (its text input, e.g. findings+impression) are joined "
                            "with a space")
    p.add_argument("--uid", default="study",
                   help="the study's name in the output, for one study (default: study)")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="many studies: columns uid, filename (the image's path; one row per "
                        "image, several rows of one uid for several images) and the report, as "
                        "column text or as the columns of the model's report fields "
                        "(default: none)")
    p.add_argument("--image-dir", default="", metavar="DIR",
                   help="folder the --csv filenames are relative to (default: none, i.e. "
                        "relative to the current folder)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability of abnormal at or above which a study is called abnormal "
                        "(default: the one `evaluate` chose on validation, "
                        "metrics/test/<run>.json, else the model's evaluate.threshold when it "
                        "is a probability)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the predictions as CSV to FILE (default: print them to stdout)")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda[:N] (default: auto, a GPU when there is one)")
    return p


def _one_study(args, predictor: Predictor) -> tuple[pd.DataFrame, pd.Series | None]:
    model, variant, fields = predictor.model, predictor.variant, predictor.fields
    given = {f: getattr(args, f) for f in TEXT_FIELDS if getattr(args, f) is not None}
    if args.text is not None and given:
        raise PipelineError("give the report either as --text or as its fields "
                            f"(--{', --'.join(given)}), not both.")
    missing = []
    if model.uses_image and not args.image:
        missing.append("its images (--image PATH, repeatable)")
    if model.uses_text and args.text is None and not any(f in given for f in fields):
        missing.append(f"its report (--text, or --{' / --'.join(fields)})")
    if missing:
        raise PipelineError(f"the {variant} model in {predictor.folder} reads "
                            f"{' and '.join(missing)}: give "
                            f"{'them' if len(missing) > 1 else 'it'}.")
    if not model.uses_image and args.image:
        log.warning("the %s model reads no image: --image ignored", variant)
    if not model.uses_text and (args.text is not None or given):
        log.warning("the %s model reads no report: the text is ignored", variant)
    ignored = [f for f in given if f not in fields]
    if model.uses_text and ignored:
        log.warning("the model was trained on %s only: --%s ignored", ", ".join(fields),
                    ", --".join(ignored))
    text = (args.text if args.text is not None
            else join_text(pd.Series({f: given.get(f) for f in fields}), fields))
    paths = args.image if model.uses_image else [""]
    images = pd.DataFrame({"uid": args.uid, "path": [str(p) for p in paths]})
    return images, pd.Series({args.uid: text}) if model.uses_text else None


def _many_studies(args, predictor: Predictor) -> tuple[pd.DataFrame, pd.Series | None]:
    model, fields = predictor.model, predictor.fields
    path = Path(args.csv)
    if not path.is_file():
        raise PipelineError(f"--csv {path} not found.")
    table = load_csv(path, "give comma-separated UTF-8 text with a header line (uid, filename, "
                           "text or the report fields).")
    if (args.image or args.text is not None
            or any(getattr(args, f) is not None for f in TEXT_FIELDS)):
        raise PipelineError("give either --csv or one study's --image/--text/fields, not both.")
    needed = ["uid"] + (["filename"] if model.uses_image else [])
    missing = [c for c in needed if c not in table.columns]
    text_missing = model.uses_text and "text" not in table.columns and any(
        f not in table.columns for f in fields)
    if missing or text_missing:
        names = missing + ([f"text (or {', '.join(f for f in fields if f not in table.columns)})"]
                           if text_missing else [])
        raise PipelineError(f"{path}: missing column(s) {', '.join(names)} for the "
                            f"{predictor.variant} model; the file has {', '.join(table.columns)}.")
    if table.empty:
        raise PipelineError(f"{path} holds no study.")
    texts = None
    if model.uses_text:
        text = (table["text"] if "text" in table.columns
                else table.apply(join_text, axis=1, fields=fields))
        per_uid = text.groupby(table["uid"], sort=False)
        differ = per_uid.nunique() > 1
        if differ.any():
            raise PipelineError(f"{path}: the rows of uid {differ[differ].index[0]} hold different "
                                "report texts; one study has one report.")
        texts = per_uid.first()
    if model.uses_image:
        paths = [str(Path(args.image_dir) / f) if args.image_dir else f for f in table["filename"]]
        images = pd.DataFrame({"uid": table["uid"], "path": paths})
    else:
        images = pd.DataFrame({"uid": pd.unique(table["uid"]), "path": ""})
    return images, texts


def cli(argv: list[str] | None = None) -> pd.DataFrame:
    """Parse `argv`, predict, print or write the study-level predictions; returns them."""
    args = parser().parse_args(argv)
    predictor = load_predictor(args.model, args.device, args.threshold)
    images, texts = (_many_studies if args.csv else _one_study)(args, predictor)
    studies = predict_studies(predictor, images, texts)
    if args.out:
        with atomic_path(args.out) as tmp:
            studies.to_csv(tmp, index=False)
        log.info("wrote %d predictions to %s", len(studies), args.out)
    else:
        sys.stdout.write(studies.to_csv(index=False))
    for row in studies.head(10).itertuples():
        log.info("%s: probability of abnormal %.4f -> %s (threshold %g from %s)", row.uid,
                 row.probability, row.prediction, row.threshold, predictor.threshold_source)
    return studies


if __name__ == "__main__":
    main(lambda: cli(sys.argv[1:]))
