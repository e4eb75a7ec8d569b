"""How reports become vectors for every kind of encoder (cxrfusion/text_encoder.py's Reading):
`last` on a decoder whichever side it pads, `cls` refused on one, `auto` on a
sentence-transformers folder, the prompt, the pad token's rule and remote code, each checked
against a hand computation on models built offline (tests/tiny_encoders.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_encoders import TEXTS, WIDTH, causal_lm, remote_code, sentence_transformers

from cxrfusion.common import PipelineError
from cxrfusion.text_encoder import embed, load_encoder, resolve_reading

CPU = torch.device("cpu")


def _alone(model, ids: list[int]) -> torch.Tensor:
    """The last layer's vectors of one unpadded text."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state[0]


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict:
    """(tokenizer, model) of the tiny causal LMs: llama right- and left-padded, llama without a
    pad token (left-padded), and Qwen2 left-padded."""
    root = tmp_path_factory.mktemp("decoders")
    built = {"right": causal_lm(root / "right", "right"), "left": causal_lm(root / "left", "left"),
             "no pad": causal_lm(root / "no-pad", "left", pad=False),
             "qwen2": causal_lm(root / "qwen2", "left", kind="qwen2")}
    return {name: (str(folder), load_encoder(str(folder), None, CPU))
            for name, folder in built.items()}


@pytest.mark.parametrize("name", ["right", "left", "no pad", "qwen2"])
def test_last_pooling_is_each_reports_last_token_whichever_side_it_pads(decoders, name):
    folder, (tokenizer, model) = decoders[name]
    reading = resolve_reading(folder, None, model, "auto")  # a decoder: last
    assert reading.pooling == "last"
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    assert len({len(i) for i in ids}) == len(TEXTS)  # a batch of them is padded
    got = embed(TEXTS, tokenizer, model, reading, 128, batch_size=8, device=CPU, progress=False)
    assert got.shape == (len(TEXTS), WIDTH)
    for k, text_ids in enumerate(ids):
        want = _alone(model, text_ids)[-1].numpy()
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-5, err_msg=TEXTS[k])


def test_left_and_right_padding_give_the_same_vectors(decoders):
    """The same weights read with either tokenizer: positions come from the attention mask."""
    (_, (right, model)), (_, (left, _)) = decoders["right"], decoders["left"]
    assert (right.padding_side, left.padding_side) == ("right", "left")
    for pooling in ("last", "mean"):
        np.testing.assert_allclose(
            embed(TEXTS, right, model, pooling, 128, 8, CPU, progress=False),
            embed(TEXTS, left, model, pooling, 128, 8, CPU, progress=False),
            rtol=1e-4, atol=1e-5)


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_of_sequence(decoders):
    _, (tokenizer, _) = decoders["no pad"]
    assert tokenizer.pad_token == tokenizer.eos_token == "[SEP]"


def test_a_tokenizer_with_nothing_to_pad_with_is_refused():
    from cxrfusion.text_encoder import give_pad_token

    class Bare:
        pad_token = eos_token = unk_token = None

    with pytest.raises(PipelineError, match=r"has no pad, end-of-sequence or unknown token"):
        give_pad_token(Bare(), "models/bare")


def test_cls_on_a_causal_model_is_refused_before_any_report_is_read(decoders):
    folder, (_, model) = decoders["left"]
    with pytest.raises(PipelineError, match=r"text\.pooling=cls .* causal \(decoder\) model"):
        resolve_reading(folder, None, model, "cls")


def test_auto_reads_an_encoder_as_cls(encoder_folder):
    folder, (_, model) = encoder_folder
    assert resolve_reading(folder, None, model, "auto").pooling == "cls"
    assert resolve_reading(folder, None, model, "cls").pooling == "cls"


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    from tiny_encoders import CORPUS

    from cxrfusion.demo_encoder import build

    folder = tmp_path_factory.mktemp("bert") / "bert"
    build(CORPUS, folder, vocab_size=120, hidden_size=WIDTH, layers=1, heads=2, seed=0)
    return str(folder), load_encoder(str(folder), None, CPU)


def test_auto_on_a_sentence_transformers_folder_is_its_pooling_dense_and_normalize(tmp_path):
    from safetensors.torch import load_file

    folder = sentence_transformers(tmp_path / "st")
    tokenizer, model = load_encoder(str(folder), None, CPU)
    reading = resolve_reading(str(folder), None, model, "auto")
    assert reading.summary == "mean, then dense 8 tanh, then normalize"
    got = embed(TEXTS, tokenizer, model, reading, 128, 8, CPU, progress=False)
    dense = load_file(str(folder / "2_Dense/model.safetensors"))
    for k, text in enumerate(TEXTS):  # pooling, then Dense, then Normalize, by hand
        pooled = _alone(model, tokenizer(text)["input_ids"]).mean(0)
        projected = torch.tanh(dense["linear.weight"] @ pooled + dense["linear.bias"])
        want = (projected / projected.norm()).numpy()
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-5, err_msg=text)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)
    # an explicit pooling reads the transformer alone
    assert resolve_reading(str(folder), None, model, "mean").dense == ()


@pytest.mark.parametrize("change, message", [
    ({"modes": {"pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}},
     r"asks for \['pooling_mode_max_tokens'\]"),
    ({"activation": "GELU"}, r"ends in 'torch\.nn\.modules\.activation\.GELU'"),
    ({"extra": ["LayerNorm"]}, r"lists a LayerNorm module after Normalize"),
])
def test_a_sentence_transformers_module_it_cannot_read_is_refused_by_name(tmp_path, change,
                                                                         message):
    folder = sentence_transformers(tmp_path / "st", **change)
    _, model = load_encoder(str(folder), None, CPU)
    with pytest.raises(PipelineError, match=message):
        resolve_reading(str(folder), None, model, "auto")


def test_the_prompt_is_read_before_each_report(encoder_folder):
    folder, (tokenizer, model) = encoder_folder
    prompt = "Instruct: classify the chest X-ray report\nQuery: "
    reading = resolve_reading(folder, None, model, "mean", prompt)
    with_prompt = embed(TEXTS, tokenizer, model, reading, 128, 8, CPU, progress=False)
    by_hand = embed([prompt + t for t in TEXTS], tokenizer, model, "mean", 128, 8, CPU,
                    progress=False)
    np.testing.assert_array_equal(with_prompt, by_hand)
    assert np.abs(with_prompt - embed(TEXTS, tokenizer, model, "mean", 128, 8, CPU,
                                      progress=False)).max() > 1e-3


def test_a_cache_made_with_another_prompt_is_refused(tmp_path, params):
    from cxrfusion.formats import read_text_cache, text_cache_attrs, write_text_cache

    path = tmp_path / "t.h5"
    write_text_cache(path, [1, 2], np.ones((2, 4), np.float32),
                     text_cache_attrs(params.text, ["indication"]))
    params.text.prompt = "Query: "
    with pytest.raises(PipelineError, match=r"prompt: cache has '', parameters say 'Query: '"):
        read_text_cache(path, expect=text_cache_attrs(params.text, ["indication"]))


def test_remote_code_runs_only_on_request(tmp_path):
    folder = str(remote_code(tmp_path / "remote"))
    with pytest.raises(PipelineError, match=r"ships its own model code.*text\.trust_remote_code"):
        load_encoder(folder, None, CPU)
    _, model = load_encoder(folder, None, CPU, trust_remote_code=True)
    assert type(model).__name__ == "TinyRemoteModel"


def test_embed_text_reads_a_decoder_at_its_last_token_and_refuses_cls(cached, tmp_path):
    """The stage as a new user runs it with a decoder LLM as text.model: cls stops it before
    any report is read (no cache written); auto writes the cache, its reading recorded."""
    from cxrfusion.formats import read_prepared, read_text_cache, text_cache, text_cache_attrs
    from cxrfusion.params import fields_of
    from cxrfusion.studies import join_text
    from stages.embed_text import embed_text

    text_input = cached.text.inputs[1]
    cache = text_cache(text_input)
    cache.unlink()
    cached.text.model = str(causal_lm(tmp_path / "llama", "left"))
    cached.text.pooling, cached.text.max_length = "cls", 128  # the tiny llama reads 128
    with pytest.raises(PipelineError, match=r"text\.pooling=cls .* causal \(decoder\) model"):
        embed_text(text_input, cached)
    assert not cache.exists()
    cached.text.pooling = "auto"
    embed_text(text_input, cached)
    uids, vectors, attrs = read_text_cache(cache, expect=text_cache_attrs(
        cached.text, fields_of(text_input)))
    assert attrs["reading"] == "last" and vectors.shape == (len(uids), WIDTH)
    # one vector per distinct report, not one per first word (what cls gave a decoder)
    studies, _ = read_prepared(fields_of(text_input))
    reports = studies.set_index("uid").loc[uids].apply(join_text, axis=1,
                                                       fields=fields_of(text_input))
    assert len({r.split(" ")[0] for r in reports}) < reports.nunique()
    # the same report, the same vector (up to its last bits: padded to another length in another
    # batch, it sums in another order on some CPUs); other reports, other vectors
    by_report: dict = {}
    for report, vector in zip(reports, vectors):
        by_report.setdefault(report, []).append(vector)
    assert all(np.abs(np.array(same) - same[0]).max() < 1e-4 for same in by_report.values())
    firsts = np.array([same[0] for same in by_report.values()])
    apart = np.abs(firsts[:, None] - firsts[None]).max(-1) + np.diag([np.inf] * len(firsts))
    assert len(by_report) == reports.nunique() and apart.min() > 1e-3
