"""Stage `embed_text`: read every report once with the frozen encoder, one text input at a time.

    python -m cxrfusion.launch text.nproc stages.embed_text findings+impression [<alias>]

Joins the input's report fields (findings+impression: findings, then impression) as `prepare`
kept them and writes features/text/<input>.h5; with an alias of text.encoders, that encoder
reads them, into features/text/<input>@<alias>.h5 (stage embed_text_by@<alias>-<input>).

With several processes (GPUs), each embeds its share of the length-sorted batches and saves it
beside the cache; rank 0 puts them back in uid order and writes the one HDF5 file.
"""
from __future__ import annotations

import logging
import sys
import time

from cxrfusion import distributed, params
from cxrfusion.common import PipelineError, main
from cxrfusion.formats import read_prepared, text_cache, text_cache_attrs, write_text_cache
from cxrfusion.params import Params
from cxrfusion.studies import join_text
from cxrfusion.text_encoder import (
    embed_part,
    encoder_fingerprint,
    load_encoder,
    reads_lowercase,
    resolve_reading,
)

log = logging.getLogger("embed_text")


def embed_text(text_input: str, p: Params, alias: str | None = None) -> None:
    if text_input not in p.text.inputs:
        raise PipelineError(params.unknown_input(text_input, p))
    t, out = params.text_reader(p, alias), text_cache(text_input, alias=alias)
    fields = params.fields_of(text_input)
    studies, _ = read_prepared(fields)
    reports = studies.apply(join_text, axis=1, fields=fields).tolist()
    with distributed.running(t.device, "text.device") as world:
        tokenizer, model = load_encoder(t.model, t.revision, world.device, t.lowercase,
                                        t.trust_remote_code)
        reading = resolve_reading(t.model, t.revision, model, t.pooling, t.prompt)
        limit = model.config.max_position_embeddings
        if t.max_length > limit:
            raise PipelineError(f"parameter text.max_length={t.max_length} exceeds what "
                                f"{t.model} can read ({limit} tokens): set "
                                f"text.max_length<={limit}.")
        start = time.perf_counter()
        rows, vectors = embed_part(reports, tokenizer, model, reading,
                                   t.max_length, t.batch_size, world.device,
                                   progress=world.main, part=(world.rank, world.size))
        rows, vectors = distributed.joined_shares(out, rows, vectors, len(studies), world) or (
            None, None)
        seconds = time.perf_counter() - start
        if world.main:
            attrs = {**text_cache_attrs(t, fields), "revision": t.revision or "",
                     "lowercased": reads_lowercase(tokenizer),  # text.lowercase resolved
                     "fingerprint": encoder_fingerprint(t.model, model, tokenizer),
                     "reading": reading.summary,  # text.pooling resolved
                     "dim": vectors.shape[1]}
            write_text_cache(out, studies["uid"].to_numpy()[rows], vectors, attrs)
            log.info("embedded %d reports (%s, %d dims) in %.1f s: %.0f reports/s on %d x %s",
                     len(vectors), text_input, vectors.shape[1], seconds,
                     len(vectors) / seconds, world.size, world.device)


if __name__ == "__main__":
    main(lambda: embed_text(sys.argv[1] if len(sys.argv) > 1 else "", params.load(),
                            sys.argv[2] if len(sys.argv) > 2 else None))
