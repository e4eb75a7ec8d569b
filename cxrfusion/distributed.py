"""Several processes, one result: what `train`, `embed_text` and `embed_images` need from
torch.distributed.

A stage runs the same whether started as `python -m stages.X` (one process) or by
`torchrun --nproc_per_node N -m stages.X` (N processes, ranks 0..N-1; torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK). Every rank builds the same seeded list of global batches and keeps
its own contiguous share of each (`shard`), so the union of the shares of a step is exactly
the batch one process would have seen (except an epoch's last batch when it is too small to
give every process two images: it is dropped). Only rank 0 logs metrics and writes the outputs.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cxrfusion.common import PipelineError, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs metrics and writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def start(device_name: str, param: str) -> World:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs), if any; the device
    comes from the parameter `param` (train.device, text.device)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name, f"parameter {param}")
    if size == 1:
        return World(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise PipelineError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} "
                                f"processes on this machine but it has {torch.cuda.device_count()} "
                                "GPUs: lower train.nproc (or text.nproc) to the number of GPUs.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    if rank != 0:  # one voice in the log; errors still reach stderr from every rank
        logging.getLogger().setLevel(logging.WARNING)
    log.info("process group: %d processes (%s), this is rank %d on %s", size, backend, rank, device)
    return World(rank, size, device)


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def running(device_name: str, param: str):
    """`with running(...) as world:` joins the group and always leaves it."""
    world = start(device_name, param)
    try:
        yield world
    finally:
        stop(world)


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous share of a global batch (shares differ by at most one row)."""
    if not world.distributed:
        return batch
    bounds = [len(batch) * r // world.size for r in range(world.size + 1)]
    return batch[bounds[world.rank]:bounds[world.rank + 1]]


def gather(obj, world: World) -> list:
    """Every rank's `obj`, in rank order, on every rank (small objects: per-epoch results)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def same_buffers(model: torch.nn.Module, world: World) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank.

    Without SyncBatchNorm (CPUs) each rank's running statistics follow its own share of the
    data; rank 0's are the ones saved, so every rank validates with them too.
    """
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


# --- a cache made by several processes: each writes its share, rank 0 joins them ------------------

def _share(out, rank: int | str):
    from pathlib import Path

    out = Path(out)
    return out.with_name(f".{out.name}.part{rank}.npz")


def joined_shares(out, rows, vectors, n_rows: int, world: World):
    """(rows, vectors) of the whole cache `out`, in row order, on rank 0 (None elsewhere): each
    process's share (`rows` of the n_rows, and their vectors) meets on disk beside `out`, not in
    a gather through every GPU; the share files are removed."""
    import numpy as np

    from cxrfusion.common import atomic_path

    if not world.distributed:
        return rows, vectors
    with atomic_path(_share(out, world.rank)) as tmp, open(tmp, "wb") as f:
        np.savez(f, rows=rows, vectors=vectors)
    barrier(world)
    if not world.main:
        return None
    parts = []
    for rank in range(world.size):
        with np.load(_share(out, rank)) as part:
            parts.append((part["rows"], part["vectors"]))
    for stale in _share(out, 0).parent.glob(_share(out, "*").name):  # this run's, older ones
        stale.unlink()
    rows = np.concatenate([r for r, _ in parts])
    order = np.argsort(rows)
    if not np.array_equal(rows[order], np.arange(n_rows)):
        raise RuntimeError("the processes' shares do not cover every row exactly once")
    return rows[order], np.concatenate([v for _, v in parts])[order]
