"""The only code that writes files: JSON, CSV and self-contained (offline) Plotly HTML.

Each write of a command goes into its output folder as one unit (``report.folder``): the folder
holds the files of one run as that run last wrote them, never a mix of runs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from neuro_scan.report import charts, lens_charts
from neuro_scan.report.files import json_bytes, write_bytes
from neuro_scan.report.folder import Origin, output_session, prepare_output_dir, write_set

__all__ = ["output_session", "prepare_output_dir", "origin", "write_ablation_outputs", "write_lens_file",
           "write_lens_outputs", "write_map_outputs", "write_outputs"]


def origin(report: dict) -> Origin:
    """The command and the run a report comes from. The run is what makes outputs belong
    together: model, probe(s), sample count(s), seed; outputs of runs that differ here are not left
    side by side in a folder. No run for a comparison of report files: it belongs to none."""
    if "model" not in report:
        return Origin(report["command"])
    entries = report.get("per_probe", [report])  # cross-probe: one entry per probe
    return Origin(report["command"], {"model": report["model"], "probe": "+".join(str(e["probe"]) for e in entries),
                                      "samples": "+".join(str(e["sample_count"]) for e in entries),
                                      "seed": report["seed"]})


def _plotly_js() -> dict[str, bytes]:
    from plotly.offline import get_plotlyjs

    return {charts.PLOTLY_JS: get_plotlyjs().encode("utf-8")}


def _csv(report: dict) -> bytes:
    from neuro_scan.report.build import CSV_COLUMNS, csv_rows  # build needs torch; `compare` must not

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    return buffer.getvalue().encode("utf-8")


def _page(figure) -> bytes:
    return charts.page(figure).encode("utf-8")


def write_ablation_outputs(folder: Path, report: dict, json_name: str = "ablation.json") -> list[Path]:
    files = {json_name: json_bytes(report), "ablation.csv": _csv(report),
             "ablation.html": _page(charts.ablation_figure(report))}
    return write_set(folder, files, origin(report), _plotly_js())


def write_map_outputs(folder: Path, report: dict) -> list[Path]:
    """report.json, ablation.csv, one page per chart, and index.html holding them all; a phase that
    failed has no chart pages, and the dashboard says why."""
    from neuro_scan.report.build import failed_phases
    from neuro_scan.report.dashboard import dashboard_page

    failed = failed_phases(report)
    makers = {  # page -> (the phase it shows, its figure)
        "ablation.html": ("ablation", charts.ablation_figure),
        "logit_lens.html": ("lens", lens_charts.logit_lens_figure),
        "entropy_profile.html": ("lens", lens_charts.entropy_profile_figure),
        "attention.html": ("attention", charts.attention_figure),
    }
    figures = {name: figure(report) for name, (phase, figure) in makers.items() if phase not in failed}
    titles = {"ablation.html": "Ablation", "logit_lens.html": "Logit lens", "entropy_profile.html": "Entropy profile",
              "attention.html": "Attention entropy"}
    files = {"report.json": json_bytes(report), "ablation.csv": _csv(report),
             **{name: _page(figure) for name, figure in figures.items()},
             "index.html": dashboard_page(report, {titles[n]: figure for n, figure in figures.items()}, failed).encode()}
    return write_set(folder, files, origin(report), _plotly_js())


def write_outputs(folder: Path, documents: dict[str, dict], figures: dict) -> list[Path]:
    """JSON documents and chart pages by file name (``figures``: name -> plotly Figure); the
    first document is the report that says which run they come from."""
    files = {name: json_bytes(document) for name, document in documents.items()}
    files |= {name: _page(figure) for name, figure in figures.items()}
    return write_set(folder, files, origin(next(iter(documents.values()))), _plotly_js())


def write_lens_outputs(folder: Path, report: dict) -> list[Path]:
    """`logit-lens`: logit_lens.json, logit_lens.html and entropy_profile.html."""
    return write_outputs(folder, {"logit_lens.json": report},
                         {"logit_lens.html": lens_charts.logit_lens_figure(report),
                          "entropy_profile.html": lens_charts.entropy_profile_figure(report)})


def write_lens_file(path: Path, data: bytes) -> Path:
    """`calibrate`: the tuned lens (safetensors bytes), written atomically on its own."""
    return write_bytes(path, data)
