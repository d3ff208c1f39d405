"""The only code that writes files: JSON, CSV and self-contained (offline) Plotly HTML."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from neuro_scan.report import charts, lens_charts
from neuro_scan.report.files import prepare_output_dir, write_bytes, write_json, write_text

__all__ = ["prepare_output_dir", "write_ablation_outputs", "write_lens_file", "write_lens_outputs", "write_map_outputs",
           "write_outputs"]


def _write_plotly_js(folder: Path) -> None:
    target = folder / charts.PLOTLY_JS
    if not target.exists():
        from plotly.offline import get_plotlyjs

        write_text(target, get_plotlyjs())


def _write_csv(path: Path, report: dict) -> Path:
    from neuro_scan.report.build import CSV_COLUMNS, csv_rows  # build needs torch; `compare` must not

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
    written = write_outputs(folder, {"report.json": report}, figures)
    written.insert(1, _write_csv(folder / "ablation.csv", report))
    titles = {"ablation.html": "Ablation", "logit_lens.html": "Logit lens", "entropy_profile.html": "Entropy profile",
              "attention.html": "Attention entropy"}
    page = dashboard_page(report, {titles.get(name, name): figure for name, figure in figures.items()}, failed)
    written.append(write_text(folder / "index.html", page))
    return written


def write_outputs(folder: Path, documents: dict[str, dict], figures: dict) -> list[Path]:
    """JSON documents and chart pages by file name (``figures``: name -> plotly Figure)."""
    _write_plotly_js(folder)
    written = [write_json(folder / name, document) for name, document in documents.items()]
    written += [write_text(folder / name, charts.page(figure)) for name, figure in figures.items()]
    return written


def write_lens_outputs(folder: Path, report: dict) -> list[Path]:
    """`logit-lens`: logit_lens.json, logit_lens.html and entropy_profile.html."""
    return write_outputs(folder, {"logit_lens.json": report},
                         {"logit_lens.html": lens_charts.logit_lens_figure(report),
                          "entropy_profile.html": lens_charts.entropy_profile_figure(report)})


def write_lens_file(path: Path, data: bytes) -> Path:
    """`calibrate`: the tuned lens (safetensors bytes), written atomically."""
    return write_bytes(path, data)
