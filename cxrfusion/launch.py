"""`python -m cxrfusion.launch N stages.X [args]`: run a stage in N processes with torchrun.

N is a number or a parameter that holds it (`python -m cxrfusion.launch train.nproc stages.train`).

N = 1 runs the stage in this very process: no launcher start-up (about 10 s a stage on the
CPU). N > 1 hands over to PyTorch's own launcher, exactly as
`torchrun --standalone --nproc_per_node N -m stages.X [args]` on one machine; for several
machines call torchrun yourself (docs/scaling.md, "Scaling").
"""
from __future__ import annotations

import logging
import runpy
import sys

from cxrfusion.common import PipelineError, setup_logging

log = logging.getLogger("launch")


def processes(count: str) -> int:
    """N, or the value of the parameter N names (`train.nproc`): dvc.yaml names the parameter
    rather than interpolating ${train.nproc}, as DVC would rerun a stage whose command changed,
    and the number of processes does not change what `embed_text` computes."""
    if count.isdigit():
        return int(count)
    from cxrfusion import params

    return params.get(params.as_dict(params.load()), count)


def launch(argv: list[str]) -> int:
    n = processes(argv[0]) if argv else 0
    if len(argv) < 2 or n < 1:
        log.error("usage: python -m cxrfusion.launch N|PARAMETER stages.X [args]; N, the number of "
                  "processes, must be a positive integer (got %r)", argv[:1])
        return 2
    module, args = argv[1], argv[2:]
    if n == 1:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc_per_node={n}", "-m", module, *args])
    except ChildFailedError:
        log.error("%s failed in one of its %d processes: its error is above.", module, n)
        return 1
    return 0


if __name__ == "__main__":
    setup_logging()
    try:
        sys.exit(launch(sys.argv[1:]))
    except PipelineError as err:
        log.error("%s", err)
        sys.exit(1)
