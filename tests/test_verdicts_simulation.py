"""bench/verdicts_simulation.py: its --quick run in this process (every configuration, both
procedures, a few replications), the shape of what it prints, and the truths it holds the
intervals to."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

spec = importlib.util.spec_from_file_location(
    "verdicts_simulation", Path(__file__).parents[1] / "bench/verdicts_simulation.py")
sim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sim)

RATES = ("coverage_primary", "coverage_rows", "fpr")


def _check_rate(d: dict, replications: int) -> None:
    assert set(d) == {"rate", "mc_se", "replications"}
    assert 0 <= d["rate"] <= 1 and d["mc_se"] >= 0 and d["replications"] == replications


def test_quick_run_prints_every_rate(capsys):
    result = sim.main(["--quick"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"] == json.loads(json.dumps(result["results"]))
    assert printed["family"][0] == "fusion-image/indication" and len(printed["family"]) == 6
    assert printed["weights"]["fusion-image/indication"] == pytest.approx(0.8)
    assert set(printed["results"]) == set(sim.CONFIGS)            # --quick: all four
    n = printed["replications"]
    assert n == printed["old_replications"] > 0
    for config, scenarios in printed["results"].items():
        assert set(scenarios) == {"global_null", "partial_null"}
        for scenario, procedures in scenarios.items():
            assert set(procedures) == {"new", "today"}
            for s in procedures.values():
                for key in RATES:
                    _check_rate(s[key], n)
                for key in ("coverage_by_row", "rejections"):
                    assert set(s[key]) == set(printed["family"])
                    assert all(0 <= v <= 1 for v in s[key].values())
    # the new procedure's targets, one per configuration, scenario and rate
    assert len(printed["targets"]) == len(sim.CONFIGS) * 2 * len(RATES)
    assert all(t["pass"] in (True, False) for t in printed["targets"].values())
    assert printed["all_targets_pass"] == all(t["pass"] for t in printed["targets"].values())
    assert {"total", "new_summed", "today_summed"} <= set(printed["seconds"])


def test_same_seed_same_rates_and_a_table(capsys):
    argv = ["--quick", "--configs", "S3", "--old-replications", "2"]
    a, b = sim.main(argv), sim.main(argv + ["--format", "table"])
    assert a["results"] == b["results"]
    assert a["results"]["S3"]["global_null"]["today"]["fpr"]["replications"] == 2
    out = capsys.readouterr().out
    assert "coverage primary" in out and "S3" in out


def test_true_differences():
    for patients in (False, True):
        null = sim.truths("global_null", patients)
        assert set(null.values()) == {0.0}
        partial = sim.truths("partial_null", patients)
        nonnull = {k for k, v in partial.items() if v != 0}
        assert nonnull == {"fusion-image/findings+impression", "text-image/findings+impression"}
        assert all(0.09 < partial[k] < 0.11 for k in nonnull)
    assert sim.expected_auroc(0.8, False) == pytest.approx(0.8)
    assert sim.same_patient_share(True) == pytest.approx(212 / (98 * 97))


def test_mu_gives_the_auroc_on_average_over_seeds():
    """A_m as the model draws it: one model's runs, many seeds, many studies."""
    rng = np.random.default_rng(0)
    m = sim.mu(0.8)
    runs = []
    for _ in range(300):
        pos = m + sim.SD_SEED * rng.standard_normal() + rng.standard_normal(2000)
        neg = rng.standard_normal(2000)
        ranks = stats.rankdata(np.concatenate([pos, neg]))[:2000]
        runs.append((ranks.sum() - 2000 * 2001 / 2) / 2000 ** 2)
    assert np.mean(runs) == pytest.approx(0.8, abs=0.005)
