"""The only code that writes files: JSON, CSV and self-contained (offline) Plotly HTML.

One module per kind of document (``report.map``, ``report.ablation``, ``report.lens``,
``report.attention``, ``report.circuit``, ``report.cross_probe``, ``report.comparison``,
``report.prompt_repeat``), each with its format tag ``FORMAT``, ``files(result, run)`` (the
analysis's result -> :class:`ReportFiles`) and ``summary(document)`` (what the terminal shows).
Report modules only serialise and plot: every number they write is computed by the analysis.
:func:`write` puts a run's files into its output folder as one unit (``report.folder``): the
folder holds the files of one run as that run last wrote them, never a mix of runs.
``report.read`` reads every kind back.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from neuro_scan.report.files import json_bytes, write_bytes
from neuro_scan.report.folder import Origin, output_session, prepare_output_dir, write_set

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["ReportFiles", "csv_bytes", "origin", "output_session", "prepare_output_dir", "write", "write_lens_file"]


@dataclass
class ReportFiles:
    """Everything one run writes, by file name."""

    documents: dict[str, dict]  # the JSON documents
    main: str  # the document that says which run they all come from (and is summarised)
    tables: dict[str, bytes] = field(default_factory=dict)  # CSV files
    figures: dict[str, go.Figure] = field(default_factory=dict)  # one page each
    dashboard: bool = False  # index.html: the main document and every figure on one page
    failed_phases: dict[str, str] = field(default_factory=dict)  # phase -> error, for the phases that failed


def write(folder: Path, files: ReportFiles) -> list[Path]:
    """Write ``files`` into ``folder`` as one unit, with plotly.min.js beside the pages -> their paths."""
    from neuro_scan.report.charts import page, plotly_js

    main = files.documents[files.main]
    written = {name: json_bytes(document) for name, document in files.documents.items()} | files.tables
    written |= {name: page(figure).encode("utf-8") for name, figure in files.figures.items()}
    if files.dashboard:
        from neuro_scan.report.dashboard import dashboard_page

        written["index.html"] = dashboard_page(main, files.figures, files.failed_phases).encode("utf-8")
    return write_set(folder, written, origin(main), plotly_js())


def origin(document: dict) -> Origin:
    """The command and the run a document comes from. The run is what makes outputs belong
    together: model, probe(s), sample count(s), seed; outputs of runs that differ here are not left
    side by side in a folder. No run for a comparison of report files: it belongs to none."""
    if "model" not in document:
        return Origin(document["command"])
    entries = document.get("per_probe", [document])  # cross-probe: one entry per probe
    return Origin(document["command"], {"model": document["model"], "probe": "+".join(str(e["probe"]) for e in entries),
                                        "samples": "+".join(str(e["sample_count"]) for e in entries),
                                        "seed": document["seed"]})


def csv_bytes(columns: list[str], rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_lens_file(path: Path, data: bytes) -> Path:
    """`calibrate`: the tuned lens (safetensors bytes), written atomically on its own."""
    return write_bytes(path, data)
