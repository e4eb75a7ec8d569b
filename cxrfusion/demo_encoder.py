"""The tiny encoders built offline for the demo, a BERT and a DINOv2 ViT: no model hub needed.

A WordPiece tokenizer over given texts and a small BertModel initialised at random from a seed,
saved with `save_pretrained`, so that `embed_text` loads it through the same `from_pretrained`
path as BioBERT. Random weights: the vectors are a fixed random projection of the words, enough
for the head to learn from.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from cxrfusion.common import atomic_path

log = logging.getLogger(__name__)


SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_vocab(texts: list[str], size: int, normalizer, splitter) -> dict[str, int]:
    """Special tokens, every character (alone and as a `##` continuation), then the most
    frequent words (ties broken alphabetically) up to `size`.

    Built by hand because the `tokenizers` WordPiece trainer breaks ties in hash order, which
    changes the vocabulary, and so every vector, from one run to the next.
    """
    counts: dict[str, int] = {}
    for text in texts:
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({c for word in counts for c in word})
    tokens = SPECIAL + chars + ["##" + c for c in chars]
    frequent = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    tokens += frequent[:max(0, size - len(tokens))]
    return {token: i for i, token in enumerate(tokens)}


def build(texts: list[str], out: Path, vocab_size: int, hidden_size: int, layers: int,
          heads: int, seed: int, max_position: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=False)  # cased, like BioBERT
    splitter = pre_tokenizers.BertPreTokenizer()
    wordpiece = Tokenizer(models.WordPiece(wordpiece_vocab(texts, vocab_size, normalizer, splitter),
                                           unk_token="[UNK]"))
    wordpiece.normalizer = normalizer
    wordpiece.pre_tokenizer = splitter
    wordpiece.decoder = decoders.WordPiece()
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, do_lower_case=False,
                                  model_max_length=max_position)

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=wordpiece.get_vocab_size(), hidden_size=hidden_size,
                        num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden_size, max_position_embeddings=max_position)
    model = BertModel(config)
    with atomic_path(out) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
    log.info("built a tiny BERT (%d words, %d dims, %d parameters) in %s",
             config.vocab_size, hidden_size, sum(p.numel() for p in model.parameters()), out)


def build_image(out: Path, image_size: int, patch_size: int, hidden_size: int, layers: int,
                heads: int, seed: int) -> None:
    """A tiny DINOv2 ViT at random from `seed`, with a DINOv2-style image processor (a centre
    crop of `image_size`, ImageNet's mean and sd), saved with `save_pretrained`, so that
    `embed_images` loads it through the same AutoModel / AutoImageProcessor path as RAD-DINO.
    Random weights: its vectors are a fixed random function of the pixels."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                          num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=2)
    model = Dinov2Model(config)
    processor = BitImageProcessor(size={"shortest_edge": image_size}, do_center_crop=True,
                                  crop_size={"height": image_size, "width": image_size},
                                  image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)
    with atomic_path(out) as tmp:
        processor.save_pretrained(tmp)
        model.save_pretrained(tmp)
    log.info("built a tiny DINOv2 ViT (%d px, %d dims, %d parameters) in %s", image_size,
             hidden_size, sum(p.numel() for p in model.parameters()), out)
