"""The kinds of test `make check` leaves out, and how `make test` hands the tests to its two
processes. tests/conftest.py imports the hooks (pytest looks for them there).

The kinds are markers (pytest.ini): `pipeline` and `committed` are written on the tests,
`processes` is given here, from PROCESSES.
"""
from __future__ import annotations

import pytest

# The tests that start several processes (DVC, torchrun, the benchmark scripts) or a browser,
# and what they start: marked `processes` (pytest.ini), run by `make test`, left out of
# `make check`. A node id, or the start of one (every test of a file, or of a parametrisation).
PROCESSES = {
    "tests/test_benchmark.py::test_tiny_run_": "bench/benchmark.py --tiny, once for the three",
    "tests/test_benchmark.py::test_each_script_runs_alone": "each bench/ script --tiny",
    "tests/test_benchmark.py::test_sigterm_prints": "bench/benchmark.py, stopped by SIGTERM",
    "tests/test_benchmark.py::test_memory_benchmark": "bench/memory.py",
    "tests/test_benchmark.py::test_augment_benchmark": "bench/augment.py --tiny",
    "tests/test_backbones.py::test_bench_on_tinynet": "bench/backbones.py",
    "tests/test_distributed.py::test_two_processes_train": "torchrun, 2 training processes",
    "tests/test_distributed.py::test_embed_text_in_two_processes": "torchrun, 2 processes",
    "tests/test_plots_page.py::test_dvc_plots_show_draws": "`dvc plots show`, then Chromium",
    "tests/test_sharing.py::": "dvc repro, push, pull, clone, exp push and pull, DVC's queue",
}
# `make test` (pytest -n 2 --dist loadgroup) hands out work in the order of the tests: the
# tests of a file in GROUPED together (they share a module-scoped fixture, made once), any
# other test alone. The longest files first, then the rest of the pipeline and processes kinds,
# then the others: the two processes end at about the same time.
GROUPED = {f"tests/test_{name}.py" for name in (
    "backbones", "benchmark", "caches", "demo_and_download", "frozen_image", "gpu_check", "mimic",
    "model",
    "options", "paths", "pipeline", "predict_explain", "readings", "seeds_and_inputs",
    "sharing", "study_report", "text_case")}
# Longest first, in seconds of `make test`'s durations on the 2-core development machine.
LONGEST = ("tests/test_pipeline.py",     # 145: the demo run and the tests that read it
           "tests/test_mimic.py",        # 80: dvc repro on the MIMIC-CXR layout
           "tests/test_benchmark.py",    # 75: the bench/ scripts, each a process
           "tests/test_sharing.py",      # 25: DVC remotes, experiments, its queue
           "tests/test_distributed.py")  # 22: torchrun
KINDS = ("pipeline", "processes")


def pytest_itemcollected(item):
    """A test that uses a module-scoped fixture of its own file must be in GROUPED, and a file
    in GROUPED must have one (the scheduler below, in the process that hands out the tests,
    sees node ids only)."""
    file = item.nodeid.split("::")[0]
    infos = getattr(item, "_fixtureinfo", None)
    shared = infos and any(d[-1].scope == "module" and d[-1].baseid == file
                           for d in infos.name2fixturedefs.values())
    if shared and file not in GROUPED:
        raise pytest.UsageError(f"{item.nodeid} uses a module-scoped fixture: add {file} to "
                                "GROUPED in tests/kinds.py")


def pytest_collection_finish(session):
    files = {item.nodeid.split("::")[0] for item in session.items}
    for file in GROUPED & files:
        module = next(i.module for i in session.items if i.nodeid.startswith(file + "::"))
        if not any(getattr(f, "_fixture_function_marker", None) is not None
                   and f._fixture_function_marker.scope == "module"
                   for f in vars(module).values()):
            raise pytest.UsageError(f"{file} has no module-scoped fixture: take it out of "
                                    "GROUPED in tests/kinds.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown without it
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup with GROUPED as the groups. (xdist 3.8 reads a test's group from a
    suffix it adds to the node id, which pytest 9 no longer lets a plugin change: every test
    would be its own group.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::")[0]
            return file if file in GROUPED else nodeid

    return Groups(config, log)


@pytest.hookimpl(tryfirst=True)  # before -m selects the kinds it marks
def pytest_collection_modifyitems(items):
    """Mark the PROCESSES tests, refuse an entry that names no test function of its file (a
    renamed test would silently move into `make check`), and start the longest first."""
    modules = {}
    for item in items:
        modules[item.nodeid.split("::")[0]] = item.module
        if any(item.nodeid.startswith(prefix) for prefix in PROCESSES):
            item.add_marker(pytest.mark.processes)
    lost = [prefix for prefix in PROCESSES if (file := prefix.split("::")[0]) in modules
            and not any(name.startswith(prefix.split("::")[1]) for name in dir(modules[file])
                        if name.startswith("test_"))]
    if lost:
        raise pytest.UsageError(f"tests/kinds.py, PROCESSES names no test: {lost}")

    def rank(item) -> tuple[int, int]:
        file = item.nodeid.split("::")[0]
        kind = next((i for i, name in enumerate(KINDS) if item.get_closest_marker(name)),
                    len(KINDS))
        return (LONGEST.index(file) if file in LONGEST else len(LONGEST), kind)

    items.sort(key=rank)
