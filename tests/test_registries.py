"""Each extension point is a table of names that params.py checks and a registry of builders
beside the code that builds them: the two must name the same things, or a value params.yaml
accepts has nothing to build it (docs/changing-the-code.md, the recipes)."""
from __future__ import annotations

import pytest

from cxrfusion import params
from cxrfusion.model import HEADS
from cxrfusion.sources import SOURCES
from cxrfusion.text_encoder import POOLINGS


@pytest.mark.parametrize("allowed, registry", [
    (params.SOURCES, SOURCES),     # data.source -> cxrfusion/sources
    (params.POOLINGS, POOLINGS),   # text.pooling -> cxrfusion/text_encoder.py
    (params.FUSIONS, HEADS),       # model.fusion -> cxrfusion/model.py
], ids=["sources", "poolings", "heads"])
def test_a_registry_builds_every_allowed_value(allowed, registry):
    assert list(registry) == list(allowed)


def test_an_unknown_source_is_refused_before_the_registry():
    p = params.defaults()
    p["data"]["source"] = "nowhere"
    with pytest.raises(params.PipelineError, match=r"data\.source='nowhere' is not allowed"):
        params.validate(p)
