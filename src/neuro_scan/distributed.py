"""Several processes sharing one scan, started by the launchers users already run:
``torchrun --nproc-per-node N $(which neuro-scan) ablate ...`` or ``accelerate launch ...``, on one
node or many.

A launcher starts the same command N times and tells each process its place through the
environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Every process loads its own
replica of the model (on GPU ``LOCAL_RANK`` of its node when the machine has GPUs) and computes the
same baseline; the configurations of every scan (layers, targets, pairs, duplication blocks) are
dealt out among the processes, and each scan ends by gathering everyone's scores on every process.
So every process holds the same results, and the first process (rank 0) alone writes the report,
the journal and the terminal output. The report equals a single-process run's.

Work that is not a scan of configurations (loading, the baseline, the lens, attention entropies,
gradients) is done by every process: it is cheap beside the scans it serves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from neuro_scan.errors import UsageError

if TYPE_CHECKING:
    from neuro_scan.scoring import SampleScores

LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Place:
    """This process's place among the launched ones."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def place() -> Place | None:
    """Where the launcher put this process, or None when it runs alone (no launcher, or one
    process). A half-set environment is refused: it would otherwise run N unrelated copies."""
    found = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    if found["WORLD_SIZE"] is None:
        return None
    try:
        world_size, rank = int(found["WORLD_SIZE"]), int(found["RANK"] or "")
        local_rank = int(found["LOCAL_RANK"] or rank)
    except ValueError:
        raise UsageError(f"launcher environment: WORLD_SIZE={found['WORLD_SIZE']}, RANK={found['RANK']}, "
                         f"LOCAL_RANK={found['LOCAL_RANK']} must be whole numbers") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"launcher environment: RANK={rank} must be from 0 to WORLD_SIZE-1={world_size - 1}")
    if world_size == 1:
        return None
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not found[name]]
    if missing:
        raise UsageError(f"launcher environment: WORLD_SIZE={world_size} but {', '.join(missing)} not set; "
                         "start the processes with torchrun or accelerate launch")
    return Place(rank, world_size, local_rank)


def process_count() -> int:
    """How many processes share the scans (1 when this one runs alone)."""
    here = place()
    return 1 if here is None else here.world_size


class ProcessGroup:
    """The launched processes, joined once per process: the engine's ``workers`` (which
    configurations this process scores, and everyone's scores gathered)."""

    def __init__(self, here: Place):
        import torch
        import torch.distributed as dist

        self.place = here
        if torch.cuda.is_available():
            torch.cuda.set_device(here.local_rank % torch.cuda.device_count())  # "cuda" = this process's GPU
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def share(self, indices: list[int]) -> list[int]:
        """Every world_size-th configuration from this process's rank: configurations come ordered by
        layer, and a run's cost grows with how early it starts, so each process gets early and late ones."""
        return indices[self.place.rank :: self.place.world_size]

    def gather(self, scored: dict[int, SampleScores]) -> dict[int, SampleScores]:
        import torch.distributed as dist

        everyone: list[dict[int, SampleScores] | None] = [None] * self.place.world_size
        dist.all_gather_object(everyone, scored)
        return {index: scores for part in everyone for index, scores in (part or {}).items()}


_joined: ProcessGroup | None = None


def workers() -> ProcessGroup | None:
    """The process group this process belongs to (joined on first use), or None when it runs alone."""
    global _joined
    here = place()
    if here is None:
        return None
    if _joined is None:
        _joined = ProcessGroup(here)
    return _joined


def synchronize() -> None:
    """Wait until every launched process has come here (nothing when running alone)."""
    group = workers()
    if group is not None:
        import torch.distributed as dist

        dist.barrier()
