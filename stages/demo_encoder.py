"""Stage `demo_encoder`: a tiny BERT built offline, so the demo runs with no model hub.

    params  demo_encoder.{vocab_size, hidden_size, layers, heads, seed}
    reads   data/prepared/studies.csv (the training studies' report text: the vocabulary)
    writes  models/demo_encoder/ (save_pretrained: embed_text loads it as it loads BioBERT)
"""
from __future__ import annotations

from pathlib import Path

from cxrfusion import params
from cxrfusion.common import main
from cxrfusion.demo_encoder import build
from cxrfusion.formats import read_prepared

OUT = Path("models/demo_encoder")


def run(p: dict) -> None:
    e = p["demo_encoder"]
    studies, _ = read_prepared()
    texts = studies.loc[studies["split"] == "train", "text"].tolist()
    build(texts, OUT, e["vocab_size"], e["hidden_size"], e["layers"], e["heads"], e["seed"])


if __name__ == "__main__":
    main(lambda: run(params.load()))
