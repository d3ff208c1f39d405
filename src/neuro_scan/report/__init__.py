"""The only code that writes files: JSON, CSV and self-contained (offline) Plotly HTML."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from neuro_scan.report import charts
from neuro_scan.report.build import CSV_COLUMNS, csv_rows
from neuro_scan.report.files import prepare_output_dir, write_json, write_text

__all__ = ["prepare_output_dir", "write_ablation_outputs", "write_map_outputs"]


def _write_plotly_js(folder: Path) -> None:
    target = folder / charts.PLOTLY_JS
    if not target.exists():
        from plotly.offline import get_plotlyjs

        write_text(target, get_plotlyjs())


def _write_csv(path: Path, report: dict) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    return write_text(path, buffer.getvalue())


def write_ablation_outputs(folder: Path, report: dict, json_name: str = "ablation.json") -> list[Path]:
    _write_plotly_js(folder)
    return [
        write_json(folder / json_name, report),
        _write_csv(folder / "ablation.csv", report),
        write_text(folder / "ablation.html", charts.page(charts.ablation_figure(report))),
    ]


def write_map_outputs(folder: Path, report: dict) -> list[Path]:
    written = write_ablation_outputs(folder, report, json_name="report.json")
    written.append(write_text(folder / "logit_lens.html", charts.page(charts.logit_lens_figure(report))))
    return written
