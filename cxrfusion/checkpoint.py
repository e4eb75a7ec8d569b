"""Resumable training: the state after each completed epoch, under checkpoints/<run>.pt
(save_progress), and where the loop starts again (resume).

A checkpoint holds the model, the optimizer, the random states (shuffling and dropout) and the
history, so a resumed run continues exactly where the interrupted one stopped. It lives outside
DVC's outputs (DVC deletes a stage's outputs before running it) and is removed once the
stage has finished. It is resumed only when parameters and input caches are the same.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cxrfusion import distributed
from cxrfusion.common import atomic_path
from cxrfusion.formats import IMAGES_H5, Run, text_cache
from cxrfusion.params import Params, as_dict

log = logging.getLogger(__name__)

FOLDER = Path("checkpoints")


def path(run: Run) -> Path:
    return FOLDER / f"{run.variant}-{run.key}.pt"  # e.g. fusion-findings+impression-0.pt


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


# --- the training loop's progress, saved after each epoch and resumed ---------------------------

@dataclass
class Progress:
    """What carries from one epoch to the next, and through a checkpoint: the epochs' metrics,
    the best validation loss, the weights of the epoch kept and its number."""
    history: list = field(default_factory=list)
    best: float = math.inf
    best_state: dict | None = None
    chosen: int | None = None


def resume(run: Run, p: Params, model, optimizer, generator, augment, world) -> tuple:
    """The checkpoint's key (the run's parameters, processes and input caches) and its
    progress: an interrupted run's, restored into the model, optimiser and random streams,
    when its key matches; else a fresh one."""
    inputs = [f for f in (run.text_input and text_cache(run.text_input), IMAGES_H5)
              if f and f.exists()]
    key = fingerprint(run, {**as_dict(p), "processes": world.size}, inputs)
    state = load(run, key)
    if not state:
        return key, Progress()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_random_states(generator, state["random"][world.rank],
                          augment.generator if augment else None)
    log.info("%s: resuming after epoch %d from %s", run.path, len(state["history"]), path(run))
    return key, Progress(state["history"], state["best"], state["best_state"], state["chosen"])


def save_progress(run: Run, key: str, model, optimizer, generator, augment, progress: Progress,
                  world) -> None:
    """After an epoch: every rank's random streams, gathered; the main rank writes the rest."""
    randoms = distributed.gather(random_states(generator, augment.generator if augment else None),
                                 world)
    if world.main:
        save(run, {"fingerprint": key, "model": model.state_dict(),
                   "optimizer": optimizer.state_dict(), "random": randoms,
                   "history": progress.history, "best": progress.best,
                   "best_state": progress.best_state, "chosen": progress.chosen})
