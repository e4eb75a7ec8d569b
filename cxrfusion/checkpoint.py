"""Resumable training's files: the state after each completed epoch, under checkpoints/<run>.pt
(written by cxrfusion.training.save_progress, read back by its `resume`).

A checkpoint holds the model, the optimizer, the random states (shuffling and dropout) and the
history, so a resumed run continues exactly where the interrupted one stopped. It lives outside
DVC's outputs (DVC deletes a stage's outputs before running it) and is removed once the
stage has finished. It is resumed only when parameters and input caches are the same.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from cxrfusion.common import atomic_path
from cxrfusion.formats import Run

log = logging.getLogger(__name__)

FOLDER = Path("checkpoints")


def path(run: Run) -> Path:
    return FOLDER / f"{run.path.replace('/', '-')}.pt"  # fusion-findings+impression-seed-0.pt


def fingerprint(run: Run, params: dict, inputs: list[Path]) -> str:
    """What a checkpoint must match to be resumed: the run, all parameters, and the
    caches' identity (size and modification time: a rebuilt cache is a new file; hashing
    22 GB of MIMIC-CXR images on every start would cost minutes)."""
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in map(Path, inputs)]
    described = json.dumps([run.path, params, stats], sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()


def random_states(generator: torch.Generator, augment: torch.Generator | None = None) -> dict:
    """The shuffling, global (dropout) and CUDA streams, and train.augment's when it draws."""
    states = {"shuffle": generator.get_state(), "torch": torch.get_rng_state()}
    if augment is not None:
        states["augment"] = augment.get_state()
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(generator: torch.Generator, states: dict,
                          augment: torch.Generator | None = None) -> None:
    generator.set_state(states["shuffle"])
    if augment is not None:
        augment.set_state(states["augment"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(run: Run, state: dict) -> None:
    with atomic_path(path(run)) as tmp:
        torch.save(state, tmp)


def load(run: Run, expected: str) -> dict | None:
    """The last checkpoint of `run` if it matches `expected`, else None."""
    p = path(run)
    if not p.exists():
        return None
    # on the CPU: random states must stay CPU tensors; load_state_dict moves the weights
    state = torch.load(p, map_location="cpu", weights_only=True)  # no arbitrary unpickling
    if state.get("fingerprint") != expected:
        log.info("%s: ignoring %s (made with other parameters or inputs)", run.path, p)
        return None
    return state


def remove(run: Run) -> None:
    path(run).unlink(missing_ok=True)
