"""Stage `embed_text`: read every report once with the frozen encoder into features/text.h5."""
from __future__ import annotations

import logging
import time

from stages import params
from stages.common import PipelineError, main, resolve_device
from stages.formats import TEXT_H5, read_prepared, text_cache_attrs, write_text_cache
from stages.text_encoder import embed, encoder_fingerprint, load_encoder

log = logging.getLogger("embed_text")


def run(p: dict) -> None:
    t = p["text"]
    studies, _ = read_prepared()
    device = resolve_device(t["device"])
    tokenizer, model = load_encoder(t["model"], t["revision"], device)
    limit = model.config.max_position_embeddings
    if t["max_length"] > limit:
        raise PipelineError(f"parameter text.max_length={t['max_length']} exceeds what "
                            f"{t['model']} can read ({limit} tokens): set text.max_length<={limit}.")
    start = time.perf_counter()
    vectors = embed(studies["text"].tolist(), tokenizer, model, t["pooling"], t["max_length"],
                    t["batch_size"], device)
    seconds = time.perf_counter() - start
    attrs = {**text_cache_attrs(t), "revision": str(t["revision"]),
             "fingerprint": encoder_fingerprint(t["model"], model), "dim": vectors.shape[1]}
    write_text_cache(TEXT_H5, studies["uid"].to_numpy(), vectors, attrs)
    log.info("embedded %d reports (%d dims) in %.1f s: %.0f reports/s on %s",
             len(vectors), vectors.shape[1], seconds, len(vectors) / seconds, device)


if __name__ == "__main__":
    main(lambda: run(params.load()))
