"""Encoders of every kind the pipeline reads, built offline from a config (never downloaded) and
saved with save_pretrained, so that tests read them through the real `from_pretrained` path:
a llama- or Qwen2-style causal LM with a tokenizer built from the demo's WordPiece vocabulary
(left- or right-padded, with or without a pad token), a sentence-transformers folder (a tiny
BERT, its Pooling, a Dense and a Normalize module), and a folder that ships its own model code."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TEXTS = ["Normal.",
         "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
         "Cardiomegaly. XXXX opacity in the right lung base.",
         "No pneumothorax or pleural effusion."]
CORPUS = TEXTS * 3 + ["Heart size is enlarged.", "Patchy airspace opacity, XXXX pneumonia."]
WIDTH = 16


def causal_lm(folder: Path, padding_side: str = "right", pad: bool = True,
              kind: str = "llama") -> Path:
    """A 1-layer causal LM (LlamaForCausalLM or Qwen2ForCausalLM, random weights, seed 0) and a
    WordPiece tokenizer without [CLS]/[SEP] (a decoder's: no special tokens around the text),
    its end of sequence [SEP], its pad [PAD] or none."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from cxrfusion.demo_encoder import wordpiece_vocab

    normalizer = normalizers.BertNormalizer(lowercase=False)
    splitter = pre_tokenizers.BertPreTokenizer()
    wordpiece = Tokenizer(models.WordPiece(wordpiece_vocab(CORPUS, 120, normalizer, splitter),
                                           unk_token="[UNK]"))
    wordpiece.normalizer, wordpiece.pre_tokenizer = normalizer, splitter
    wordpiece.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]",
                                        eos_token="[SEP]", padding_side=padding_side,
                                        model_max_length=128,
                                        **({"pad_token": "[PAD]"} if pad else {}))
    config_class, model_class = ((LlamaConfig, LlamaForCausalLM) if kind == "llama" else
                                 (Qwen2Config, Qwen2ForCausalLM))
    config = config_class(vocab_size=wordpiece.get_vocab_size(), hidden_size=WIDTH,
                          intermediate_size=2 * WIDTH, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=2,
                          max_position_embeddings=128)
    torch.manual_seed(0)
    model = model_class(config)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def sentence_transformers(folder: Path, modes: dict | None = None, activation: str = "Tanh",
                          extra: list[str] = (), out_features: int = 8) -> Path:
    """A sentence-transformers folder: a tiny BERT at its root (modules.json's Transformer),
    1_Pooling (mean unless `modes` says otherwise), 2_Dense (WIDTH -> out_features, seed 1,
    `activation`), 3_Normalize, then the module types in `extra`."""
    from safetensors.torch import save_file

    from cxrfusion.demo_encoder import build

    build(CORPUS, folder, vocab_size=120, hidden_size=WIDTH, layers=1, heads=2, seed=0)
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"),
               ("3_Normalize", "Normalize"), *((f"{4 + k}_{t}", t) for k, t in enumerate(extra))]
    (folder / "modules.json").write_text(json.dumps([
        {"idx": k, "name": str(k), "path": path, "type": f"sentence_transformers.models.{t}"}
        for k, (path, t) in enumerate(modules)]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling/config.json").write_text(json.dumps({
        "word_embedding_dimension": WIDTH, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True, **(modes or {})}))
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense/config.json").write_text(json.dumps({
        "in_features": WIDTH, "out_features": out_features, "bias": True,
        "activation_function": f"torch.nn.modules.activation.{activation}"}))
    generator = torch.Generator().manual_seed(1)
    save_file({"linear.weight": torch.randn(out_features, WIDTH, generator=generator),
               "linear.bias": torch.randn(out_features, generator=generator)},
              str(folder / "2_Dense/model.safetensors"))
    (folder / "3_Normalize").mkdir()
    return folder


REMOTE_CONFIG = '''from transformers import BertConfig


class TinyRemoteConfig(BertConfig):
    model_type = "tiny-remote"
'''
REMOTE_MODEL = '''from transformers import BertModel

from .configuration_tiny import TinyRemoteConfig


class TinyRemoteModel(BertModel):
    """Model code shipped in the model's folder: it runs only with trust_remote_code."""
    config_class = TinyRemoteConfig
'''


def remote_code(folder: Path) -> Path:
    """The demo's tiny BERT as a model type transformers does not know, its config pointing
    AutoConfig and AutoModel at code in the folder (auto_map), as CXR-BERT's does."""
    from cxrfusion.demo_encoder import build

    build(CORPUS, folder, vocab_size=120, hidden_size=WIDTH, layers=1, heads=2, seed=0)
    (folder / "configuration_tiny.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tiny.py").write_text(REMOTE_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-remote", architectures=["TinyRemoteModel"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig",
                            "AutoModel": "modeling_tiny.TinyRemoteModel"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder
