"""Where every file of the pipeline lives and what is inside it: the one home of file formats.

CSV contract written by `prepare` and read by every later stage:
  studies.csv  one row per study:  uid, label, split, n_images, views, mesh, and one column
               per report field that a text input names (findings, impression, indication,
               ...; "" when the report has none) (+ patient, when the raw data names
               patients: mimic_cxr)
  images.csv   one row per image:  uid, filename, view, label, split
               (filename is relative to data/raw/images/images_normalized; may hold folders)
HDF5 caches:
  text/<input>.h5  one per text input (e.g. text/findings+impression.h5): `uids` (int64, N)
               and `vectors` (float32, N x D) in the same row order, plus attributes that say
               how the vectors were made (encoder, pooling, casing, ...)
  images.h5    `filenames` (str, N) and `images` (uint8, N x S x S, one image per chunk);
               `skipped` (str): the images of images.csv left out as unreadable (image.skip_bad);
               attributes `size` (S) and `fit` (pad | crop | stretch: how each X-ray was made
               square, cxrfusion/imaging.py), which readers compare with theirs
  images/<alias>.h5  one per frozen image encoder (frozen_image.encoders): `filenames` (str, N)
               and `vectors` (float32, N x D), one an image of images.csv that cache_images did
               not skip, plus attributes that say how they were made (model, revision, pooling,
               size, fit, fingerprint: cxrfusion/image_encoder.py's `reading`)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cxrfusion import params
from cxrfusion.common import PipelineError, atomic_path
from cxrfusion.params import Params

RAW = Path("data/raw")
REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
IMAGES_SUBDIR = Path("images/images_normalized")  # the Kaggle layout

PREPARED = Path("data/prepared")
STUDIES = PREPARED / "studies.csv"
IMAGES = PREPARED / "images.csv"
PREPARED_COUNTS = PREPARED / "counts.json"  # what prepare read, dropped and kept

TEXT_DIR = Path("features/text")  # text/<input>.h5: one cache per text input
IMAGES_H5 = Path("features/images.h5")
FROZEN_DIR = Path("features/images")  # images/<alias>.h5: one cache a frozen image encoder
IMAGES_COUNTS = Path("features/images_counts.json")

SPLITS = ("train", "val", "test")  # the values of the `split` column
STUDY_COLUMNS = ["uid", "label", "split", "n_images", "views", "mesh"]  # + the report fields
IMAGE_COLUMNS = ["uid", "filename", "view", "label", "split"]
MODELS, METRICS_FOLDER = Path("models"), Path("metrics")
DEMO_IMAGE_ENCODER = MODELS / "demo_image_encoder"  # the demo's frozen ViT (frozen_image.encoders)
# What `evaluate` writes, one file a run in each, by kind: a folder of JSON is what `dvc metrics`
# lists, a folder of CSV what `dvc plots` draws, file by file
TEST_METRICS = METRICS_FOLDER / "test"         # <run>.json: thresholds, test metrics, calibration
PREDICTIONS = METRICS_FOLDER / "predictions"   # <run>.csv: each test image's probability
VALIDATION = METRICS_FOLDER / "validation"     # <run>.csv: each validation image's probability
CURVES = METRICS_FOLDER / "curves"             # roc/, pr/, confusion/<run>.csv
TRAIN_LOGS = METRICS_FOLDER / "train"          # <run>/: DVCLive's per-epoch metrics (`train`)
TUNING = "tuning"  # models/tuning/<arm>/candidate-<k>, metrics/tuning/<arm>/ (`tune`)


def text_cache(text_input: str, shuffled: bool = False, alias: str | None = None) -> Path:
    """The report vectors of one text input, e.g. features/text/findings+impression.h5, or
    the placebo's, each study given another's (features/text/findings+impression.shuffled.h5);
    another text encoder's (text.encoders): features/text/findings+impression@<alias>.h5."""
    return TEXT_DIR / f"{params.arm(text_input, alias)}{'.shuffled' if shuffled else ''}.h5"


@dataclass(frozen=True)
class Run:
    """One trained model: an arm (a variant, on one encoder: fusion, fusion@biobert_large,
    image_frozen@demo_vit), trained with one seed on one text input (none for the image model,
    which reads no report; no seed for an arm trained once, the TF-IDF baseline). Its files are
    named by its path, e.g. fusion/findings+impression/seed-0, image/seed-0 and
    tfidf/indication: models/<path>/, metrics/test/<path>.json."""
    variant: str
    seed: int | None
    text_input: str | None = None
    candidate: int | None = None  # a candidate of tune.candidates, trained by stage tune_<arm>

    @classmethod
    def of(cls, variant: str, seed: int, text_input: str | None) -> "Run":
        """The run of `variant` and `seed` on `text_input`: the image model's, which reads no
        report, whatever the input; an arm trained once, whatever the seed."""
        row = params.row(variant)
        return cls(variant, None if row.trained_once else seed,
                   text_input if row.reads_report else None)

    @property
    def record(self) -> dict:
        """How params.json and test.json name the run."""
        return {"variant": self.variant, "seed": self.seed, "text_input": self.text_input,
                **({"candidate": self.candidate} if self.candidate is not None else {})}

    @property
    def text_alias(self) -> str | None:
        """The text.encoders alias whose vectors it reads (None: the default encoder's, or no
        report vectors)."""
        return params.alias_of(self.variant) if params.row(self.variant).encoder == "text" \
            else None

    @property
    def image_alias(self) -> str | None:
        """The frozen_image.encoders alias whose vectors it reads (a frozen arm's), else None."""
        return params.alias_of(self.variant) if params.row(self.variant).frozen_image else None

    @property
    def arm(self) -> str:
        """The model whatever the seed: fusion/findings+impression, image."""
        return f"{self.variant}/{self.text_input}" if self.text_input else self.variant

    @property
    def path(self) -> str:
        """fusion/findings+impression/seed-0; a candidate's: tuning/image/candidate-1; an arm
        trained once: tfidf/indication."""
        if self.candidate is not None:
            return f"{TUNING}/{self.arm}/candidate-{self.candidate}"
        return self.arm if self.seed is None else f"{self.arm}/seed-{self.seed}"

    @property
    def key(self) -> str:
        """Its key in DVC's stage name, train_<variant>@<key>: findings+impression-0 (in
        train_fusion@findings+impression-0), 0 (in train_image@0), indication (in
        train_tfidf@indication), demo_vit-indication (in train_fusion_frozen@demo_vit-indication,
        whose arm trains every seed in one stage), biobert_large-indication-0 (in
        train_fusion_by@biobert_large-indication-0: another text encoder's)."""
        seed = None if params.row(self.variant).seeds_together else self.seed
        keys = (params.alias_of(self.variant), self.text_input, seed)
        return "-".join(str(k) for k in keys if k is not None)

    @property
    def stage(self) -> str:
        """The DVC stage that trains it: train_fusion@indication-0 (for fusion's and its
        placebo's run: the placebo is trained with fusion), train_image@0; another text
        encoder's, train_<arm>_by@<alias>-...; a candidate's, tune_<arm>, but an arm trained once
        tries its candidates in its train stage."""
        row = params.row(self.variant)
        arm = (row.trained_with or params.variant_of(self.variant)) + (
            "_by" if row.encoder == "text" and params.alias_of(self.variant) else "")
        if self.candidate is not None and not row.trained_once:  # tuned in its train stage
            key = "-".join(k for k in (params.alias_of(self.variant), self.text_input) if k)
            return f"tune_{arm}" + (f"@{key}" if key else "")
        return f"train_{arm}" + (f"@{self.key}" if self.key else "")

    @property
    def label(self) -> str:
        """How tables and figures name the model (all seeds): fusion · findings+impression."""
        return f"{self.variant} · {self.text_input}" if self.text_input else self.variant

    @property
    def models(self) -> Path:
        return MODELS / self.path

    @property
    def test_metrics(self) -> Path:
        return TEST_METRICS / f"{self.path}.json"

    @property
    def predictions(self) -> Path:
        return PREDICTIONS / f"{self.path}.csv"

    @property
    def validation(self) -> Path:
        """The validation images' predictions, from which its threshold was chosen."""
        return VALIDATION / f"{self.path}.csv"

    def curve(self, kind: str) -> Path:
        """roc | pr | confusion"""
        return CURVES / kind / f"{self.path}.csv"

    @property
    def train_log(self) -> Path:
        """DVCLive's folder: metrics/train/<path>; a candidate's, beside its arm's choice."""
        return (METRICS_FOLDER if self.candidate is not None else TRAIN_LOGS) / self.path

    @property
    def choice(self) -> Path:
        """Its arm's tuning choice (stage tune_<arm>): metrics/tuning/<arm>/choice.json."""
        return METRICS_FOLDER / TUNING / self.arm / "choice.json"

    @property
    def candidates(self) -> Path:
        """Its arm's candidates' weights: models/tuning/<arm>/candidate-<k>."""
        return MODELS / TUNING / self.arm


# --- the runs the parameters ask for -----------------------------------------------------------

def runs(p: Params, variants=params.VARIANTS) -> list[Run]:
    """Every model the parameters ask for: the image model once per seed, fusion and text once
    per text input and seed, the TF-IDF baseline once per text input (ordered variant, input,
    seed)."""
    t = p.train.seeds
    return list(dict.fromkeys(Run.of(v, s, i) for v in params.arms(p, variants)
                              for i in p.text.inputs
                              for s in t))  # the image model once, not once per input


def runs_of(variant: str, text_input: str | None, seeds) -> list[Run]:
    """The runs of one model on one text input: one per seed, or the one of an arm trained
    once."""
    return list(dict.fromkeys(Run.of(variant, s, text_input) for s in seeds))


def run_of(argv: list[str], p: Params) -> Run:
    """The run a stage's arguments name: `<arm> <seed> [<text input>]`, or `<arm> <text
    input>` for an arm trained once, checked against the parameters (a seed not in
    train.seeds, a text input not in text.inputs or an encoder alias not declared would train a
    model no comparison reads); an arm is a variant, or <variant>@<alias> (params.arms)."""
    names = params.VARIANTS
    blind = params.spoken(v for v, d in names.items() if not d.reads_report)  # image
    reading = params.spoken(v for v, d in names.items()
                            if d.reads_report and not d.trained_once)  # fusion, text, ...
    once = params.spoken(v for v, d in names.items() if d.trained_once)  # tfidf
    usage = (f"arguments: <{'|'.join(names)}> <seed> [<text input>, for {reading}], or "
             f"{once} <text input> (trained once, no seed)")
    if len(argv) not in (2, 3):
        raise PipelineError(f"{usage}; got {argv}")
    variant = argv[0]
    if params.variant_of(variant) not in names:
        raise PipelineError(f"variant={variant!r} is not allowed: use one of {', '.join(names)}")
    if variant not in params.arms(p, [params.variant_of(variant)]):
        kind = params.row(variant).encoder
        where = {"text": "text.encoders", "image": "frozen_image.encoders"}.get(kind)
        raise PipelineError(f"{variant!r} is not an arm of this study: " + (
            f"its encoder must be an alias of {where} "
            f"({', '.join(params.aliases(p, kind)[kind == 'text':]) or 'none declared'})"
            if where else f"{params.variant_of(variant)} reads no encoder alias"))
    row = params.row(variant)
    if row.trained_once:
        if len(argv) != 2:
            raise PipelineError(f"{usage}; got {argv}")
        if argv[1] not in p.text.inputs:
            raise PipelineError(params.unknown_input(argv[1], p))
        return Run(variant, None, argv[1])
    if not argv[1].isdigit() or int(argv[1]) not in p.train.seeds:
        raise PipelineError(f"seed {argv[1]!r} is not one of train.seeds={p.train.seeds}: "
                            "add it to train.seeds (params.yaml, or `dvc exp run -S "
                            "'train.seeds=[...]'`) and let `dvc repro` run it.")
    text_input = argv[2] if len(argv) == 3 else None
    if row.reads_report != (text_input is not None):
        raise PipelineError(f"{usage}: a model that reads no report ({blind}) takes no text "
                            f"input; {reading} need one; got {argv}")
    if text_input is not None and text_input not in p.text.inputs:
        raise PipelineError(params.unknown_input(text_input, p))
    return Run(variant, int(argv[1]), text_input)


def network_runs(argv: list[str], p: Params) -> list[Run]:
    """The runs the arguments of stage train or tune name, `<variant>[,<variant>...] <seed>
    [<text input>]` (several variants: one process trains them in turn), each checked by
    run_of; the seed `all`: every seed of train.seeds in turn (an arm whose row trains its
    seeds together). An arm trained once is refused: it is no network, its own stage fits it."""
    variants, rest = (argv[0].split(","), argv[1:]) if argv else ([None], [])
    each = ([[str(s), *rest[1:]] for s in p.train.seeds] if rest[:1] == ["all"] else [rest])
    runs = [run_of([variant, *args] if variant else argv, p)
            for variant in variants for args in each]
    once = [run.variant for run in runs if params.row(run.variant).trained_once]
    if once:
        raise PipelineError(f"{once[0]} is not a network: stage train_{once[0]} fits and tunes "
                            f"it (`python -m stages.train_{once[0]} <text input>`).")
    return runs


def record(p: Params, run: Run) -> dict:
    """What models/<run>/params.json records: the parameters the run was trained with, its seed
    as train.seed, its text input as text.input and text.fields (a model that reads a report)
    and the run itself. Code takes a run's own values from the Run; this is their record."""
    recorded = params.as_dict(p)
    if run.text_input:
        row, alias = params.row(run.variant), run.text_alias
        recorded["text"] = {**params.as_dict(params.with_text(p, alias))["text"],
                            "input": run.text_input,
                            "fields": params.fields_of(run.text_input),
                            "vectors": None if row.trained_once  # it reads the words
                            else str(text_cache(run.text_input, row.shuffled, alias)),
                            **({"encoder": alias} if alias else {})}
    recorded["train"] = {**recorded["train"], **params.recipe(p.train, p.image.pretrained),
                         "seed": run.seed}  # the recipe's values where the options were null
    recorded["run"] = run.record
    return recorded


def load_csv(path: Path, hint: str, **read_args) -> pd.DataFrame:
    """A CSV from outside the pipeline (raw data, `predict --csv`), every column as text. A file
    that is not readable CSV (empty, not UTF-8, ragged rows) stops the stage with its name and
    `hint`, what to do about it."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **read_args)
    except (OSError, ValueError, EOFError) as err:
        # UnicodeDecodeError, EmptyDataError, ParserError
        raise PipelineError(f"{path}: cannot be read as CSV ({type(err).__name__}: "
                            f"{str(err).strip()}); {hint}") from None


def read_prepared(fields: list[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The studies and images tables written by `prepare` (text stays text, never NaN);
    `fields`: the report fields the caller reads, which studies.csv must hold."""
    for path in (STUDIES, IMAGES):
        if not path.exists():
            raise PipelineError(f"{path} not found: run `dvc repro prepare` first.")
    header = pd.read_csv(STUDIES, nrows=0).columns
    missing = [f for f in fields if f not in header]
    if missing:
        raise PipelineError(f"{STUDIES} has no report field {', '.join(missing)}: it was "
                            "prepared for other text.inputs; rerun `dvc repro prepare`.")
    text = {c: str for c in header if c not in STUDY_COLUMNS and c != "patient"}
    studies = pd.read_csv(STUDIES, keep_default_na=False, dtype={**text, "mesh": str})
    images = pd.read_csv(IMAGES, keep_default_na=False)
    return studies, images


# --- text cache -------------------------------------------------------------------------------

def write_text_cache(path, uids, vectors, attrs: dict, donors=None) -> None:
    """One vector a study; `donors`: the placebo's, the uid whose report each study's vector
    is (shuffle_reports)."""
    uids = np.asarray(uids, dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(uids) != len(vectors) or (donors is not None and len(donors) != len(uids)):
        raise ValueError("one vector (and donor) per uid")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("uids", data=uids)
        f.create_dataset("vectors", data=vectors)
        if donors is not None:
            f.create_dataset("donors", data=np.asarray(donors, dtype=np.int64))
        for key, value in attrs.items():
            f.attrs[key] = value


def text_cache_attrs(text: dict, fields: list[str]) -> dict:
    """What the vectors of a text input depend on (params `text`, and the input's report
    `fields`); readers compare these with theirs.

    `lowercase` is text.lowercase as asked (auto, true, false); `embed_text` adds `lowercased`,
    what it resolved to, and puts the same in the encoder's fingerprint (`..._cased`); `pooling`
    is text.pooling as asked, and `embed_text` adds `reading`, what it resolved to (e.g. "last",
    or a sentence-transformers folder's "mean, then dense 256 tanh, then normalize")."""
    lowercase = text.lowercase
    if isinstance(lowercase, bool):  # spelled as in params.yaml: one type whatever was asked
        lowercase = "true" if lowercase else "false"
    return {"model": text.model, "pooling": text.pooling, "max_length": text.max_length,
            "fields": ",".join(fields), "lowercase": lowercase, "prompt": text.prompt or "",
            "trust_remote_code": bool(text.trust_remote_code)}


def read_text_cache(path, expect: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """uids, vectors and attributes; refuses a cache whose attributes differ from `expect`."""
    with _checked(path, "embed_text", expect) as (f, attrs):
        return f["uids"][:], f["vectors"][:], attrs


def read_text_cache_attrs(path) -> dict:
    """Only the attributes of a text cache (how its vectors were made): no vectors read."""
    with h5py.File(path, "r") as f:
        return {k: _plain(v) for k, v in f.attrs.items()}


def frozen_cache(alias: str) -> Path:
    """A frozen image encoder's vectors, one an image: features/images/<alias>.h5."""
    return FROZEN_DIR / f"{alias}.h5"


def write_frozen_cache(path, filenames, vectors, attrs: dict) -> None:
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(filenames) != len(vectors):
        raise ValueError("one vector per image")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("filenames", data=np.array(list(filenames), dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("vectors", data=vectors)
        for key, value in {**attrs, "dim": vectors.shape[1]}.items():
            f.attrs[key] = value


def read_frozen_cache(path, expect: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """filenames, vectors and attributes of a frozen encoder's cache; refuses one whose
    attributes differ from `expect` (a model's recorded fingerprint, for one)."""
    with _checked(path, "embed_images", expect) as (f, attrs):
        return f["filenames"].asstr()[:], f["vectors"][:], attrs


def read_frozen_cache_attrs(path) -> dict:
    with _checked(path, "embed_images", None) as (_, attrs):
        return attrs


# --- image cache ------------------------------------------------------------------------------

def create_image_cache(f: h5py.File, n: int, size: int, fit: str) -> h5py.Dataset:
    """The empty `images` dataset of an image cache, and the attributes readers check: images
    fitted another way show the heart at another width, so a reader expecting another fit must
    refuse them as it refuses another size."""
    f.attrs["size"] = size
    f.attrs["fit"] = fit
    # one image a chunk: a reader can fetch any image alone (streaming when RAM is short)
    return f.create_dataset("images", shape=(n, size, size), dtype=np.uint8,
                            chunks=(1, size, size), maxshape=(None, size, size))


def read_image_cache(path, expect: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """filenames and all images in memory (uint8, N x S x S)."""
    with _checked(path, "cache_images", expect) as (f, _):
        return f["filenames"].asstr()[:], f["images"][:]


def read_image_rows(path, rows: np.ndarray, expect: dict | None = None) -> np.ndarray:
    """Only the images at `rows` of an image cache, in that order (uint8, len(rows) x S x S):
    one array, no copy of the whole cache. Runs of consecutive rows are read as one slice
    (h5py's fancy selection of scattered rows is ~30x slower than slices)."""
    rows = np.asarray(rows, dtype=np.int64)
    with _checked(path, "cache_images", expect) as (f, _):
        images = f["images"]
        out = np.empty((len(rows), *images.shape[1:]), dtype=np.uint8)
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1  # where a run of consecutive rows ends
        for run in np.split(np.arange(len(wanted)), breaks):
            if len(run):
                out[order[run]] = images[wanted[run[0]]:wanted[run[-1]] + 1]
        return out


def read_image_filenames(path, expect: dict | None = None) -> np.ndarray:
    """Only the index of an image cache (which images it holds, in row order): no pixels."""
    with _checked(path, "cache_images", expect) as (f, _):
        return f["filenames"].asstr()[:]


def read_skipped_images(path) -> np.ndarray:
    """The images `cache_images` left out as unreadable (image.skip_bad)."""
    with h5py.File(path, "r") as f:
        return f["skipped"].asstr()[:] if "skipped" in f else np.array([], dtype=str)


def read_image_counts(path) -> dict:
    """What `cache_images` cached and skipped (images_counts.json: `cached`, `skipped`,
    `skipped_images`), for readers that must not depend on the pixels (the text variant)."""
    import json

    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run `dvc repro cache_images` first.")
    report = json.loads(Path(path).read_text())
    if "skipped_images" not in report:
        raise PipelineError(f"{path} lists no skipped_images: it was written by an older "
                            "cache_images; rebuild it with `dvc repro -f cache_images`.")
    return report


@contextlib.contextmanager
def _checked(path, stage: str, expect: dict | None):
    """A cache opened for reading, (file, its attributes): it must exist (else: the stage that
    writes it) and its attributes must be `expect`'s (_check_attrs)."""
    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run `dvc repro {stage}` first.")
    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        _check_attrs(path, attrs, expect or {})
        yield f, attrs


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_attrs(path, attrs: dict, expect: dict) -> None:
    wrong = {k: (attrs.get(k), v) for k, v in expect.items() if attrs.get(k) != _plain(v)}
    if wrong:
        detail = "; ".join(f"{k}: cache has {have!r}, parameters say {want!r}"
                           for k, (have, want) in wrong.items())
        raise PipelineError(f"{path} was made with other parameters ({detail}); "
                            "rebuild it with `dvc repro`.")
