"""Every parameter of params.yaml, described once: its section, default, rule and meaning.

Each section is a dataclass; each field is an `option(default, rule, doc)`. `validate` checks a
parameters dict against these descriptions before any work starts, and a bad value stops the
stage with the parameter's name, its value and what is allowed. `python -m cxrfusion.params`
prints every option with its default. The defaults are the offline demo's (params.yaml holds
the same values; a test keeps the two in step).
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import yaml

from cxrfusion.common import PipelineError
from cxrfusion.formats import Run

SOURCES = ("demo", "kaggle", "openi", "local", "mimic_cxr")
POOLINGS = ("cls", "mean")
VARIANTS = ("fusion", "image", "text")
EXPLAINED = ("fusion", "image")  # the variants with an image branch for Grad-CAM to explain
SELECTIONS = ("best_val_loss", "last")
FITS = ("pad", "crop", "stretch")  # image.fit: how cxrfusion/imaging.py makes an X-ray square
TEXT_FIELDS = ("indication", "comparison", "findings", "impression")
# model.fusion: how the head joins image and report (cxrfusion/model.py)
FUSIONS = ("concat", "projector", "gated")
AUGMENTS = ("none", "affine", "affine+jitter")  # train.augment (cxrfusion/augment.py)
# evaluate.threshold: the rules choose_threshold applies on validation (cxrfusion/metrics.py)
THRESHOLD_RULES = ("youden", "max_f1")
SUBGROUPS = ("view", "images", "words")  # report.subgroups (cxrfusion/subgroups.py)
MIN_IMAGE_SIZE = 32  # EfficientNet downsamples by 32: smaller inputs leave no feature map
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


# --- the comparisons compare.primary and compare.secondary name (cxrfusion/inference.py) -----

PAIRS = (("fusion", "image"), ("fusion", "text"), ("text", "image"))  # first minus second


@dataclass(frozen=True)
class Comparison:
    """One AUROC difference: models a - b on one text input's runs."""
    a: str
    b: str
    text_input: str

    @classmethod
    def parse(cls, name: str) -> "Comparison":
        """fusion-image/indication -> Comparison("fusion", "image", "indication")."""
        pair, sep, text_input = str(name).partition("/")
        a, dash, b = pair.partition("-")
        if not (sep and dash and text_input) or (a, b) not in PAIRS:
            allowed = ", ".join(f"{x}-{y}" for x, y in PAIRS)
            raise ValueError(f"{name!r} is not a comparison: write <pair>/<text input>, the pair "
                             f"one of {allowed} (e.g. fusion-image/indication)")
        return cls(a, b, text_input)

    @property
    def name(self) -> str:
        return f"{self.a}-{self.b}/{self.text_input}"

    @property
    def key(self) -> str:
        """The key of its pair in comparison.json's differences[text input]."""
        return f"{self.a}_minus_{self.b}"

    @property
    def label(self) -> str:
        return f"{self.a} − {self.b}"


def family(primary: str, secondary: list[str]) -> dict[str, str]:
    """The declared family: comparison name -> role (primary | secondary), primary first."""
    names = [Comparison.parse(primary).name] + [Comparison.parse(s).name for s in secondary]
    if len(set(names)) != len(names):
        raise ValueError(f"the family names a comparison twice: {names}")
    return {name: "primary" if i == 0 else "secondary" for i, name in enumerate(names)}


def smallest_adjusted_p(resamples: int, family_size: int) -> float:
    """The smallest Holm-adjusted p a family can reach: family size x bootstrap_p's floor."""
    return min(1.0, family_size * 2 / (resamples + 1))


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


def option(default, rule, doc: str, required: bool = True):
    """A parameter: its default (the demo's), the rule its value must pass, what it means.
    required=False: an older params.yaml may lack it, and then the default holds."""
    return field(default=default, metadata={"rule": rule, "doc": doc, "required": required})


# --- the sections ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Data:
    source: str = option("demo", one_of(*SOURCES), "where data/raw comes from: demo (synthetic, "
                         "offline) | kaggle | openi | local | mimic_cxr (a PhysioNet folder)")
    local_dir: str | None = option(None, any_value, "for local: a folder in the Kaggle layout; "
                                   "for mimic_cxr: the MIMIC-CXR-JPG folder")
    openi_url: str = option("https://openi.nlm.nih.gov/imgs/collections", text,
                            "for openi: where NLMCXR_png.tgz and NLMCXR_reports.tgz are")
    keep_unindexed: bool = option(False, switch, "keep MeSH 'No Indexing' studies as abnormal "
                                  "(the original); false drops them (never labelled)")


@dataclass(frozen=True)
class Demo:
    studies: int = option(500, positive_int, "synthetic studies (1 to 5 images each)")
    image_size: int = option(128, positive_int, "side of the generated PNGs, px")
    label_noise: float = option(0.03, in_range(0, 0.5, "use a fraction in [0, 0.5)"),
                                "fraction of studies whose label disagrees with image and report")
    seed: int = option(0, seed, "seed of the generator")


@dataclass(frozen=True)
class Split:
    test: float = option(0.2, fraction, "fraction of studies (patients) held out for the test")
    val: float = option(0.15, fraction, "fraction of the rest for model selection")
    seed: int = option(42, seed, "seed of the split")
    official: bool = option(False, switch, "use the dataset's official split (mimic_cxr only)",
                            required=False)
    min_studies: int = option(10, in_range(0, float("inf"), "use a whole number >= 0 (0: no "
                                           "minimum)", whole=True),
                              "prepare refuses a split with fewer studies")
    min_per_label: int = option(2, in_range(0, float("inf"), "use a whole number >= 0 (0: no "
                                            "minimum)", whole=True),
                                "prepare refuses a split with fewer studies of either label")


@dataclass(frozen=True)
class Text:
    model: str = option("models/demo_encoder", text, "hub id or local folder of the frozen "
                        "encoder (the real study: dmis-lab/biobert-base-cased-v1.1)")
    revision: str | None = option(None, any_value, "hub revision (commit) of `model`")
    inputs: tuple = option(("findings+impression", "indication"), text_inputs,
                           "the text inputs compared, each a report field set embedded once: "
                           "findings+impression (the original's) | indication (leak-free)")
    pooling: str = option("mean", one_of(*POOLINGS), "cls ([CLS], the original) | mean")
    lowercase: bool | str = option("auto", lowercase, "auto | true | false: lowercase reports "
                                   "before the encoder reads them (auto: as it was trained)")
    max_length: int = option(512, positive_int, "tokens; longer reports are truncated")
    batch_size: int = option(32, positive_int, "reports per forward pass")
    device: str = option("auto", device, "auto | cpu | cuda[:N]")
    nproc: int = option(1, positive_int, "processes (GPUs) sharing the work (torchrun)")


@dataclass(frozen=True)
class DemoEncoder:
    vocab_size: int = option(1000, positive_int, "WordPiece vocabulary of the tiny BERT")
    hidden_size: int = option(64, positive_int, "its width")
    layers: int = option(2, positive_int, "its layers")
    heads: int = option(2, positive_int, "its attention heads (divide hidden_size)")
    seed: int = option(0, seed, "seed of its random weights")


@dataclass(frozen=True)
class Image:
    size: int | str = option(48, image_side, "side of the cached images, px (the real study: "
                             "240), or auto: the default input of model.backbone's weights")
    fit: str = option("pad", one_of(*FITS), "how a non-square X-ray becomes square: pad "
                      "(letterbox) | crop (centre square) | stretch (the original)")
    skip_bad: bool = option(False, switch, "skip unreadable images instead of stopping")
    pretrained: bool | str = option(False, weights, "timm's ImageNet weights: true, false or "
                                    "the path of a weights file (the real study: true)")


@dataclass(frozen=True)
class Model:
    backbone: str = option("tinynet_e.in1k", text, "timm model name.tag (the tag pins the "
                           "ImageNet weights); the real study: efficientnet_b1.ra4_e3600_r240_in1k")
    hidden: int = option(256, positive_int, "units of the head's hidden layer")
    dropout: float = option(0.3, in_range(0, 1, "use a fraction in [0, 1)"), "head dropout")
    freeze_backbone: bool = option(False, switch, "train the head only, the CNN frozen whole")
    standardise_text: bool = option(True, switch, "standardise each report-vector dimension by "
                                    "the training studies' mean and sd (false: raw, the original)")
    fusion: str = option("concat", one_of(*FUSIONS), "concat (the original: features "
                         "concatenated into the MLP) | projector (each modality projected to "
                         "shared_dim, then concatenated) | gated (a per-study gate weighs the "
                         "two projected vectors)")
    shared_dim: int = option(256, positive_int, "width of the projectors (projector, gated; "
                             "the image and text models use the same)")


@dataclass(frozen=True)
class Train:
    epochs: int = option(3, positive_int, "epochs (the real study: 40)")
    lr: float = option(0.003, positive_number, "Adam learning rate (the original)")
    lr_backbone: float | None = option(None, optional(positive_number), "Adam learning rate "
                                       "of the CNN (null: train.lr, the original)")
    augment: str = option("none", one_of(*AUGMENTS), "random transforms of the training images "
                          "(never validation or test): none (the original) | affine | "
                          "affine+jitter (ranges: augment)")
    batch_size: int = option(32, positive_int, "global batch, images (the real study: 64)")
    seeds: tuple = option((0, 1, 2), seeds, "every variant is trained once per seed "
                          "(initialisation, order and dropout) on the same split")
    device: str = option("auto", device, "auto | cpu | cuda[:N]")
    amp: bool = option(True, switch, "bf16 autocast of the CNN on CUDA")
    compile: bool = option(False, switch, "torch.compile the model")
    deterministic: bool = option(False, switch, "deterministic GPU kernels (slower)")
    select: str = option("best_val_loss", one_of(*SELECTIONS), "which epoch's weights are kept")
    nproc: int = option(1, positive_int, "processes (one per GPU) launched with torchrun")
    in_memory_gb: float = option(16, in_range(0, float("inf"), "use a size in GB >= 0 (0 always "
                                              "streams)"),
                                 "image caches up to this size are held in memory, larger streamed")
    workers: int = option(4, in_range(0, 1025, "use a whole number of loader processes >= 0",
                                      whole=True),
                          "loader processes that read a streamed images.h5")


@dataclass(frozen=True)
class Augment:  # read when train.augment is not none; each drawn per image, per batch
    rotation: float = option(10.0, in_range(0, 180, "use degrees in [0, 180)"),
                             "degrees: uniform in [-rotation, +rotation]")
    translate: float = option(0.05, in_range(0, 0.5, "use a fraction of the side in [0, 0.5)"),
                              "shift, a fraction of the side: uniform in [-t, +t] each axis")
    scale: float = option(0.1, in_range(0, 1, "use a fraction in [0, 1)"),
                          "zoom factor: uniform in [1 - scale, 1 + scale]")
    flip: float = option(0.0, probability,
                         "probability of a horizontal flip (0: a flipped film puts the heart "
                         "on the right)")
    brightness: float = option(0.1, in_range(0, 1, "use a fraction in [0, 1)"),
                               "affine+jitter: offset uniform in [-b, +b] of the full range")
    contrast: float = option(0.1, in_range(0, 1, "use a fraction in [0, 1)"),
                             "affine+jitter: factor uniform in [1 - c, 1 + c] about the mean")


@dataclass(frozen=True)
class Evaluate:
    threshold: float | str = option("youden", operating_point, "probability of abnormal at or "
                                    "above which a study is called abnormal, or the rule that "
                                    "picks it on each model's validation predictions: youden | "
                                    "max_f1")
    specificity: float = option(0.9, fraction, "the specificity at which each run's test ROC is "
                                "read for sensitivity (threshold-free, linear between points)")


SECONDARY = ("fusion-image/findings+impression", "fusion-text/findings+impression",
             "text-image/findings+impression", "fusion-text/indication", "text-image/indication")


@dataclass(frozen=True)
class Compare:
    primary: str = option("fusion-image/indication", comparison, "the comparison the study "
                          "answers first: an AUROC difference <model>-<model>/<text input> "
                          "(first minus second); the indication cannot leak the label")
    secondary: list = option(SECONDARY, comparisons, "the rest of the declared family; with the "
                             "primary, Holm-adjusted together (cxrfusion/inference.py)")
    alpha: float = option(0.05, in_range(0.001, 0.5, "use a level in [0.001, 0.5)"),
                          "family-wise error rate; intervals hold at 1 - alpha, the equivalence "
                          "test's at 1 - 2 alpha")
    margin: float = option(0.05, in_range(0.001, 0.5, "use an AUROC difference in [0.001, 0.5)"),
                           "AUROC difference within which two models count as equivalent")
    bootstrap: int = option(2000, positive_int, "bootstrap resamples of every interval and "
                            "p-value (the smallest p is 2 / (bootstrap + 1))")
    seed: int = option(0, seed, "seed of the resamples")
    resample_validation: bool = option(True, switch, "redraw the validation studies in each "
                                       "round and choose every run's threshold again on them, "
                                       "so that intervals at a threshold include its "
                                       "uncertainty")


@dataclass(frozen=True)
class Explain:
    variant: str = option("fusion", one_of(*EXPLAINED), "the model explained (it needs a CNN)")
    per_outcome: int = option(3, positive_int, "heatmaps per outcome (TP, TN, FP, FN)")
    seed: int = option(0, seed, "which test studies of each outcome are shown")
    model_seed: int | None = option(None, optional(seed_rule), "the training seed of the model "
                                    "explained (null: the first of train.seeds)")
    text_input: str | None = option(None, optional(text), "the text input of the fusion model "
                                    "explained, and of the reports swapped (null: the first of "
                                    "text.inputs)")


@dataclass(frozen=True)
class Report:
    subgroups: list = option(SUBGROUPS, subgroup_kinds, "subgroups of the test studies on which "
                             "each model's AUROC and the family's differences are scored "
                             "(exploratory, outside the family): view (with a lateral view, or "
                             "without) | images (one, or several) | words (report length "
                             "tertiles of each text input, cut on the training studies)")
    min_per_label: int = option(5, positive_int, "a subgroup with fewer test studies of either "
                                "label is listed, not scored")


SECTIONS = {"data": Data, "demo": Demo, "split": Split, "text": Text, "demo_encoder": DemoEncoder,
            "image": Image, "model": Model, "train": Train, "augment": Augment,
            "evaluate": Evaluate, "compare": Compare, "explain": Explain, "report": Report}


def get(params: dict, dotted: str):
    value = params
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise PipelineError(f"parameter {dotted} is missing from params.yaml.")
        value = value[key]
    return value


def validate(p: dict) -> dict:
    """`p` itself, once every option passed its rule and the options that depend on each
    other agree; else a PipelineError that names the first bad one."""
    _replaced(p)
    for section, described in SECTIONS.items():
        for f in fields(described):
            name = f"{section}.{f.name}"
            if not f.metadata["required"] and f.name not in p.get(section, {}):
                continue
            f.metadata["rule"](name, get(p, name))
    _across(p)
    return p


def _replaced(p: dict) -> None:
    """An older params.yaml: name what replaced its options before asking for the new ones."""
    for old, new in (("text.fields", "text.inputs (a list of field sets, e.g. "
                      "[findings+impression, indication])"),
                     ("train.seed", "train.seeds (a list, e.g. [0, 1, 2])"),
                     ("evaluate.bootstrap", "compare.bootstrap"),
                     ("evaluate.seed", "compare.seed")):
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
    _family(p)
    hidden, heads = get(p, "demo_encoder.hidden_size"), get(p, "demo_encoder.heads")
    if hidden % heads:
        _fail("demo_encoder.heads", heads, f"use a divisor of demo_encoder.hidden_size={hidden}")


def _family(p: dict) -> None:
    """The declared family names text inputs the pipeline trains, each comparison once, and the
    bootstrap can reach alpha after Holm's adjustment."""
    c, inputs = p["compare"], get(p, "text.inputs")
    for key, names in (("primary", [c["primary"]]), ("secondary", c["secondary"])):
        for name in names:
            if Comparison.parse(name).text_input not in inputs:
                _fail(f"compare.{key}", c[key], f"{name} names a text input that is not one of "
                      f"text.inputs={inputs}; declare comparisons of the inputs trained (e.g. "
                      f"-S compare.primary=fusion-image/{inputs[0]} -S 'compare.secondary=[]')")
    try:
        members = family(c["primary"], c["secondary"])
    except ValueError as e:
        _fail("compare.secondary", c["secondary"], str(e))
    floor = smallest_adjusted_p(c["bootstrap"], len(members))
    if floor >= c["alpha"]:
        needed = math.ceil(2 * len(members) / c["alpha"])
        _fail("compare.bootstrap", c["bootstrap"], f"with a family of {len(members)} the "
              f"smallest Holm-adjusted p is {floor:.3g}, never below compare.alpha="
              f"{c['alpha']}; use {needed} or more")


def defaults() -> dict:
    """The described defaults, as params.yaml would hold them."""
    return {section: {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                      for f in fields(described) if f.default is not MISSING}
            for section, described in SECTIONS.items()}


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path} not found: run the stages from the project's root folder.")
    with open(path) as f:
        return resolve(validate(yaml.safe_load(f)))


def resolve(p: dict) -> dict:
    """The options whose value follows another: image.size `auto` becomes model.backbone's
    default input side (timm's pretrained config of its tag), so that every stage, and the
    params.json saved beside a model, reads a number."""
    if p["image"]["size"] != "auto":
        return p
    return {**p, "image": {**p["image"], "size": default_input_size(p["model"]["backbone"])}}


def default_input_size(name: str) -> int:
    """The side of the images timm's weights for `name` (name.tag) were trained at: what
    image.size `auto` caches (e.g. 240 for efficientnet_b1.ra4_e3600_r240_in1k)."""
    import timm  # here only: every stage reads its parameters, few need timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None:
        raise PipelineError(f"model.backbone={name!r} has no timm pretrained config, so "
                            "image.size=auto has no default input to follow: set image.size "
                            f"to a number of px, or name a timm model.tag ({weight_tags(name)}).")
    return int(cfg.input_size[-1])


def weight_tags(name: str) -> str:
    """The name.tag of every set of weights timm knows for `name`'s architecture, and where
    else a family's weights live (EfficientNet-B7's ImageNet weights are TensorFlow ports)."""
    import timm

    arch = name.split(".")[0]
    tags = timm.list_pretrained(arch + ".*") or timm.list_pretrained("tf_" + arch + ".*")
    return ", ".join(tags[:8]) or "none"


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        _fail("variant", variant, "use one of " + ", ".join(VARIANTS))
    return variant


def runs(p: dict, variants=VARIANTS) -> list[Run]:
    """Every model the parameters ask for: the image model once per seed, fusion and text once
    per text input and seed (ordered variant, input, seed)."""
    t = p["train"]["seeds"]
    return list(dict.fromkeys(Run.of(v, s, i) for v in variants for i in p["text"]["inputs"]
                              for s in t))  # the image model once, not once per input


def run_of(argv: list[str], p: dict) -> Run:
    """The run a stage's arguments name: `<variant> <seed> [<text input>]`, checked against
    the parameters (a seed not in train.seeds, or a text input not in text.inputs, would train
    a model no comparison reads)."""
    usage = "arguments: <fusion|image|text> <seed> [<text input>, for fusion and text]"
    if len(argv) not in (2, 3):
        raise PipelineError(f"{usage}; got {argv}")
    variant = check_variant(argv[0])
    if not argv[1].isdigit() or int(argv[1]) not in p["train"]["seeds"]:
        raise PipelineError(f"seed {argv[1]!r} is not one of train.seeds={p['train']['seeds']}: "
                            "add it to train.seeds (params.yaml, or `dvc exp run -S "
                            "'train.seeds=[...]'`) and let `dvc repro` run it.")
    text_input = argv[2] if len(argv) == 3 else None
    if (variant == "image") != (text_input is None):
        raise PipelineError(f"{usage}: the image model reads no report and takes no text input; "
                            f"fusion and text need one; got {argv}")
    if text_input is not None and text_input not in p["text"]["inputs"]:
        raise PipelineError(unknown_input(text_input, p))
    return Run(variant, int(argv[1]), text_input)


def unknown_input(text_input: str, p: dict) -> str:
    return (f"text input {text_input!r} is not one of text.inputs={p['text']['inputs']}: add it "
            "to text.inputs (params.yaml, or `dvc exp run -S 'text.inputs=[...]'`).")


def for_text_input(p: dict, text_input: str) -> dict:
    """The parameters as one text input's stages read them: text.input names it and
    text.fields lists its report fields."""
    return {**p, "text": {**p["text"], "input": text_input, "fields": fields_of(text_input)}}


def for_run(p: dict, run: Run) -> dict:
    """The parameters of one run, resolved: train.seed is its seed and, for a model that reads
    a report, text.input / text.fields its text input. Saved beside the model (params.json)."""
    resolved = for_text_input(p, run.text_input) if run.text_input else dict(p)
    resolved["train"] = {**p["train"], "seed": run.seed}
    resolved["run"] = run.record
    return resolved


def spelled(value) -> str:
    """A default as params.yaml spells it."""
    if isinstance(value, tuple):
        return "[" + ", ".join(map(spelled, value)) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def describe() -> str:
    """Every option with its default and meaning, section by section."""
    lines = []
    for section, described in SECTIONS.items():
        lines.append(f"{section}:")
        for f in fields(described):
            lines.append(f"  {f.name}: {spelled(f.default)}  # {f.metadata['doc']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(describe() + "\n")
