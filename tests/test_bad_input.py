"""Reports the encoder must take as they come: non-ASCII, longer than text.max_length, empty."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cxrfusion.formats import STUDIES, read_text_cache, text_cache
from stages import embed_text

INPUT = "findings+impression"  # the report fields findings, then impression


def _set_texts(texts: dict[int, str]) -> pd.DataFrame:
    """The report of study row k: its findings, and no impression (so the text embedded is
    exactly `texts[k]`)."""
    studies = pd.read_csv(STUDIES, keep_default_na=False)
    for row, text in texts.items():
        studies.loc[row, "findings"] = text
        studies.loc[row, "impression"] = ""
    studies.to_csv(STUDIES, index=False)
    return studies


def test_embed_text_takes_non_ascii_long_and_empty_reports(cached):
    cached.text.max_length = 32
    studies = _set_texts({0: "Épanchement pleural — cœur élargi, 5 mm nodule (≥ 3 cm?) ✓",
                          1: " ".join(["The lungs are clear."] * 400),   # ~2,000 tokens
                          2: ""})
    embed_text.embed_text(INPUT, cached)
    uids, vectors, attrs = read_text_cache(text_cache(INPUT))
    assert list(uids) == studies["uid"].tolist()
    assert np.isfinite(vectors).all()
    assert attrs["max_length"] == 32
    # a long report is cut at max_length: more of the same text changes nothing
    _set_texts({1: " ".join(["The lungs are clear."] * 800)})
    embed_text.embed_text(INPUT, cached)
    _, longer, _ = read_text_cache(text_cache(INPUT))
    np.testing.assert_array_equal(longer[1], vectors[1])
    np.testing.assert_array_equal(longer[0], vectors[0])
    # the empty report still gets a vector of its own (from [CLS] [SEP] alone)
    assert not np.array_equal(vectors[2], vectors[3])
