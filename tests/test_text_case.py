"""text.lowercase: whether the encoder reads reports cased (issue item 1).

BioBERT's hub repo (dmis-lab/biobert-base-cased-v1.1) holds config.json, vocab.txt and the
weights but no tokenizer_config.json, so transformers builds its BERT tokenizer with the default
do_lower_case=True and the cased model reads lowercased reports. The encoders here are built
offline in the same shape: a vocab.txt, random weights, no tokenizer_config.json.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfusion.common import PipelineError
from cxrfusion.text_encoder import (
    embed,
    encoder_fingerprint,
    fingerprint_casing,
    load_encoder,
    reads_lowercase,
    resolve_lowercase,
)

CPU = torch.device("cpu")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["heart", "size", "is", "normal", "the", "lungs", "are", "clear", "no", "effusion"]
LOWER = [chr(c) for c in range(ord("a"), ord("z") + 1)]
UNCASED = SPECIAL + [".", ","] + LOWER + ["##" + c for c in LOWER] + WORDS
CASED = UNCASED + [c.upper() for c in LOWER] + ["##" + c.upper() for c in LOWER] + \
    [w.capitalize() for w in WORDS]
REPORTS = ["Heart size is normal.", "heart size is normal."]  # they differ only in case


def bert_folder(folder: Path, vocab: list[str], tokenizer_config: dict | None = None) -> str:
    """A BERT as BioBERT's hub repo holds it: vocab.txt, config.json, weights; a
    tokenizer_config.json only when given."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=64)).save_pretrained(folder)
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert not (folder / "tokenizer.json").exists()
    return str(folder)


def vectors(name: str, lowercase="auto") -> tuple[np.ndarray, np.ndarray]:
    """The two REPORTS' vectors, each embedded alone (same shapes: comparable to the bit)."""
    tokenizer, model = load_encoder(name, None, CPU, lowercase)
    return tuple(embed([r], tokenizer, model, "mean", 64, 1, CPU, progress=False)[0]
                 for r in REPORTS)


@pytest.fixture(scope="module")
def cased(tmp_path_factory) -> str:
    return bert_folder(tmp_path_factory.mktemp("enc") / "cased_bert", CASED)


def test_cased_vocabulary_without_tokenizer_config_is_read_cased(cased, caplog):
    with caplog.at_level(logging.INFO, logger="cxrfusion.text_encoder"):
        upper, lower = vectors(cased)  # auto, the default
    assert not np.allclose(upper, lower, atol=1e-4)
    assert (f"text.lowercase=auto: {cased} has no tokenizer_config.json that sets do_lower_case "
            f"and its vocabulary is cased ({len(LOWER) * 2 + len(WORDS)} of {len(CASED) - 5} "
            "tokens hold capitals): reading reports cased") in caplog.text
    # lowercase=true: the case is gone before the encoder reads the report
    upper, lower = vectors(cased, lowercase=True)
    np.testing.assert_array_equal(upper, lower)


def test_uncased_vocabulary_without_tokenizer_config_is_read_lowercased(tmp_path):
    name = bert_folder(tmp_path / "uncased_bert", UNCASED)
    assert resolve_lowercase(name, None) == (
        True, f"{name} has no tokenizer_config.json that sets do_lower_case and its vocabulary "
              f"is uncased (0 of {len(UNCASED) - 5} tokens hold capitals)")
    upper, lower = vectors(name)
    np.testing.assert_array_equal(upper, lower)


@pytest.mark.parametrize("vocab, do_lower_case", [(CASED, True), (UNCASED, False)])
def test_tokenizer_config_do_lower_case_wins_under_auto(tmp_path, vocab, do_lower_case):
    name = bert_folder(tmp_path / "bert", vocab, {"do_lower_case": do_lower_case})
    tokenizer, _ = load_encoder(name, None, CPU)
    assert reads_lowercase(tokenizer) is do_lower_case
    assert resolve_lowercase(name, None)[1] == (f"{name}/tokenizer_config.json sets "
                                                f"do_lower_case={str(do_lower_case).lower()}")
    # an explicit text.lowercase wins over the file
    tokenizer, _ = load_encoder(name, None, CPU, not do_lower_case)
    assert reads_lowercase(tokenizer) is (not do_lower_case)


@pytest.mark.parametrize("lowercase", [True, False])
def test_tokenizer_json_normalizer_decides_without_tokenizer_config(tmp_path, lowercase):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    name = bert_folder(tmp_path / "bert", CASED)
    fast = Tokenizer(models.WordPiece({t: i for i, t in enumerate(CASED)}, unk_token="[UNK]"))
    fast.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    fast.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast.save(str(Path(name) / "tokenizer.json"))
    tokenizer, _ = load_encoder(name, None, CPU)
    assert reads_lowercase(tokenizer) is lowercase


def test_demo_encoder_has_a_tokenizer_config_and_stays_cased(tmp_path):
    from cxrfusion.demo_encoder import build

    folder = tmp_path / "demo_encoder"
    build(["The Heart is normal.", "the heart is normal."] * 5, folder, vocab_size=60,
          hidden_size=16, layers=1, heads=2, seed=0)
    assert json.loads((folder / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert resolve_lowercase(str(folder), None)[0] is False
    tokenizer, _ = load_encoder(str(folder), None, CPU)
    assert not reads_lowercase(tokenizer)


def test_fingerprint_names_the_resolved_casing(cased):
    as_is, lowered = (load_encoder(cased, None, CPU, lowercase) for lowercase in ("auto", True))
    read_cased = encoder_fingerprint(cased, as_is[1], as_is[0])
    read_lowered = encoder_fingerprint(cased, lowered[1], lowered[0])
    assert read_cased.startswith("sha256:") and read_cased.endswith("_cased")
    assert read_lowered.endswith("_lowercased")
    base = read_cased.removesuffix("_cased")
    assert fingerprint_casing(read_cased) == (base, False)
    assert fingerprint_casing(read_lowered) == (base, True)
    assert fingerprint_casing(base) == (base, None)  # recorded before the casing was


def test_text_cache_records_asked_and_resolved_casing(prepared):
    from cxrfusion.formats import read_text_cache, text_cache, text_cache_attrs
    from cxrfusion.params import fields_of
    from stages import demo_encoder, embed_text

    text_input = prepared.text.inputs[0]
    cache = text_cache(text_input)
    demo_encoder.demo_encoder(prepared)
    embed_text.embed_text(text_input, prepared)  # text.lowercase: auto, the default
    t, fields = prepared.text, fields_of(text_input)
    _, as_is, attrs = read_text_cache(cache, expect=text_cache_attrs(t, fields))
    assert (attrs["lowercase"], attrs["lowercased"]) == ("auto", False)
    assert attrs["fingerprint"].endswith("_cased")

    t.lowercase = True
    embed_text.embed_text(text_input, prepared)
    _, lowered, attrs = read_text_cache(cache, expect=text_cache_attrs(t, fields))
    assert (attrs["lowercase"], attrs["lowercased"]) == ("true", True)
    assert attrs["fingerprint"].endswith("_lowercased")
    assert not np.allclose(as_is, lowered, atol=1e-4)  # the demo reports hold capitals
    with pytest.raises(PipelineError, match=r"lowercase: cache has 'true', parameters say 'auto'"):
        read_text_cache(cache, expect=text_cache_attrs(replace(t, lowercase="auto"), fields))


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, None, "Auto"])
def test_bad_lowercase_parameter_is_refused(params, value):
    from cxrfusion.params import validate

    params.text.lowercase = value
    with pytest.raises(PipelineError, match=rf"parameter text.lowercase={value!r} is not "
                                            r"allowed: use auto, true or false"):
        validate(params)


@pytest.mark.parametrize("value", ["auto", True, False])
def test_lowercase_parameter_values(params, value):
    from cxrfusion.params import validate

    params.text.lowercase = value
    assert validate(params).text.lowercase == value


def _predictor(cased: str, folder: Path, lowercase, recorded: str):
    """A Predictor of a text model trained on vectors whose encoder fingerprint is `recorded`
    (only its text encoder is used)."""
    from cxrfusion.params import built
    from cxrfusion.predict import Predictor

    config = {"variant": "text", "text_dim": 16, "text_fingerprint": recorded}
    settings = built({"text": {"model": cased, "revision": None, "lowercase": lowercase}})
    return Predictor(None, config, settings, ["findings"], folder, CPU, 0.5, "test")


def test_predict_refuses_a_model_trained_on_another_casing(cased, tmp_path):
    tokenizer, model = load_encoder(cased, None, CPU)
    trained = encoder_fingerprint(cased, model, tokenizer)  # read cased under auto
    folder = tmp_path / "models" / "text"
    assert reads_lowercase(_predictor(cased, folder, "auto", trained).encoder()[0]) is False
    with pytest.raises(PipelineError) as err:
        _predictor(cased, folder, True, trained).encoder()
    message = str(err.value)
    assert f"the model in {folder} was trained on reports read cased" in message
    assert f"the text encoder {cased} now reads them lowercased" in message
    assert "text.lowercase=true" in message and "set text.lowercase: false there" in message
    assert "dvc repro" in message
    # a model saved before the fingerprint named the casing: unknown, so refused
    with pytest.raises(PipelineError, match="trained before the casing of its reports was "
                                            "recorded"):
        _predictor(cased, folder, "auto", fingerprint_casing(trained)[0]).encoder()


def _hub_cache(cache: Path, source: str, repo: str, absent: list[str]) -> None:
    """`source`'s files as the Hugging Face cache holds repo `repo` at main; `absent`: files the
    cache knows the repo lacks (what an online from_pretrained records)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(source, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name in absent:
        (root / ".no_exist" / commit).mkdir(parents=True, exist_ok=True)
        (root / ".no_exist" / commit / name).touch()


def test_hub_id_without_tokenizer_config_is_read_cased(cased, tmp_path, monkeypatch):
    """The hub path (hf_hub_download), offline, from a cache laid out as BioBERT's would be."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _hub_cache(tmp_path / "hub", cased, "test-org/cased-bert",
               ["tokenizer_config.json", "tokenizer.json"])
    lower, why = resolve_lowercase("test-org/cased-bert", None)
    assert lower is False and "its vocabulary is cased" in why
    tokenizer, model = load_encoder("test-org/cased-bert", None, CPU)
    assert not reads_lowercase(tokenizer)
    assert encoder_fingerprint("test-org/cased-bert", model, tokenizer).endswith("_cased")
    # offline, a file the cache neither holds nor knows to be absent: no guess
    _hub_cache(tmp_path / "hub", cased, "test-org/unknown-bert", [])
    with pytest.raises(PipelineError, match="the Hugging Face cache does not say"):
        resolve_lowercase("test-org/unknown-bert", None)
