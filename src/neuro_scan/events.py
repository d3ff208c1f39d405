"""What a running command tells the world: typed events that carry results, not only fractions.

Every command reports through one :data:`EventSink` (a callable taking an :data:`Event`). The
terminal progress bar, a results journal and the live web page are all consumers of the same
events; the library never prints. Events are small and JSON-friendly (:func:`event_to_dict`):
per-sample numbers as lists of floats, never tensors.

A command's life: ``PhaseStarted`` / ``Advanced`` ... / ``PhaseFinished`` for each phase (load,
baseline, ablation, lens, ...), ``ConfigurationScored`` as each configuration of a scan (a
skipped layer, a removed head, a layer pair) is scored, ``Notice`` for warnings and information,
and ``Finished`` with the files written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PhaseStarted:
    phase: str  # a short name: load, baseline, ablation, lens, attention, pairs, ...
    description: str  # what the user reads beside the bar
    total: float  # units of work in the phase


@dataclass(frozen=True)
class Advanced:
    phase: str
    units: float
    status: str | None = None  # shown beside the bar (calibrate: the current loss)


@dataclass(frozen=True)
class PhaseFinished:
    phase: str
    seconds: float


@dataclass(frozen=True)
class ConfigurationScored:
    """One configuration of a scan is scored: ``label`` names it (``L3``, ``L3+L7``,
    ``L3.H2``, ``repeat 2``), ``index`` is its place in the scan's order."""

    phase: str
    index: int
    label: str
    score: float  # mean answer log-prob (nats)
    damage: float  # baseline score - this score
    accuracy: float
    answer_logprob: list[float] = field(default_factory=list)  # per sample
    low: float | None = None  # the damage's 95% interval, when the scan computes it as it goes
    high: float | None = None


@dataclass(frozen=True)
class Notice:
    level: str  # "warning" or "info"
    message: str


@dataclass(frozen=True)
class Finished:
    command: str
    written: list[str]


Event = PhaseStarted | Advanced | PhaseFinished | ConfigurationScored | Notice | Finished
EventSink = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The sink of a caller that wants no events."""


def event_to_dict(event: Event) -> dict:
    return {"event": type(event).__name__, **asdict(event)}


@contextlib.contextmanager
def phase(sink: EventSink, name: str, description: str, total: float) -> Iterator[Callable[..., None]]:
    """``with phase(sink, "ablation", "ablating 30 layers", 30) as advance: advance(1)``: emits
    PhaseStarted, one Advanced per call and PhaseFinished (also when the phase fails)."""
    started = time.perf_counter()
    sink(PhaseStarted(name, description, total))

    def advance(units: float, status: str | None = None) -> None:
        sink(Advanced(name, units, status))

    try:
        yield advance
    finally:
        sink(PhaseFinished(name, time.perf_counter() - started))
