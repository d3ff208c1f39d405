"""What the documents of every report module share: the header (format, tool, date and the run:
model, probe, seed, ...) and, for commands run in phases, how each phase went."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from neuro_scan import __version__

if TYPE_CHECKING:
    from neuro_scan.session import Phase, RunInfo

PROBE_KEYS = ("probe", "probe_info", "sample_count")  # the header's keys about its one probe


def stamp(command: str, format: str) -> dict:
    """The keys every document starts with, a run's or not."""
    return {
        "format": format,
        "command": command,
        "tool": {"name": "neuro-scan", "version": __version__},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def header(run: RunInfo, command: str, format: str) -> dict:
    """The stamp and the run: what every report records about how it was made."""
    probe = run.probe
    return {
        **stamp(command, format),
        "model": run.model.model_id,
        "probe": probe.name,
        "total_layers": run.model.num_layers,
        "model_info": vars(run.model).copy(),
        "dtype": run.model.dtype,
        "device": run.model.device,
        "backend": run.model.backend,
        "probe_info": {"name": probe.name, "source": probe.source, "description": probe.description,
                       "answer_type": probe.answer_type},
        "sample_count": len(probe.samples),
        "seed": run.seed,
        "batch_size": run.batch_size,
        "timings": {k: round(v, 3) for k, v in run.timings.items()},
    }


def phases_section(phases: dict[str, Phase]) -> dict:
    """``phases``: each phase in the order run, with its status (and error when it failed)."""
    return {"phases": {name: {k: v for k, v in vars(phase).items() if v is not None} for name, phase in phases.items()}}


def failed_phases(document: dict) -> dict[str, str]:
    """phase -> its error, for each phase the document names as failed."""
    return {name: phase.get("error", "") for name, phase in (document.get("phases") or {}).items()
            if phase.get("status") == "failed"}


def running(document: dict) -> bool:
    """Is a phase still to run? (The document was written while its command runs.)"""
    return any(phase.get("status") == "pending" for phase in (document.get("phases") or {}).values())


def finished(document: dict, phase: str) -> bool:
    """Has ``phase`` finished (and not failed)?"""
    return (document.get("phases") or {}).get(phase, {}).get("status") == "done"


def correlation_text(value: float | None) -> str:
    """A correlation for the terminal; None is a flat profile's (undefined) correlation."""
    return "n/a (flat profile)" if value is None else f"{value:.3f}"
