"""Residual streams kept for resuming: every K-th boundary of a run, within a memory budget.

One boundary's stream, for every row of the probe padded to its block's width, takes

    boundary_bytes = sum over row blocks of (rows x width) x d_model x bytes per value.

Keeping boundaries 1..L (K = 1) takes L x boundary_bytes; keeping every K-th (K, 2K, ...) takes
floor(L / K) x boundary_bytes. A run that needs boundary b starts from the highest boundary at or
below b that is kept and recomputes the layers between: at most K - 1, each exactly as the
baseline ran it, so every K gives the same scores. Boundary 0 (the embedding output) is never
kept: a run from it starts from the token ids. See docs/scale.md for the numbers of a 70B model.

Where: each boundary's stream stays on the device of the layer that made it, unless that would
take more than half of an accelerator's free memory; then the whole cache is kept on the CPU and
each resumed run copies its starting stream to its layer.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

# the share of an accelerator's free memory (after loading) that the cache may take
ACCELERATOR_SHARE = 0.5


@dataclass
class StreamCache:
    """One run's residual streams at some boundaries, for every row block of the probe."""

    boundaries: list[int]  # held, ascending
    from_embeddings: bool  # a run of the unchanged model: boundary 0 is at hand as the token ids
    device: torch.device | None = None  # where the streams are kept (None: where their layers made them)
    streams: list[dict[int, torch.Tensor]] = field(default_factory=list)  # per block: boundary -> [rows, T, d]

    def holds(self, boundary: int) -> bool:
        return boundary in self.boundaries

    def floor(self, boundary: int) -> int:
        """The highest boundary at or below ``boundary`` a run can start from."""
        below = bisect.bisect_right(self.boundaries, boundary)
        if below:
            return self.boundaries[below - 1]
        if self.from_embeddings:
            return 0
        raise ValueError(f"no stream held at or below boundary {boundary}")

    def stream(self, block: int, boundary: int) -> torch.Tensor | None:
        """The held stream (None for boundary 0 of a run from the embeddings)."""
        return None if boundary == 0 and self.from_embeddings else self.streams[block][boundary]


def every_kth(first: int, last: int, spacing: int) -> list[int]:
    """Boundaries first, first + K, ... up to last."""
    return list(range(first, last + 1, spacing))


def baseline_spacing(num_layers: int, boundary_bytes: int, budget: int | None) -> int:
    """The smallest K whose kept boundaries K, 2K, ... <= L fit ``budget`` bytes (None: no limit,
    K = 1); L + 1, keeping nothing, when not even one fits."""
    if budget is None:
        return 1
    return next((k for k in range(1, num_layers + 1) if num_layers // k * boundary_bytes <= budget), num_layers + 1)


def spacing_within(first: int, last: int, boundary_bytes: int, budget: int | None, smallest: int = 1) -> int | None:
    """The smallest K >= ``smallest`` whose boundaries ``every_kth(first, last, K)`` fit ``budget``
    bytes (None: no limit, K = 1); None when not even one boundary fits."""
    if budget is None:
        return smallest
    for spacing in range(smallest, max(last - first, 0) + 2):
        if len(every_kth(first, last, spacing)) * boundary_bytes <= budget:
            return spacing
    return None


def cache_device(need: Mapping[torch.device, int], free: Callable[[torch.device], int]) -> torch.device | None:
    """None (each boundary stays where its layer made it) when every accelerator has room for the
    boundaries made there, ``need`` bytes within ACCELERATOR_SHARE of its ``free`` memory; else the CPU."""
    short = any(device.type != "cpu" and size > ACCELERATOR_SHARE * free(device) for device, size in need.items())
    return torch.device("cpu") if short else None


def free_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device as its driver reports them; other devices are not limited here."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 2**62


def bytes_on(devices: Iterable[torch.device], boundary_bytes: int) -> dict[torch.device, int]:
    """The bytes each device takes when each of ``devices`` holds one boundary."""
    need: dict[torch.device, int] = {}
    for device in devices:
        need[device] = need.get(device, 0) + boundary_bytes
    return need
