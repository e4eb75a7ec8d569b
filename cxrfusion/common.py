"""Small helpers every stage shares: logging, errors, atomic writes, seeding, devices."""
from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("pipeline")


class PipelineError(Exception):
    """A problem the user can fix (bad input, bad parameter, missing download).

    Stages raise it with a message that names the file, row or parameter and what to do;
    `main()` prints that message without a traceback and exits with status 1.
    """


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)


def main(run) -> None:
    """Entry point for `python -m stages.X`: logging on, PipelineError -> clean exit 1."""
    setup_logging()
    # The interpreter's last garbage collection walks every object that torch, timm and their
    # imports made: about 2 s a stage on a CPU, for nothing. Freezing them skips it. At exit
    # only (atexit runs before that collection): tests call main() in their own process.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    try:
        run()
    except PipelineError as err:
        log.error("%s", err)
        sys.exit(1)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and folders. An exception (or a kill) leaves the previous `path` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written to {target}")
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)  # a folder cannot be replaced by rename in one step
            target.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write `obj` as stable, human-readable JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, setting: str = "parameter train.device"):
    """`auto` -> cuda when available, else cpu. An explicit device that is absent is an error
    that names `setting`, where it came from ("parameter text.device", "option --device")."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.version.cuda:  # a CUDA build that sees no GPU: a broken driver, or no GPU here
            log.warning("this torch is a CUDA build (CUDA %s) but sees no GPU: %s=auto runs on "
                        "the CPU. If this machine has a GPU, fix its driver; set %s=cuda to stop "
                        "instead of running on the CPU, or =cpu to say that the CPU is meant.",
                        torch.version.cuda, setting, setting.split()[-1])
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipelineError(f"{setting}={name!r} is not a device: use auto, cpu, cuda or "
                            "cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"{setting}={name!r}, but no CUDA GPU is visible; "
                            "use 'auto' or 'cpu'.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise PipelineError(f"{setting}={name!r}, but this machine has "
                            f"{torch.cuda.device_count()} GPU(s), cuda:0 to "
                            f"cuda:{torch.cuda.device_count() - 1}.")
    return device
