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
        "scale": run.scale,  # device map, cache budget and the spacing K it chose (docs/scale.md)
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


def sample_list(probe) -> list[dict]:
    """``samples``: each sample's prompt, answer and category, in the probe's order (per-sample
    lists elsewhere in the document follow it)."""
    return [{"prompt": s.prompt, "answer": s.answer, "category": s.category} for s in probe.samples]


def number(value: float | None, digits: int = 4) -> str:
    """A number for people: ``digits`` significant digits, so a tiny value reads -2.1e-05, never -0.000."""
    if value is None:
        return "n/a"
    return "0" if value == 0 else f"{value:.{digits}g}"


def interval_text(interval: list[float], digits: int = 4) -> str:
    return f"{number(interval[0], digits)}..{number(interval[1], digits)}"


def p_text(p_value: float | None) -> str:
    """An adjusted p-value as the tables show it: two significant digits, '<0.001' below that."""
    if p_value is None:
        return "n/a"
    return "<0.001" if p_value < 0.001 else f"{p_value:.2g}"


def summary_table(*headers: str):
    """A terminal summary's table: a rule under the header, no borders, two spaces between columns,
    so that a summary fits 80 columns."""
    from rich import box
    from rich.table import Table

    return Table(*headers, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
