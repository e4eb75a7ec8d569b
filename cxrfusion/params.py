"""Every parameter of params.yaml, described once: its section, default, rule and meaning.

Each section is a dataclass; each field is an `option(default, rule, doc)`. `load` reads
params.yaml, `validate` checks it against these descriptions before any work starts (a bad value
stops the stage with the parameter's name, its value and what is allowed), and the stages read
the result as `Params`, the sections filled in: p.train.batch_size. A run's own seed and text
input are not parameters: they come with its `Run`. `python -m cxrfusion.params`
prints every option with its default. The defaults are the offline demo's. params.yaml is
written from these sections (`python -m cxrfusion.params_yaml params.yaml`): its values are
the defaults, its comments the sections' docstrings and the options' docs, so a description is
edited here only (tests/test_params_yaml.py keeps the file in step).
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from cxrfusion.backbones import default_input_size
from cxrfusion.common import PipelineError

SOURCES = ("demo", "kaggle", "openi", "local", "mimic_cxr")
POOLINGS = ("cls", "mean", "last")  # text.pooling, besides auto (cxrfusion/text_encoder.py)
IMAGE_POOLINGS = ("cls", "mean")  # an image encoder's: its CLS token, or the mean of its patches
ALIAS = re.compile(r"[a-z][a-z0-9_]*")  # an encoder's alias: a DVC stage key and a file name


@dataclass(frozen=True)
class Variant:
    """One arm of the comparison: a model trained on the same split with the same head, once
    per seed of train.seeds, and once per text input of text.inputs when it reads a report."""
    reads_image: bool
    reads_report: bool
    title: str    # how tables name it
    noun: str     # how sentences name it
    colour: str   # its colour in every figure (matplotlib)
    shuffled: bool = False  # reads another study's report (its text input's shuffled cache)
    trained_with: str | None = None  # trained in that arm's stage, after it, in one process
    # not a network: the TF-IDF regression (cxrfusion/tfidf.py), deterministic, so trained once
    # a text input, its one run standing for every seed; it reads tfidf.*, not train.* or model.*
    trained_once: bool = False
    # reads the image as a frozen encoder's vector (features/images/<alias>.h5), not through the
    # fine-tuned CNN: a head trained on cached vectors, in seconds (frozen_image.encoders)
    frozen_image: bool = False
    # every seed trained in one stage (train_<arm>[@<input>]), one after the other: a head on
    # cached vectors trains in less time than a process takes to start
    seeds_together: bool = False

    @property
    def cnn(self) -> bool:
        """Reads the image through the fine-tuned CNN (what Grad-CAM and augmentation need)."""
        return self.reads_image and not self.frozen_image

    @property
    def encoder(self) -> str | None:
        """Which encoders the arm multiplies by: "image" (a frozen arm: one arm an alias of
        frozen_image.encoders, always named <arm>@<alias>), "text" (fusion, its placebo and
        text-only: the default text encoder's arm, and <arm>@<alias> for each alias of
        text.encoders) or None (the CNN image model, and TF-IDF, which reads the words). A frozen
        fusion arm reads the default text encoder."""
        if self.frozen_image:
            return "image"
        return "text" if self.reads_report and not self.trained_once else None


# the arms, in the order of every table and figure; each is a train_<name> stage in dvc.yaml, or
# trained in another arm's stage (`trained_with`)
VARIANTS = {
    "fusion": Variant(True, True, "fusion", "fusion", "tab:purple"),
    "image": Variant(True, False, "image only", "the image model", "tab:blue"),
    "text": Variant(False, True, "text only", "the text model", "tab:orange"),
    # the classical baseline: does the frozen encoder read more than the report's words?
    "tfidf": Variant(False, True, "TF-IDF + logistic regression",
                     "the TF-IDF baseline", "tab:brown",
                     trained_once=True),
    # the placebo: fusion fed each study another study's report vector (stage shuffle_reports),
    # so that it has fusion's inputs and capacity but none of the report's content
    "shuffled": Variant(True, True, "placebo (shuffled reports)",
                        "the placebo (fusion reading other studies' reports)", "tab:gray",
                        shuffled=True, trained_with="fusion"),
    # the strong image baselines reviewers ask for: a frozen encoder (RAD-DINO, DINOv2, a timm
    # network) read once, and a head on its vectors, alone and with the report
    "image_frozen": Variant(True, False, "image only (frozen encoder)",
                            "the image model on the frozen encoder", "tab:cyan",
                            frozen_image=True, seeds_together=True),
    "fusion_frozen": Variant(True, True, "fusion (frozen image encoder)",
                             "fusion on the frozen image encoder", "tab:pink",
                             frozen_image=True, seeds_together=True),
}
EXPLAINED = tuple(v for v, d in VARIANTS.items() if d.cnn)  # Grad-CAM needs the CNN
NETWORKS = tuple(v for v, d in VARIANTS.items() if not d.trained_once)  # trained per seed
SELECTIONS = ("best_val_loss", "last")
FITS = ("pad", "crop", "stretch")  # image.fit: how cxrfusion/imaging.py makes an X-ray square
TEXT_FIELDS = ("indication", "comparison", "findings", "impression")
# model.fusion: how the head joins image and report (cxrfusion/model.py)
FUSIONS = ("concat", "projector", "gated")
AUGMENTS = ("none", "affine", "affine+jitter")  # train.augment (cxrfusion/augment.py)
OPTIMIZERS = ("adam", "adamw")   # train.optimizer
SCHEDULES = ("constant", "cosine")  # train.schedule: the learning rate over the epochs
# train.recipe: the values the training options left null take (`recipe`). original: the
# original write-up's training exactly. study: how the field fine-tunes a pretrained CNN
# (AdamW with decoupled weight decay, Loshchilov & Hutter 2019; a warmup epoch then cosine
# decay, timm's and most fine-tuning recipes'; the affine augmentation; the backbone at a tenth
# of the head's rate when it starts from pretrained weights, so that its features are adapted,
# not overwritten).
RECIPES = {
    "original": {"optimizer": "adam", "weight_decay": 0.0, "schedule": "constant",
                 "warmup_epochs": 0, "augment": "none", "backbone_lr_ratio": None},
    "study": {"optimizer": "adamw", "weight_decay": 0.05, "schedule": "cosine",
              "warmup_epochs": 1, "augment": "affine", "backbone_lr_ratio": 0.1},
}
# evaluate.threshold: the rules choose_threshold applies on validation (cxrfusion/metrics.py)
THRESHOLD_RULES = ("youden", "max_f1")
CRITERIA = ("auroc", "loss")  # tune.criterion: how the validation studies rank the candidates
# options only a model that reads the image (the CNN) uses, and only one that reads a report
IMAGE_ONLY = ("train.augment", "train.lr_backbone", "model.freeze_backbone",
              *(f"augment.{k}" for k in ("rotation", "translate", "scale", "flip", "brightness",
                                         "contrast")))
REPORT_ONLY = ("model.standardise_text",)
# tune.candidates may set how a run is trained and the head it trains, never what the caches
# were made of (image.*, text.*, model.backbone), how epochs are kept (train.select: the
# criterion reads the epoch kept) or how the work is spread (seeds, devices, processes)
TUNABLE = (*(f"train.{k}" for k in ("epochs", "lr", "recipe", "optimizer", "weight_decay",
                                    "schedule", "warmup_epochs", "lr_backbone", "augment",
                                    "batch_size")),
           *(f"model.{k}" for k in ("hidden", "dropout", "freeze_backbone", "standardise_text",
                                    "fusion", "shared_dim")),
           *(f"augment.{k}" for k in ("rotation", "translate", "scale", "flip", "brightness",
                                      "contrast")))
# tune.tfidf: the TF-IDF baseline's own candidates (its options only)
TFIDF_TUNABLE = tuple(f"tfidf.{k}" for k in ("c", "max_features", "ngrams", "min_df",
                                              "lowercase"))
SUBGROUPS = ("view", "images", "words")  # study_report.subgroups (cxrfusion/subgroups.py)
MIN_IMAGE_SIZE = 32  # EfficientNet downsamples by 32: smaller inputs leave no feature map
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


# --- the comparisons compare.primary and compare.secondary name (cxrfusion/verdicts.py) ------

# first minus second. fusion - shuffled: what the report's content adds beyond the capacity of
# the branch that reads it; text - tfidf: whether the frozen encoder reads more than the words
PAIRS = (("fusion", "image"), ("fusion", "text"), ("text", "image"), ("fusion", "shuffled"),
         ("text", "tfidf"), ("fusion", "tfidf"),
         # does the report still add to a strong frozen image encoder; fine-tuned or frozen?
         ("fusion_frozen", "image_frozen"), ("fusion", "fusion_frozen"))
PLACEBO = ("fusion", "shuffled")  # the pair compare.placebo tests right after the primary


@dataclass(frozen=True)
class Comparison:
    """One AUROC difference: models a - b on one text input's runs (None: the pair alone, whose
    keys and labels do not depend on the input). Each way of writing it is spelled here once."""
    a: str
    b: str
    text_input: str | None = None

    @classmethod
    def parse(cls, name: str) -> "Comparison":
        """fusion-image/indication -> Comparison("fusion", "image", "indication"); an arm on
        another encoder than the default text encoder is <arm>@<alias>:
        fusion@biobert_large-fusion/indication, fusion_frozen@raddino-image_frozen@raddino/...
        (whether the aliases are declared is checked against params: `pairs`)."""
        pair, sep, text_input = str(name).partition("/")
        a, dash, b = pair.partition("-")
        va, vb = variant_of(a), variant_of(b)
        named = all(alias_of(x) is None or ALIAS.fullmatch(alias_of(x)) for x in (a, b))
        if not (sep and dash and text_input and named) or not (
                (va, vb) in PAIRS or (va == vb and a != b and va in VARIANTS
                                      and VARIANTS[va].encoder)):
            allowed = ", ".join(cls(x, y).summary_key for x, y in PAIRS)
            raise ValueError(f"{name!r} is not a comparison: write <pair>/<text input>, the pair "
                             f"one of {allowed}, or an arm against itself on another encoder, "
                             "each arm <arm>[@<alias>] (e.g. fusion-image/indication, "
                             "fusion@biobert_large-fusion/indication)")
        return cls(a, b, text_input)

    @classmethod
    def from_key(cls, key: str, text_input: str | None = None) -> "Comparison":
        """fusion_minus_image (key) -> Comparison("fusion", "image", text_input)."""
        a, minus, b = key.partition("_minus_")
        if not (a and minus and b):
            raise ValueError(f"{key!r} is not the key of a pair: write <model>_minus_<model>")
        return cls(a, b, text_input)

    @classmethod
    def of_input(cls, text_input: str | None, p=None) -> list["Comparison"]:
        """Every pair of one text input, in PAIRS' order: `pairs(p)` (PAIRS alone without
        params)."""
        return [cls(a, b, text_input) for a, b in (pairs(p) if p is not None else PAIRS)]

    @property
    def name(self) -> str:
        """How compare.primary, compare.secondary and comparison.json's question name it:
        fusion-image/indication."""
        return f"{self.summary_key}/{self.text_input}"

    @property
    def key(self) -> str:
        """The key of its pair in comparison.json's differences[text input]:
        fusion_minus_image."""
        return f"{self.a}_minus_{self.b}"

    @property
    def summary_key(self) -> str:
        """The key of its pair in metrics/summary.json[text input], and the pair of its name:
        fusion-image."""
        return f"{self.a}-{self.b}"

    @property
    def label(self) -> str:
        """How tables, sentences and figures name the pair: fusion − image."""
        return f"{self.a} − {self.b}"

    @property
    def ascii_label(self) -> str:
        """The label in plain ASCII: statistics' names of a pair (and so the keys of
        metrics/study_report/subgroups.json) and bench/conclusions.py's columns: fusion - image."""
        return f"{self.a} - {self.b}"


# --- arms: a variant read by one encoder -----------------------------------------------------

def arm(variant: str, alias: str | None) -> str:
    """The arm of `variant` on the encoder `alias` (None: the default text encoder's):
    fusion@biobert_large; fusion."""
    return f"{variant}@{alias}" if alias else variant


def variant_of(name: str) -> str:
    """The variant of an arm: fusion@biobert_large -> fusion."""
    return name.partition("@")[0]


def alias_of(name: str) -> str | None:
    """The encoder alias of an arm (None: the default text encoder, or none read)."""
    return name.partition("@")[2] or None


def row(name: str) -> Variant:
    """The VARIANTS row of an arm."""
    return VARIANTS[variant_of(name)]


def title(name: str) -> str:
    """How tables name an arm: its variant's title, and the encoder alias if any
    (image only (frozen encoder) · demo_vit)."""
    alias = alias_of(name)
    return row(name).title + (f" · {alias}" if alias else "")


def noun(name: str) -> str:
    """How sentences name an arm: its variant's noun, and the encoder alias if any."""
    alias = alias_of(name)
    return row(name).noun + (f" ({alias})" if alias else "")


def arm_order(name: str, variants=None) -> tuple:
    """Sort key grouping arms by encoder (the default text encoder's and the unaliased first,
    then each alias) and, within one, in `variants`' order (VARIANTS' by default)."""
    order = list(variants or VARIANTS)
    return (alias_of(name) is not None, alias_of(name) or "", order.index(variant_of(name)))


def pair_order(c: "Comparison") -> tuple:
    """Sort key of a comparison, grouped by encoder as the tables are: the pairs without an
    alias first, then each alias's (alphabetically); within one, its variants' pair in PAIRS'
    order, an arm against itself on another encoder after them."""
    named = sorted({a for a in (alias_of(c.a), alias_of(c.b)) if a})
    pair = (variant_of(c.a), variant_of(c.b))
    index = PAIRS.index(pair) if pair in PAIRS else len(PAIRS) + list(VARIANTS).index(pair[0])
    return (bool(named), named, index)


def aliases(p, kind: str) -> list:
    """The encoders an arm of `kind` is trained on: "text": None (the default, text.model)
    and text.encoders' aliases; "image": frozen_image.encoders' aliases."""
    name = "text" if kind == "text" else "frozen_image"
    if isinstance(p, dict):  # an older params.yaml may lack the mapping: its default
        default = fresh(SECTIONS[name].__dataclass_fields__["encoders"].default)
        extra = list(p.get(name, {}).get("encoders", default) or {})
    else:
        extra = list(getattr(p, name).encoders or {})
    return [None, *extra] if kind == "text" else extra


def arms(p, variants=None) -> list[str]:
    """Every arm the parameters ask for, variant by variant in VARIANTS' order, each variant's
    arms in its encoders' order: fusion, fusion@biobert_large, image, ..."""
    return [arm(v, a) for v in (variants or VARIANTS)
            for a in (aliases(p, VARIANTS[v].encoder) if VARIANTS[v].encoder else [None])]


def pairs(p) -> list[tuple[str, str]]:
    """The comparisons of one text input: each pair of PAIRS on every encoder its arms
    multiply by (both arms on the same encoder; a default-text arm against each frozen arm),
    then each arm on another encoder against the same arm on the first (fusion@large - fusion,
    image_frozen@raddino - image_frozen@dinov2): first minus second."""
    def side(kind, other):  # the encoders one side of a pair is read on
        if kind is None or (kind == "text" and other == "image"):
            return [None]
        return aliases(p, kind)

    out = []
    for a, b in PAIRS:
        ka, kb = VARIANTS[a].encoder, VARIANTS[b].encoder
        if ka == kb and ka:
            out += [(arm(a, e), arm(b, e)) for e in aliases(p, ka)]
        else:
            out += [(arm(a, x), arm(b, y)) for x in side(ka, kb) for y in side(kb, ka)]
    for v, row_ in VARIANTS.items():
        if row_.encoder and not row_.shuffled:  # the placebo is read against its own fusion
            first, *others = aliases(p, row_.encoder) or [None]
            out += [(arm(v, e), arm(v, first)) for e in others]
    return out


def secondaries(c: "Compare") -> list[str]:
    """The family's comparisons after the primary (and the placebo): compare.secondary, then
    compare.encoders."""
    return [*c.secondary, *c.encoders]


def text_reader(p: "Params", alias: str | None) -> "Text":
    """The text section as the encoder `alias` reads (None: text.model's, the default):
    text.encoders[alias]'s model, revision, pooling, prompt and trust_remote_code, the rest
    shared."""
    if alias is None:
        return p.text
    if alias not in (p.text.encoders or {}):
        raise PipelineError(f"the text encoder {alias!r} is not an alias of text.encoders "
                            f"({', '.join(p.text.encoders or {}) or 'none'}): declare it there "
                            "(docs/real-study.md, \"Several encoders in one study\").")
    return replace(p.text, **p.text.encoders[alias])


def with_text(p: "Params", alias: str | None) -> "Params":
    """`p` with its text section as the encoder `alias` reads it (text_reader)."""
    return p if alias is None else replace(p, text=text_reader(p, alias))


def _fail(name: str, value, allowed: str):
    raise PipelineError(f"parameter {name}={value!r} is not allowed: {allowed} "
                        f"(set it in params.yaml or with `dvc exp run -S {name}=...`).")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --- rules: each checks one value and says what is allowed ----------------------------------------

def one_of(*options):
    def rule(name, v):
        if v not in options:
            _fail(name, v, "use one of " + ", ".join(options))
    return rule


def fraction(name, v):
    if not _number(v) or not 0 < v < 1:
        _fail(name, v, "use a fraction strictly between 0 and 1")


def in_range(low, high, allowed: str, whole: bool = False):
    """low <= value < high (a whole number when `whole`)."""
    def rule(name, v):
        if not _number(v) or not low <= v < high or (whole and v != int(v)):
            _fail(name, v, allowed)
    return rule


def share(name, v):
    if not _number(v) or not 0 < v <= 1:
        _fail(name, v, "use a share in (0, 1]")


def positive_int(name, v):
    if not _number(v) or v <= 0 or v != int(v):
        _fail(name, v, "use a positive integer")


def positive_number(name, v):
    if not _number(v) or v <= 0:
        _fail(name, v, "use a positive number")


def switch(name, v):
    if not isinstance(v, bool):  # a quoted "false" is a non-empty string: Python reads true
        _fail(name, v, "use true or false (unquoted)")


def seed(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**32:
        _fail(name, v, "use an integer from 0 to 2**32 - 1")


seed_rule = seed  # inside a section class, `seed` names the section's own option


def device(name, v):
    if not isinstance(v, str) or not DEVICE.fullmatch(v):
        _fail(name, v, "use auto, cpu, cuda or cuda:N")


def text(name, v):
    if not isinstance(v, str) or not v:
        _fail(name, v, "use a non-empty text")


def any_value(name, v):
    """Checked together with another option (see `_across`), or free."""


def text_inputs(name, v):
    """Named field sets: each a field or fields joined by '+' (the name is the field set)."""
    allowed = ("use a non-empty list of field sets, each a report field or fields joined by '+' "
               "(e.g. [findings+impression, indication]), the fields among "
               + ", ".join(TEXT_FIELDS))
    if not isinstance(v, list) or not v or len(set(map(str, v))) != len(v):
        _fail(name, v, allowed + ", each once")
    for item in v:
        parts = item.split("+") if isinstance(item, str) else [None]
        if any(f not in TEXT_FIELDS for f in parts) or len(set(parts)) != len(parts):
            _fail(name, v, allowed)


def spoken(names) -> str:
    """a, b and c."""
    names = list(names)
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]])) if names else ""


def fields_of(text_input: str) -> list[str]:
    """The report fields a text input names: findings+impression -> [findings, impression]."""
    return text_input.split("+")


def seeds(name, v):
    if not isinstance(v, list) or not v or len(set(map(str, v))) != len(v):
        _fail(name, v, "use a non-empty list of distinct seeds, e.g. [0, 1, 2]")
    for s in v:
        seed(name, s)


def operating_point(name, v):
    if v not in THRESHOLD_RULES and not (_number(v) and 0 < v < 1):
        _fail(name, v, "use a probability strictly between 0 and 1, or a rule applied to each "
              "model's validation predictions: " + " | ".join(THRESHOLD_RULES))


def comparison(name, v):
    try:
        Comparison.parse(v)
    except ValueError as e:
        _fail(name, v, str(e))


def comparisons(name, v):
    if not isinstance(v, list):
        _fail(name, v, "use a list of comparisons, e.g. [fusion-text/indication]")
    for item in v:
        comparison(name, item)


def subgroup_kinds(name, v):
    if (not isinstance(v, list) or len(set(map(str, v))) != len(v)
            or any(k not in SUBGROUPS for k in v)):
        _fail(name, v, "use a list of distinct subgroup kinds among " + ", ".join(SUBGROUPS)
              + " (or [] for none)")


def image_side(name, v):
    if v != "auto" and (not _number(v) or v < MIN_IMAGE_SIZE or v != int(v)):
        _fail(name, v, f"use auto (the backbone's default input) or a whole number of px >= "
              f"{MIN_IMAGE_SIZE} (EfficientNet downsamples by 32; the real study: 240)")


def probability(name, v):
    if not _number(v) or not 0 <= v <= 1:
        _fail(name, v, "use a probability in [0, 1]")


IMAGE_ENCODER_KEYS = {"model": "a hub id, a local folder (a transformers vision model and its "
                      "image processor) or timm:<name> (a timm model, its pretrained weights)",
                      "revision": "the hub revision, or null",
                      "pooling": "cls | mean (of the patch tokens)",
                      "trust_remote_code": "true runs the model code its repository ships"}


TEXT_ENCODER_KEYS = {"model": "a hub id or a local folder", "revision": "the hub revision, or null",
                     "pooling": "auto | cls | mean | last, as text.pooling",
                     "prompt": "text put before every report, or null",
                     "trust_remote_code": "true runs the model code its repository ships"}


def _encoders(name, v, keys: dict, rules: dict) -> None:
    """An encoder mapping: alias -> exactly `keys`, each passing its rule."""
    allowed = ("use a mapping (or {} for none) of aliases (lowercase letters, digits and _, "
               "starting with a letter: a DVC stage key and a file name, which a hub id's / and "
               ". cannot be) to settings {" + "; ".join(f"{k}: {d}" for k, d in keys.items())
               + "}")
    if not isinstance(v, dict):
        _fail(name, v, allowed)
    for alias, settings in v.items():
        if not isinstance(alias, str) or not ALIAS.fullmatch(alias):
            _fail(name, v, f"alias {alias!r} is not allowed: {allowed}")
        if not isinstance(settings, dict) or set(settings) != set(keys):
            _fail(f"{name}.{alias}", settings, f"give exactly {', '.join(keys)}: " + allowed)
        for key, rule in rules.items():
            rule(f"{name}.{alias}.{key}", settings[key])


def image_encoders(name, v):
    """frozen_image.encoders: alias -> {model, revision, pooling, trust_remote_code}."""
    _encoders(name, v, IMAGE_ENCODER_KEYS,
              {"model": text, "revision": optional(text), "pooling": one_of(*IMAGE_POOLINGS),
               "trust_remote_code": switch})


def text_encoders(name, v):
    """text.encoders: alias -> {model, revision, pooling, prompt, trust_remote_code}."""
    _encoders(name, v, TEXT_ENCODER_KEYS,
              {"model": text, "revision": optional(text), "pooling": one_of("auto", *POOLINGS),
               "prompt": optional(text), "trust_remote_code": switch})


def explained(name, v):
    """explain.variant: an arm Grad-CAM can explain, or why another cannot be."""
    row = VARIANTS.get(variant_of(v)) if isinstance(v, str) else None
    if row is not None and row.frozen_image:
        _fail(name, v, "Grad-CAM differentiates the fine-tuned CNN's last feature maps, and a "
              "frozen arm has none: its head reads a cached vector of each image. Use one of "
              + ", ".join(EXPLAINED))
    # another text encoder's arm (fusion@<alias>): its alias is checked in _across
    one_of(*EXPLAINED)(name, variant_of(v) if isinstance(v, str) else v)


def optional(rule):
    def check(name, v):
        if v is not None:
            rule(name, v)
    return check


def lowercase(name, v):
    if not isinstance(v, bool) and v != "auto":
        _fail(name, v, "use auto, true or false")


def weights(name, v):
    if not isinstance(v, bool) and not (isinstance(v, str) and v):
        _fail(name, v, "use true, false or the path of a weights file")


def grid(name, v):
    """tune.candidates: a list of settings (every network arm tries them all), or a mapping of
    every network arm to its own list, the same length each; a setting maps options of TUNABLE
    to values (each checked in `_tuning`, applied to the rest of params.yaml)."""
    allowed = ("use [] (no tuning), a list of settings such as [{train.lr: 0.001}, {train.lr: "
               "0.0003}] that every network arm tries, or a mapping of each (" +
               ", ".join(NETWORKS) + ") to its list, the same number of settings for each")
    arms = v if isinstance(v, dict) else {arm: v for arm in NETWORKS}
    if not isinstance(v, (list, tuple, dict)) or set(arms) != set(NETWORKS):
        _fail(name, v, allowed)
    if any(not isinstance(grid, (list, tuple)) for grid in arms.values()) or len(
            {len(grid) for grid in arms.values()}) > 1:
        _fail(name, v, allowed + " (an equal budget)")
    for arm, settings in (arms.items() if isinstance(v, dict) else [("", v)]):
        _settings(name, v, settings, arm, TUNABLE, allowed)


def tfidf_grid(name, v):
    """tune.tfidf: the TF-IDF baseline's list of settings, each mapping options of
    TFIDF_TUNABLE to values (as many as each network arm tries: `_tuning`)."""
    allowed = ("use [] (no tuning) or a list of settings such as [{tfidf.c: 0.1}, {tfidf.c: 1}],"
               " as many as tune.candidates gives each network arm")
    if not isinstance(v, (list, tuple)):
        _fail(name, v, allowed)
    _settings(name, v, v, "", TFIDF_TUNABLE, allowed)


def _settings(name, v, settings, arm: str, keys: tuple, allowed: str) -> None:
    """Each candidate of one arm's list: a non-empty mapping of `keys`, none repeated."""
    for k, setting in enumerate(settings):
        which = f"candidate {k}{f' of {arm}' if arm else ''}"
        if not isinstance(setting, dict) or not setting:
            _fail(name, v, f"{which} is {setting!r}: {allowed}")
        unknown = [key for key in setting if key not in keys]
        if unknown:
            _fail(name, v, f"{which} sets {', '.join(map(str, unknown))}, which a "
                  "candidate here cannot set; it may set " + ", ".join(keys))
        if setting in settings[:k]:
            _fail(name, v, f"{which} repeats an earlier one: each a different setting")


class Mapping(dict):
    """A mapping as an option's default (a dataclass refuses a plain dict, which is mutable);
    `fresh` gives each reader its own plain copy."""
    __hash__ = object.__hash__


def fresh(default):
    """An option's default as params.yaml holds it: a tuple as a list, a Mapping as a dict."""
    import copy

    if isinstance(default, tuple):
        return list(default)
    return copy.deepcopy(dict(default)) if isinstance(default, Mapping) else default


def option(default, rule, doc: str, required: bool = True):
    """A parameter: its default (the demo's), the rule its value must pass, what it means.
    required=False: an older params.yaml may lack it, and then the default holds."""
    return field(default=default, metadata={"rule": rule, "doc": doc, "required": required})


# --- the sections ---------------------------------------------------------------------------------
# Each section's docstring and each option's doc are params.yaml's comments: params_yaml.py writes
# the file from them (`python -m cxrfusion.params_yaml params.yaml`), so edit them here.

@dataclass
class Data:
    """Where the studies come from: stage `download` puts the dataset under data/raw (demo:
    synthetic, offline)."""
    source: str = option("demo", one_of(*SOURCES), "where data/raw comes from: demo (synthetic, "
                         "offline) | kaggle | openi | local | mimic_cxr (a MIMIC-CXR-JPG folder "
                         "from PhysioNet, never downloaded here: see README.md)")
    local_dir: str | None = option(None, any_value, "for `local`: a folder in the Kaggle layout, "
                                   "holding indiana_reports.csv, indiana_projections.csv and "
                                   "images/images_normalized/*.png; for `mimic_cxr`: the "
                                   "MIMIC-CXR-JPG folder, holding mimic-cxr-2.0.0-*.csv.gz and "
                                   "files/")
    openi_url: str = option("https://openi.nlm.nih.gov/imgs/collections", text,
                            "for `openi`: where the .tgz files (NLMCXR_png.tgz and "
                            "NLMCXR_reports.tgz) are")
    keep_unindexed: bool = option(False, switch, "MeSH \"No Indexing\" studies were never "
                                  "labelled: false drops them; true keeps them as abnormal, as "
                                  "the original did")


@dataclass
class Demo:
    """The synthetic dataset of `data.source: demo` (SYNTHETIC, not patients)."""
    studies: int = option(500, positive_int, "number of synthetic studies (1 to 5 images each, "
                          "about 2 on average)")
    image_size: int = option(128, positive_int, "side of the generated PNGs, px")
    label_noise: float = option(0.03, in_range(0, 0.5, "use a fraction in [0, 0.5)"),
                                "fraction of studies whose label disagrees with their image and "
                                "report")
    seed: int = option(0, seed, "seed of the generator")


@dataclass
class Split:
    """By study (uid), or by patient when the data names patients (mimic_cxr), stratified by
    label (stage `prepare`)."""
    test: float = option(0.2, fraction, "fraction of studies (of patients) held out for the "
                         "final test (the original 80:20)")
    val: float = option(0.15, fraction, "fraction of the remaining studies (patients) for model "
                        "selection")
    seed: int = option(42, seed, "seed of the split")
    official: bool = option(False, switch, "true: use the dataset's official split instead "
                            "(mimic_cxr only; its `validate` becomes val)", required=False)
    min_studies: int = option(10, in_range(0, float("inf"), "use a whole number >= 0 (0: no "
                                           "minimum)", whole=True),
                              "prepare refuses a train, val or test split with fewer studies; "
                              "0 switches the check off (unit tests of hand-made tables)")
    min_per_label: int = option(2, in_range(0, float("inf"), "use a whole number >= 0 (0: no "
                                            "minimum)", whole=True),
                                "prepare refuses a train, val or test split with fewer studies "
                                "of either label (AUROC and a threshold need both); 0 switches "
                                "the check off (unit tests of hand-made tables)")


@dataclass
class Text:
    """The frozen text encoder that reads every report once, per text input (stage
    `embed_text`: one vector a study)."""
    model: str = option("models/demo_encoder", text, "hub id or local folder of the frozen "
                        "encoder; the real study: dmis-lab/biobert-base-cased-v1.1")
    revision: str | None = option(None, any_value, "hub revision (branch, tag or commit) when "
                                  "`model` is a hub id")
    inputs: tuple = option(("findings+impression", "indication"), text_inputs,
                           "the text inputs compared: each a field set (report fields joined by "
                           "+), embedded once; fusion, its placebo and text-only are trained "
                           "on each. The original read findings + impression, where the "
                           "radiologist's conclusion (and so the label) is written; the "
                           "indication (why the X-ray was taken) is written before it and cannot "
                           "leak it")
    pooling: str = option("mean", one_of("auto", *POOLINGS), "auto | cls | mean | last: how the "
                          "last layer's token vectors become one vector a report. cls (the "
                          "original and BioBERT: [CLS], position 0; refused on a causal "
                          "model) | mean (mask-aware average; the demo default: the random "
                          "tiny BERT's [CLS] vector barely varies between reports) | last (each "
                          "report's last real token, whichever side the batch is padded: a "
                          "decoder LLM's) | auto (a sentence-transformers folder's own pooling "
                          "and Dense/Normalize modules, else last for a causal model, else cls)")
    prompt: str | None = option(None, optional(text), "text put before every report (an "
                                "instruction-tuned embedder's, e.g. Qwen3-Embedding's "
                                "\"Instruct: ...\\nQuery:\"); recorded in the cache, so a "
                                "changed prompt embeds again | null: none", required=False)
    trust_remote_code: bool = option(False, switch, "true runs the model code that text.model's "
                                     "repository ships (CXR-BERT's, for one): read it first; "
                                     "recorded in the cache, the model record and the study "
                                     "report. false: such a model is refused",
                                     required=False)
    encoders: dict = option(Mapping(), text_encoders, "more text encoders in the same study, "
                            "alias -> settings {model, revision, pooling, prompt, "
                            "trust_remote_code} (the keys above, for that encoder; text.lowercase "
                            "and the rest below are shared): each embeds every text input "
                            "(features/text/<input>@<alias>.h5) and trains fusion, its placebo "
                            "and text-only again, as <arm>@<alias> (fusion@biobert_large); the "
                            "TF-IDF baseline and the image model are not repeated. The keys above "
                            "stay the default encoder's, whose arms keep their plain names "
                            "(docs/real-study.md, \"Several encoders in one study\")",
                            required=False)
    lowercase: bool | str = option("auto", lowercase, "auto | true | false: lowercase reports "
                                   "before the encoder reads them; auto follows its "
                                   "tokenizer_config.json, else its vocabulary (BioBERT ships "
                                   "none: its cased vocabulary makes auto read reports cased)")
    max_length: int = option(512, positive_int, "tokens; longer reports are truncated")
    batch_size: int = option(32, positive_int, "reports per forward pass")
    device: str = option("auto", device, "auto | cpu | cuda[:N]")
    nproc: int = option(1, positive_int, "processes (GPUs) sharing the work, launched with "
                        "torchrun")


@dataclass
class DemoEncoder:
    """The tiny BERT built offline for the demo (random weights; the real study reads
    BioBERT)."""
    vocab_size: int = option(1000, positive_int, "WordPiece vocabulary of the tiny BERT")
    hidden_size: int = option(64, positive_int, "its width")
    layers: int = option(2, positive_int, "its layers")
    heads: int = option(2, positive_int, "its attention heads (divide hidden_size)")
    seed: int = option(0, seed, "seed of its random weights")


@dataclass
class Placebo:
    """The placebo arm's reports (stage `shuffle_reports`): each study is given another study's
    report vector, of the same split and, where the data names patients, another patient's."""
    seed: int = option(0, seed, "seed of the permutation (it never reads a label)",
                       required=False)


@dataclass
class Image:
    """Every X-ray decoded once, grayscale, fitted into image.size x image.size (stage
    `cache_images`), and the CNN's ImageNet weights."""
    size: int | str = option(48, image_side, "side of the cached images, px: images are cached "
                             "as size x size grayscale; the real study: 240; auto: the default "
                             "input of model.backbone's weights (timm's pretrained config: 240 "
                             "for B1, 600 for B7; docs/backbones.md)")
    fit: str = option("pad", one_of(*FITS), "how a non-square X-ray becomes size x size: pad "
                      "(letterbox: long side to size, aspect kept, short side padded with the "
                      "border's median) | crop (short side to size, centre square kept; cuts "
                      "the lung bases of tall films) | stretch (the original's Resize((224, "
                      "224)): squashes the heart-to-chest width ratio of cardiomegaly)")
    skip_bad: bool = option(False, switch, "true: skip unreadable images (counted in "
                            "features/images_counts.json) instead of stopping")
    pretrained: bool | str = option(False, weights, "load timm's ImageNet weights for the "
                                    "backbone: true, false or the path of a weights file (the "
                                    "real study: true)")


@dataclass
class FrozenImage:
    """Frozen image encoders (stage `embed_images`): each reads every X-ray once, from the raw
    file, made square by image.fit at the encoder's own input size and normalised as it was
    trained, into one vector an image (features/images/<alias>.h5, with the encoder's
    fingerprint); the frozen arms (image_frozen, fusion_frozen) train the head on each
    encoder's vectors, pooled over a study's images as the CNN arms are, as
    image_frozen@<alias> and fusion_frozen@<alias>
    (docs/real-study.md, "Frozen image encoders")."""
    encoders: dict = option(
        Mapping(demo_vit={"model": "models/demo_image_encoder", "revision": None,
                          "pooling": "mean", "trust_remote_code": False}),
        image_encoders, "alias -> settings, each encoder embedded once and its frozen arms "
        "trained: model (a hub id, a local folder holding a transformers vision model and its "
        "image processor, e.g. microsoft/rad-dino or facebook/dinov2-base, or timm:<name> for a "
        "timm model and its pretrained weights), revision (hub revision or null), pooling (cls: "
        "the CLS token | mean: the mean of the patch tokens; the demo's random ViT: mean, as its "
        "CLS barely varies) and trust_remote_code. An alias (lowercase letters, digits, _) names "
        "the cache, the arms and the stages, embed_images@<alias>; another alias trains only its "
        "own arms; {}: no frozen arm", required=False)
    batch_size: int = option(32, positive_int, "images per forward pass", required=False)
    device: str = option("auto", device, "auto | cpu | cuda[:N] (bf16 on a GPU)",
                         required=False)
    nproc: int = option(1, positive_int, "processes (GPUs) sharing the work, launched with "
                        "torchrun", required=False)


@dataclass
class DemoImageEncoder:
    """The tiny DINOv2-style ViT built offline for the demo, with its image processor (random
    weights; the real study reads RAD-DINO or DINOv2)."""
    image_size: int = option(64, positive_int, "its input side, px (its processor's crop)",
                             required=False)
    patch_size: int = option(8, positive_int, "side of a patch, px (divides image_size)",
                             required=False)
    hidden_size: int = option(64, positive_int, "its width", required=False)
    layers: int = option(2, positive_int, "its layers", required=False)
    heads: int = option(2, positive_int, "its attention heads (divide hidden_size)",
                        required=False)
    seed: int = option(0, seed, "seed of its random weights", required=False)


@dataclass
class Model:
    """The classifier: the CNN and the head that reads its features, the report vector, or
    both (cxrfusion/model.py)."""
    backbone: str = option("tinynet_e.in1k", text, "timm model name.tag; the tag pins which "
                           "ImageNet weights image.pretrained loads. The real study: "
                           "efficientnet_b1.ra4_e3600_r240_in1k (B1, timm 1.0.31's default "
                           "tag). The demo: tinynet_e, a 0.8 M-parameter EfficientNet with the "
                           "same 1,280 features, so its 15 CNN runs (3 seeds x image, and x "
                           "2 text inputs x fusion and its placebo) fit in minutes on 2 CPU "
                           "cores; any timm model name")
    hidden: int = option(256, positive_int, "units of the head's hidden layer")
    dropout: float = option(0.3, in_range(0, 1, "use a fraction in [0, 1)"), "head dropout")
    freeze_backbone: bool = option(False, switch, "true trains only the head, the CNN frozen "
                                   "whole (525,058 parameters for BioBERT fusion)")
    standardise_text: bool = option(True, switch, "the head reads each report-vector dimension "
                                    "standardised by the training studies' mean and sd (saved "
                                    "with the weights); false: raw vectors, as the original. "
                                    "Raw, the frozen encoder's small between-report variation "
                                    "drowns beside the CNN's 1,280 features (docs/design.md, "
                                    "\"Report vectors standardised\")")
    fusion: str = option("concat", one_of(*FUSIONS), "how the head joins image and report: "
                         "concat (the original: the 1,280 + 768 features concatenated into the "
                         "MLP) | projector (each modality through its own Linear + LayerNorm + "
                         "GELU to shared_dim, then concatenated) | gated (a learned per-study "
                         "gate weighs the two projected vectors; its weight of the report is "
                         "saved for the test studies). The image and text models read their "
                         "one modality through the same projector, so comparisons stay like "
                         "for like")
    shared_dim: int = option(256, positive_int, "width of the projectors (projector, gated; "
                             "the image and text models use the same)")


@dataclass
class Train:
    """How every run is trained: each variant once per seed, fusion, its placebo and text once
    per text input too (stages `train_image`, `train_fusion` (fusion, then its placebo),
    `train_text`)."""
    epochs: int = option(3, positive_int, "epochs (the real study: 40)")
    lr: float = option(0.003, positive_number, "Adam learning rate (the original)")
    recipe: str = option("original", one_of(*RECIPES), "what the options below left null "
                         "take: original (the original's training exactly: Adam, no decay, a "
                         "constant rate, no augmentation) | study (AdamW, weight decay 0.05, "
                         "one warmup epoch then cosine decay, affine augmentation, the "
                         "pretrained CNN at a tenth of train.lr; the real study's: "
                         "docs/real-study.md). An option set here or with -S wins",
                         required=False)
    optimizer: str | None = option(None, optional(one_of(*OPTIMIZERS)), "adam | adamw | null "
                                   "(the recipe's)", required=False)
    weight_decay: float | None = option(None, optional(in_range(0, 1, "use a decay in [0, 1)")),
                                        "weight decay (decoupled under adamw) | null (the "
                                        "recipe's)", required=False)
    schedule: str | None = option(None, optional(one_of(*SCHEDULES)), "the learning rate over "
                                  "the epochs: constant | cosine (to 0 after the warmup) | null "
                                  "(the recipe's)", required=False)
    warmup_epochs: int | None = option(None, optional(in_range(0, 1000, "use a whole number of "
                                                               "epochs >= 0", whole=True)),
                                       "epochs whose learning rate climbs linearly to train.lr "
                                       "| null (the recipe's)", required=False)
    lr_backbone: float | None = option(None, optional(positive_number), "learning rate of the "
                                       "CNN, in its own parameter group | null (the recipe's: "
                                       "train.lr under original; a tenth of it under study "
                                       "when image.pretrained, else train.lr); fine-tuning a "
                                       "pretrained CNN usually takes 10 to 100 times less than "
                                       "its new head")
    augment: str | None = option(None, optional(one_of(*AUGMENTS)), "random transforms of the "
                                 "training images, per image and batch, on the training device "
                                 "(validation and test never): none | affine (rotation, shift, "
                                 "zoom, flip: ranges in augment, below) | affine+jitter (and "
                                 "brightness/contrast) | null (the recipe's: none under "
                                 "original)")
    batch_size: int = option(32, positive_int, "images per step, the global batch of all "
                             "processes; the real study: 64 (docs/performance.md, \"Batch "
                             "size\")")
    seeds: tuple = option((0, 1, 2), seeds, "every variant is trained once per seed "
                          "(initialisation, batch order, dropout) on the same split; the "
                          "comparison averages over them and its intervals include their "
                          "spread")
    device: str = option("auto", device, "auto | cpu | cuda[:N]")
    amp: bool = option(True, switch, "bf16 autocast of the CNN on CUDA (ignored on the CPU)")
    compile: bool = option(False, switch, "torch.compile the model (the first epoch compiles; "
                           "gain on a GPU not yet measured: bench/benchmark.py --compile)")
    deterministic: bool = option(False, switch, "true: deterministic GPU kernels (slower; "
                                 "docs/design.md, \"Reproducibility\")")
    select: str = option("best_val_loss", one_of(*SELECTIONS), "which epoch's weights are kept: "
                         "best_val_loss | last")
    nproc: int = option(1, positive_int, "processes (one per GPU) launched with torchrun; "
                        "batch_size and lr are global: the same optimisation for any nproc "
                        "(docs/scaling.md, \"Scaling\")")
    in_memory_gb: float = option(16, in_range(0, float("inf"), "use a size in GB >= 0 (0 always "
                                              "streams)"),
                                 "image caches up to this size (uint8, GB, times the processes "
                                 "on a machine) are held in memory (and on the GPU); larger "
                                 "ones (MIMIC-CXR) are streamed from images.h5")
    workers: int = option(4, in_range(0, 1025, "use a whole number of loader processes >= 0",
                                      whole=True),
                          "loader processes that read images.h5 when it is streamed")


@dataclass
class Augment:
    """The ranges of train.augment, read when it is not none; each drawn per image, per batch
    (cxrfusion/augment.py says why these)."""
    rotation: float = option(10, in_range(0, 180, "use degrees in [0, 180)"),
                             "degrees: uniform in [-rotation, +rotation], [-10, +10] by default "
                             "(torchxrayvision: 45; films are taken in a standard position)")
    translate: float = option(0.05, in_range(0, 0.5, "use a fraction of the side in [0, 0.5)"),
                              "shift, a fraction of the side, each axis: uniform in [-translate, "
                              "+translate], [-0.05, +0.05] by default")
    scale: float = option(0.1, in_range(0, 1, "use a fraction in [0, 1)"),
                          "zoom factor: uniform in [1 - scale, 1 + scale], [0.9, 1.1] by default")
    flip: float = option(0.0, probability,
                         "probability of a horizontal flip (MedFuse flips; 0 here: a flipped "
                         "frontal film puts the heart on the right)")
    brightness: float = option(0.1, in_range(0, 1, "use a fraction in [0, 1)"),
                               "affine+jitter: offset uniform in [-brightness, +brightness] of "
                               "the full range, [-0.1, +0.1] by default")
    contrast: float = option(0.1, in_range(0, 1, "use a fraction in [0, 1)"),
                             "affine+jitter: factor uniform in [1 - contrast, 1 + contrast] "
                             "about each image's mean, [0.9, 1.1] by default")


@dataclass
class Tfidf:
    """The classical baseline for the report (stage `train_tfidf`, cxrfusion/tfidf.py): TF-IDF
    over the words of the training studies' reports, then a logistic regression (L2). It is
    deterministic, so it is trained once a text input, and its one run stands for every seed."""
    c: float = option(1.0, positive_number, "inverse regularisation strength of the logistic "
                      "regression (scikit-learn's C: smaller holds the weights back harder); "
                      "tune.tfidf may try several", required=False)
    max_features: int = option(20000, positive_int, "the most frequent terms of the training "
                               "reports kept", required=False)
    ngrams: int = option(2, in_range(1, 4, "use 1, 2 or 3", whole=True), "terms of up to this "
                         "many words: 1 words, 2 words and word pairs", required=False)
    min_df: int = option(2, positive_int, "a term found in fewer training reports is dropped",
                         required=False)
    lowercase: bool = option(True, switch, "read \"Heart\" as \"heart\"", required=False)


@dataclass
class Tune:
    """An equal tuning budget, chosen on validation (stages `tune_image`, `tune_fusion`,
    `tune_text`; `train_tfidf` the TF-IDF baseline's, tune.tfidf): each arm trains every
    candidate setting at the first seed and keeps the one the validation studies' images rank
    best, as training scores them; every seed then trains with it, the first seed's run being
    that candidate's (docs/real-study.md, "Tuning")."""
    candidates: list = option((), grid, "the settings each network arm tries, each a mapping "
                              "of train.*, model.* and augment.* options to values (e.g. "
                              "[{train.lr: 0.001}, {train.lr: 0.0003}]): a list, tried by every "
                              "network arm, or a mapping of each (fusion, image, text, "
                              "shuffled, image_frozen, fusion_frozen) to its own list, the same "
                              "number each; K candidates cost K - 1 more runs an arm (an arm: a "
                              "model on a text input; the demo has 10). []: no tuning, every arm "
                              "trained as declared (the demo: the cost)", required=False)
    tfidf: list = option((), tfidf_grid, "the TF-IDF baseline's own candidates, each a mapping "
                         "of tfidf.* options to values (e.g. [{tfidf.c: 0.1}, {tfidf.c: 1}]), "
                         "as many as tune.candidates gives each network arm (an equal budget); "
                         "fitted in seconds by stage train_tfidf. []: with no grid", required=False)
    criterion: str = option("auroc", one_of(*CRITERIA), "how the validation images rank the "
                            "candidates, at the epoch each kept (train.select): auroc (the "
                            "highest AUROC) | loss (the lowest loss); the test studies never",
                            required=False)


@dataclass
class Evaluate:
    """How each run's test predictions are scored (stage `evaluate`)."""
    threshold: float | str = option("youden", operating_point, "where a study is called "
                                    "abnormal: a probability of abnormal at or above which it "
                                    "is (e.g. 0.5), or a rule applied to each model's own "
                                    "validation predictions: youden (max sensitivity + "
                                    "specificity - 1: the default, it does not lean on the 64 % "
                                    "abnormal prevalence) | max_f1 (max F1, leans towards "
                                    "calling abnormal); never chosen on test studies")
    specificity: float = option(0.9, fraction, "sensitivity is also read off each run's test "
                                "ROC at this specificity: threshold-free, linear between the "
                                "curve's points (as the ROC figure draws it), so every model "
                                "is compared at the same specificity")


SECONDARY = ("fusion-image/findings+impression", "fusion-text/findings+impression",
             "text-image/findings+impression", "fusion-text/indication", "text-image/indication",
             "text-tfidf/findings+impression", "text-tfidf/indication")


@dataclass
class Compare:
    """The declared question and how it is answered (cxrfusion/verdicts.py)."""
    primary: str = option("fusion-image/indication", comparison, "the comparison the study "
                          "answers first, an AUROC difference <model>-<model>/<text input> "
                          "(first minus second): here fusion minus the image model's, with the "
                          "indication as text input (written before the X-ray is read, so it "
                          "cannot leak the label)")
    secondary: list = option(SECONDARY, comparisons, "the rest of the declared family, "
                             "tested with the primary by weighted Holm; findings+impression is "
                             "the original's input, which holds the radiologist's conclusion "
                             "(and so, nearly, the label); text-tfidf on each input asks whether "
                             "the frozen encoder reads more than the report's words")
    encoders: list = option(("fusion_frozen@demo_vit-image_frozen@demo_vit/indication",),
                            comparisons, "the family's comparisons of arms on other encoders "
                            "(<arm>@<alias>, an alias of text.encoders or "
                            "frozen_image.encoders), tested as secondaries: here whether the "
                            "indication still adds to the frozen image encoder's reading; "
                            "e.g. fusion@biobert_large-fusion/indication (another text "
                            "encoder against the default). Every other pair over the encoders "
                            "is in comparison.json, descriptive", required=False)
    placebo: bool = option(True, switch, "test fusion - shuffled (the placebo) on the "
                           "primary's text input right after the primary: it receives the "
                           "primary's alpha once the primary is shown and passes it on to the "
                           "secondaries (a fixed sequence inside the family), so that a gain "
                           "over the image model is read together with what the report's "
                           "content adds beyond its branch's capacity; false: that row is "
                           "exploratory", required=False)
    alpha: float = option(0.05, in_range(0.001, 0.5, "use a level in [0.001, 0.5)"),
                          "family-wise error rate of the family's differences (and, a family "
                          "of their own, of its equivalences); intervals hold at 1 - alpha, "
                          "the equivalence test's at 1 - 2 alpha")
    primary_share: float = option(0.8, share,
                                  "the primary's share of alpha, tested first (weighted "
                                  "Holm); the secondaries share the rest equally and receive "
                                  "the primary's once it is shown, so they stay testable when "
                                  "it is not; 1: a fixed sequence (the secondaries only after "
                                  "the primary). 0.8 keeps the primary's power near a lone "
                                  "test's (alpha 0.04 instead of 0.05)", required=False)
    margin: float = option(0.05, in_range(0.001, 0.5, "use an AUROC difference in [0.001, 0.5)"),
                           "AUROC difference within which two models count as equivalent (two "
                           "one-sided tests at alpha: the 1 - 2 alpha interval inside "
                           "+-margin); 0.05 is about the gap between a fair and a good reader "
                           "of a finding, smaller than most reported gains of adding a modality")
    bootstrap: int = option(2000, positive_int, "resamples of the descriptive intervals (the "
                            "models' measures, the differences of every measure but the tested "
                            "AUROC, the subgroups); no verdict rests on them: the AUROC "
                            "differences are tested without resampling (cxrfusion/verdicts.py)")
    seed: int = option(0, seed, "seed of the resamples (test studies, seeds, validation "
                       "studies): it moves the descriptive intervals in their last digits, "
                       "never a verdict")
    resample_validation: bool = option(True, switch, "redraw the validation studies in each "
                                       "round and choose every run's threshold again on them, "
                                       "so that F1, sensitivity and specificity at the "
                                       "threshold carry its uncertainty too")


@dataclass
class Explain:
    """Stage `explain`: Grad-CAM heatmaps and modality reliance (test set)."""
    variant: str = option("fusion", explained, "the model explained: fusion | image | shuffled "
                          "(the placebo); Grad-CAM needs the fine-tuned CNN's feature maps, so "
                          "not the text, TF-IDF or frozen arms")
    per_outcome: int = option(3, positive_int, "heatmaps per outcome (true/false "
                              "positive/negative test studies: TP, TN, FP, FN); fewer when the "
                              "test set has fewer")
    seed: int = option(0, seed, "which test studies of each outcome are shown")
    model_seed: int | None = option(None, optional(seed_rule), "the training seed of the model "
                                    "explained (null: the first of train.seeds); `predict "
                                    "--model models/<variant>/.../seed-N` likewise")
    text_input: str | None = option(None, optional(text), "the text input of the fusion model "
                                    "explained, and of the reports swapped for the image model "
                                    "(null: the first of text.inputs)")


@dataclass
class Plan:
    """The a-priori sample size of the primary comparison (cxrfusion/verdicts.py's
    `planned_test_studies`, in metrics/study_report.md): the test studies a study needs to
    show the expected difference, from declared guesses, each with its reason."""
    auroc_image: float = option(0.844, fraction, "the image model's expected AUROC: MMBT's "
                                "image-only arm on MIMIC-CXR (Jacenkow et al., ISBI 2022)",
                                required=False)
    auroc_fusion: float = option(0.878, fraction, "fusion's expected AUROC with the indication: "
                                 "the same paper's image + indication arm (a gain of 0.034)",
                                 required=False)
    prevalence: float = option(0.642, fraction, "abnormal fraction of the test studies: IU "
                               "X-ray's (2,472 of 3,851 labelled studies)", required=False)
    correlation: float = option(0.5, in_range(0, 1, "use a correlation in [0, 1)"),
                                "correlation of the two models' AUROC estimates on the same "
                                "studies (both read the same image): Obuchowski's usual "
                                "planning value for paired readers", required=False)
    sd_seeds: float = option(0.02, in_range(0, 1, "use an AUROC SD in [0, 1)"),
                             "between-seed SD of the AUROC difference: fine-tuning the same CNN "
                             "with other seeds moves its AUROC by about 0.01 to 0.03; take a "
                             "pilot's (comparison.json's per-seed differences) when there is "
                             "one", required=False)
    seeds: int = option(5, positive_int, "training seeds a model the planned study trains",
                        required=False)


@dataclass
class StudyReport:
    """Stage `study_report`: the study report, metrics/study_report.md."""
    subgroups: list = option(SUBGROUPS, subgroup_kinds, "subgroups of the test studies on which "
                             "each model's AUROC and the family's differences are scored, in "
                             "the comparison's bootstrap rounds (exploratory, outside the "
                             "family): view (with a lateral view, or without) | images (one, or "
                             "several) | words (report length tertiles of each text input, cut "
                             "on the training studies); [] for none")
    min_per_label: int = option(5, positive_int, "a subgroup with fewer test studies of either "
                                "label is listed, not scored (an AUROC of fewer is mostly "
                                "noise)")


@dataclass
class Params:
    """params.yaml, checked (`load`): what every stage reads, as p.train.batch_size. Plain values
    that a test or a benchmark may set; a stage never changes them."""
    data: Data = field(default_factory=Data)
    demo: Demo = field(default_factory=Demo)
    split: Split = field(default_factory=Split)
    text: Text = field(default_factory=Text)
    demo_encoder: DemoEncoder = field(default_factory=DemoEncoder)
    placebo: Placebo = field(default_factory=Placebo)
    image: Image = field(default_factory=Image)
    frozen_image: FrozenImage = field(default_factory=FrozenImage)
    demo_image_encoder: DemoImageEncoder = field(default_factory=DemoImageEncoder)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    augment: Augment = field(default_factory=Augment)
    tfidf: Tfidf = field(default_factory=Tfidf)
    tune: Tune = field(default_factory=Tune)
    evaluate: Evaluate = field(default_factory=Evaluate)
    compare: Compare = field(default_factory=Compare)
    explain: Explain = field(default_factory=Explain)
    plan: Plan = field(default_factory=Plan)
    study_report: StudyReport = field(default_factory=StudyReport)


SECTIONS = {f.name: f.default_factory for f in fields(Params)}  # params.yaml's, in its order


def get(params: dict, dotted: str):
    value = params
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise PipelineError(f"parameter {dotted} is missing from params.yaml.")
        value = value[key]
    return value


def validate(p: dict | Params) -> dict | Params:
    """`p` (params.yaml's dict, or Params a test or benchmark set) itself, once every option
    passed its rule and the options that depend on each other agree; else a PipelineError that
    names the first bad one."""
    raw = as_dict(p) if isinstance(p, Params) else p
    _check(raw)
    return p


def _check(p: dict) -> None:
    _replaced(p)
    for section, described in SECTIONS.items():
        for f in fields(described):
            name = f"{section}.{f.name}"
            if not f.metadata["required"] and f.name not in p.get(section, {}):
                continue
            f.metadata["rule"](name, get(p, name))
    _across(p)


def _replaced(p: dict) -> None:
    """An older params.yaml: name what replaced its options before asking for the new ones."""
    for old, new in (("text.fields", "text.inputs (a list of field sets, e.g. "
                      "[findings+impression, indication])"),
                     ("train.seed", "train.seeds (a list, e.g. [0, 1, 2])"),
                     ("evaluate.bootstrap", "compare.bootstrap"),
                     ("evaluate.seed", "compare.seed"),
                     ("report.subgroups", "study_report.subgroups"),
                     ("report.min_per_label", "study_report.min_per_label"),
                     ("frozen_image.read", "frozen arms on every alias of "
                      "frozen_image.encoders (named <arm>@<alias>)")):
        section, key = old.split(".")
        if key in (p.get(section) or {}):
            raise PipelineError(f"parameter {old} was replaced by {new}: replace {old} in "
                                "params.yaml.")


def _across(p: dict) -> None:
    """The rules that tie two options together."""
    source = get(p, "data.source")
    if source in ("local", "mimic_cxr") and not get(p, "data.local_dir"):
        _fail("data.local_dir", get(p, "data.local_dir"),
              "with data.source=local, name the folder that holds the Kaggle layout"
              if source == "local" else
              "with data.source=mimic_cxr, name the MIMIC-CXR-JPG folder (the one holding "
              "mimic-cxr-2.0.0-metadata.csv.gz and files/)")
    if p["split"].get("official", False) and source != "mimic_cxr":
        _fail("split.official", True, "only data.source=mimic_cxr has an official split; "
              "use false")
    for key, among in (("model_seed", "train.seeds"), ("text_input", "text.inputs")):
        chosen = p["explain"].get(key)
        if chosen is not None and chosen not in get(p, among):
            _fail(f"explain.{key}", chosen, f"use null or one of {among}={get(p, among)}")
    t = p["train"]
    warmup = t.get("warmup_epochs")
    warmup = RECIPES[t.get("recipe", "original")]["warmup_epochs"] if warmup is None else warmup
    if t["batch_size"] < 2 * t.get("nproc", 1):
        _fail("train.batch_size", t["batch_size"], f"the global batch must give each of the "
              f"train.nproc={t.get('nproc', 1)} processes at least 2 images: use "
              f"{2 * t.get('nproc', 1)} or more")
    if warmup >= t["epochs"]:
        _fail("train.warmup_epochs", t.get("warmup_epochs"), f"use fewer warmup epochs than "
              f"train.epochs={t['epochs']} (train.recipe={t.get('recipe', 'original')} "
              f"warms up {warmup}): the schedule needs an epoch after it")
    explained_arm = p["explain"]["variant"]
    if explained_arm not in arms(p, [variant_of(explained_arm)]):
        _fail("explain.variant", explained_arm, "its encoder alias is not one of text.encoders ("
              + (", ".join(aliases(p, "text")[1:]) or "none declared") + ")")
    _family(p)
    _tuning(p)
    for section in ("demo_encoder", "demo_image_encoder"):
        hidden, heads = p.get(section, {}).get("hidden_size"), p.get(section, {}).get("heads")
        if hidden and heads and hidden % heads:
            _fail(f"{section}.heads", heads, f"use a divisor of {section}.hidden_size={hidden}")
    d = p.get("demo_image_encoder", {})
    if d.get("image_size", 64) % d.get("patch_size", 8):
        _fail("demo_image_encoder.patch_size", d.get("patch_size"),
              f"use a divisor of demo_image_encoder.image_size={d.get('image_size')}")


def _family(p: dict) -> None:
    """The declared family names text inputs the pipeline trains, each comparison once, and the
    bootstrap gives the descriptive intervals at 1 - alpha."""
    c, inputs = p["compare"], get(p, "text.inputs")
    declared = pairs(p)
    for key, names in (("primary", [c["primary"]]), ("secondary", c["secondary"]),
                       ("encoders", c.get("encoders", fresh(Compare.encoders)))):
        for name in names:
            comparison_ = Comparison.parse(name)
            if (comparison_.a, comparison_.b) not in declared:
                _fail(f"compare.{key}", c[key], f"{name} names an arm on an encoder this study "
                      "does not train: declare its alias in text.encoders or "
                      "frozen_image.encoders, or leave the comparison out (this study's pairs: "
                      + ", ".join(f"{a}-{b}" for a, b in declared) + ")")
            if Comparison.parse(name).text_input not in inputs:
                _fail(f"compare.{key}", c[key], f"{name} names a text input that is not one of "
                      f"text.inputs={inputs}; declare comparisons of the inputs trained (e.g. "
                      f"-S compare.primary=fusion-image/{inputs[0]} -S 'compare.secondary=[]' "
                      "-S 'compare.encoders=[]')")
    members = [Comparison.parse(name).name for name in [c["primary"], *c["secondary"],
                                                         *c.get("encoders", Compare.encoders)]]
    if c.get("placebo", True):
        placebo = Comparison(*PLACEBO, Comparison.parse(c["primary"]).text_input).name
        members.insert(1, placebo)
        if placebo in members[2:]:
            _fail("compare.secondary", c["secondary"], f"compare.placebo already tests "
                  f"{placebo} right after the primary; leave it out of the secondaries")
    if len(set(members)) != len(members):
        _fail("compare.secondary", c["secondary"],
              f"the family names a comparison twice: {members}")
    # statistics.order_rank: a 1 - alpha percentile interval needs 2 / alpha - 1 resamples
    needed = math.ceil(2 / c["alpha"])
    if c["bootstrap"] < needed:
        _fail("compare.bootstrap", c["bootstrap"], f"too few resamples for the "
              f"{1 - c['alpha']:.0%} intervals at compare.alpha={c['alpha']}; use {needed} "
              "or more")


def _tuning(p: dict) -> None:
    """Each candidate, applied to the rest of params.yaml, passes every rule, and every arm
    tries as many settings: a bad grid stops before the first candidate trains, not hours
    later."""
    tune = p.get("tune", {})
    shared = not isinstance(tune.get("candidates", ()), dict)
    count = len(candidates(p, NETWORKS[0]))
    if len(tune.get("tfidf", ())) != count:
        _fail("tune.tfidf", tune.get("tfidf"), f"give the TF-IDF baseline as many candidates as "
              f"tune.candidates gives each network arm ({count}): an equal budget")
    for arm, row in VARIANTS.items():
        read = []  # what each candidate changes of what the arm reads
        for k, setting in enumerate(candidates(p, arm)):
            where = "tune.tfidf" if row.trained_once else "tune.candidates"
            which = f"candidate {k}" if shared or row.trained_once else f"candidate {k} of {arm}"
            try:
                _check({**applied(p, setting), "tune": {"candidates": [], "tfidf": []}})
            except PipelineError as err:
                why = re.sub(r" \(set it in params\.yaml or with .*\)\.$", "", str(err))
                raise PipelineError(f"{where}: {which} ({spelled(setting)}) is refused: {why}; "
                                    f"change it in {where}.") from None
            read.append({key: value for key, value in setting.items()
                         if (row.cnn or key not in IMAGE_ONLY)
                         and (row.reads_report or key not in REPORT_ONLY)})
            if read[-1] in read[:-1]:
                raise PipelineError(
                    f"tune.candidates: {which} trains {arm} as candidate "
                    f"{read.index(read[-1])} does ({spelled(read[-1])}: the rest of it is "
                    f"not read by {arm}): {arm} would try fewer settings than the other arms. "
                    "Give each arm its own list, the same number each (a mapping of arm to "
                    "list).")


def candidates(p: dict | Params, arm: str) -> list[dict]:
    """The settings `arm` tries (tune.candidates; the TF-IDF baseline's: tune.tfidf): [] when
    no grid is declared."""
    tune = p.get("tune", {}) if isinstance(p, dict) else as_dict(p)["tune"]
    arm = variant_of(arm)  # an arm on another encoder tries its variant's settings
    if VARIANTS[arm].trained_once:
        return list(tune.get("tfidf", ()))
    grid = tune.get("candidates", ())
    return list(grid.get(arm, ()) if isinstance(grid, dict) else grid)


def applied(p: dict, setting: dict) -> dict:
    """params.yaml's dict with a candidate's options set."""
    out = {section: dict(values or {}) for section, values in p.items()}
    for dotted, value in setting.items():
        section, key = dotted.split(".")
        out[section][key] = value
    return out


def with_setting(p: Params, setting: dict) -> Params:
    """The Params a candidate (or the chosen setting) trains with."""
    return built(applied(as_dict(p), setting)) if setting else p


def defaults() -> dict:
    """The described defaults, as params.yaml would hold them."""
    return {section: {f.name: fresh(f.default)
                      for f in fields(described) if f.default is not MISSING}
            for section, described in SECTIONS.items()}


def load(path: str | Path = "params.yaml") -> Params:
    """params.yaml, checked and resolved, as the stages read it."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run the stages from the project's root folder.")
    with open(path) as f:
        return built(resolve(validate(yaml.safe_load(f))))


def built(p: dict) -> Params:
    """The Params of a parameters dict (params.yaml's, or a model's params.json): each option
    its value, or its default where an older file lacks an optional one. Keys that no option
    names (params.json's record of the run) are left out."""
    def value(f, given: dict):
        if f.name in given:
            return given[f.name]
        return fresh(f.default)
    return Params(**{section: described(**{f.name: value(f, p.get(section) or {})
                                            for f in fields(described)})
                     for section, described in SECTIONS.items()})


def as_dict(p: Params) -> dict:
    """The parameters as params.yaml holds them (sections of options)."""
    return asdict(p)


def resolve(p: dict) -> dict:
    """The options whose value follows another: image.size `auto` becomes model.backbone's
    default input side (timm's pretrained config of its tag), so that every stage, and the
    params.json saved beside a model, reads a number."""
    if p["image"]["size"] != "auto":
        return p
    return {**p, "image": {**p["image"], "size": default_input_size(p["model"]["backbone"])}}


def recipe(t: Train, pretrained: bool | str) -> dict:
    """The training settings a run uses: each of train.optimizer, weight_decay, schedule,
    warmup_epochs and augment as set, or train.recipe's where null; lr_backbone as set, or the
    recipe's share of train.lr when the CNN starts from pretrained weights (None: train.lr)."""
    chosen = RECIPES[t.recipe]
    out = {key: chosen[key] if getattr(t, key) is None else getattr(t, key)
           for key in ("optimizer", "weight_decay", "schedule", "warmup_epochs", "augment")}
    ratio = chosen["backbone_lr_ratio"]
    out["lr_backbone"] = (t.lr_backbone if t.lr_backbone is not None else
                          t.lr * ratio if ratio and pretrained else None)
    return out


def unknown_input(text_input: str, p: Params) -> str:
    return (f"text input {text_input!r} is not one of text.inputs={p.text.inputs}: add it "
            "to text.inputs (params.yaml, or `dvc exp run -S 'text.inputs=[...]'`).")


def spelled(value) -> str:
    """A value as params.yaml spells it, YAML's own spelling: null, true, false, numbers, a list
    in brackets, a string bare unless YAML would read it otherwise (then quoted)."""
    value = fresh(value)
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return dumped.removesuffix("...\n").strip()


def describe() -> str:
    """Every option with its default and meaning, section by section."""
    lines = []
    for section, described in SECTIONS.items():
        lines.append(f"{section}:")
        for f in fields(described):
            lines.append(f"  {f.name}: {spelled(f.default)}  # {f.metadata['doc']}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Every option, its default and meaning (params.yaml itself: cxrfusion/params_yaml.py)."""
    if argv:
        sys.exit("usage: python -m cxrfusion.params (params.yaml: python -m "
                 "cxrfusion.params_yaml [PATH])")
    sys.stdout.write(describe() + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
