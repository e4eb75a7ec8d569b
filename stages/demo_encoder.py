"""Stage `demo_encoder`: a tiny BERT built offline, so the demo runs with no model hub.

    params  demo_encoder.{vocab_size, hidden_size, layers, heads, seed}
    reads   data/prepared/studies.csv (the training studies' report fields: the vocabulary)
    writes  models/demo_encoder/ (save_pretrained: embed_text loads it as it loads BioBERT)
"""
from __future__ import annotations

from pathlib import Path

from cxrfusion import params
from cxrfusion.common import main
from cxrfusion.demo_encoder import build
from cxrfusion.formats import read_prepared
from cxrfusion.params import TEXT_FIELDS, Params
from cxrfusion.studies import join_text

OUT = Path("models/demo_encoder")


def demo_encoder(p: Params) -> None:
    e = p.demo_encoder
    studies, _ = read_prepared()
    fields = [f for f in TEXT_FIELDS if f in studies.columns]  # every text input's
    train = studies[studies["split"] == "train"]
    texts = train.apply(join_text, axis=1, fields=fields).tolist()
    build(texts, OUT, e.vocab_size, e.hidden_size, e.layers, e.heads, e.seed)


if __name__ == "__main__":
    main(lambda: demo_encoder(params.load()))
