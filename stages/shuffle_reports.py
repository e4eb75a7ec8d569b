"""Stage `shuffle_reports`: the placebo arm's report vectors, one text input at a time.

    python -m stages.shuffle_reports indication [<alias>]

Reads features/text/<input>.h5 (another text encoder's: <input>@<alias>.h5) and writes
features/text/<input>.shuffled.h5 (<input>@<alias>.shuffled.h5): the same studies,
each holding another study's vector of the same split (cxrfusion/placebo.py), drawn by
placebo.seed, with the uid it came from (`donors`) and the source's attributes, so that train,
evaluate and explain read it like any other text cache.
"""
from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd

from cxrfusion import params
from cxrfusion.common import PipelineError, main
from cxrfusion.formats import read_prepared, read_text_cache, text_cache, write_text_cache
from cxrfusion.params import Params
from cxrfusion.placebo import donors

log = logging.getLogger("shuffle_reports")


def shuffle_reports(text_input: str, p: Params, alias: str | None = None) -> None:
    if text_input not in p.text.inputs:
        raise PipelineError(params.unknown_input(text_input, p))
    params.text_reader(p, alias)  # refuses an alias text.encoders does not declare
    studies, _ = read_prepared()
    source, out = text_cache(text_input, alias=alias), text_cache(text_input, True, alias)
    uids, vectors, attrs = read_text_cache(source)
    row_of = pd.Series(np.arange(len(uids)), index=uids)
    missing = ~studies["uid"].isin(row_of.index)
    if missing.any():
        raise PipelineError(f"{source} has no vector for {missing.sum()} studies of "
                            "studies.csv (first: uid "
                            f"{studies.loc[missing, 'uid'].iloc[0]}); rebuild it with "
                            "`dvc repro embed_text`.")
    given = studies["uid"].to_numpy()[donors(studies, p.placebo.seed)]
    write_text_cache(out, studies["uid"].to_numpy(), vectors[row_of[given].to_numpy()],
                     {**attrs, "shuffled_seed": p.placebo.seed, "shuffled_from": str(source)},
                     donors=given)
    log.info("%s: %d studies, each given another study's report vector of its split "
             "(placebo.seed=%d)", out, len(studies), p.placebo.seed)


if __name__ == "__main__":
    main(lambda: shuffle_reports(sys.argv[1] if len(sys.argv) > 1 else "", params.load(),
                                 sys.argv[2] if len(sys.argv) > 2 else None))
