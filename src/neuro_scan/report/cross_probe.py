"""`cross-probe`: cross_probe.json, multi_probe.json and cross_probe.html.

- cross_probe.json: the cross-probe analysis, with the reference's keys (``model``, ``probes``,
  ``total_layers``, ``universal_layers``, ``probe_specific_layers``, ``correlation_matrix``
  (Pearson), ``per_probe`` with ``probe``, ``baseline``, ``top_layers``, ``ablation_deltas``) plus
  intervals, Spearman and the definitions.
- multi_probe.json: one full ablation report per probe (``ablate``'s ablation.json), so each
  can be read on its own, e.g. by ``neuro-scan compare``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from rich.markup import escape

from neuro_scan.report import ReportFiles, ablation
from neuro_scan.report.charts import SIGNIFICANCE, integer_axis, interval_bars, note
from neuro_scan.report.document import PROBE_KEYS, correlation_text, header, number, summary_table
from neuro_scan.report.read import FORMATS

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.cross_probe import CrossProbeResult, ProbeAblation
    from neuro_scan.session import RunInfo

FORMAT = FORMATS["cross-probe"]
MULTI_PROBE_FORMAT = FORMATS["multi-probe"]


def files(result: CrossProbeResult, run: RunInfo) -> ReportFiles:
    """``run.probe`` is the first probe."""
    analysis = document(result, run)
    multi = {**_common(run, MULTI_PROBE_FORMAT), "probes": result.names,
             "reports": [ablation.document(entry.ablation, _probe_run(run, entry)) for entry in result.per_probe]}
    return ReportFiles({"cross_probe.json": analysis, "multi_probe.json": multi}, "cross_probe.json",
                       figures={"cross_probe.html": figure(analysis)})


def _common(run: RunInfo, format: str) -> dict:
    """The header without the keys about one probe."""
    return {k: v for k, v in header(run, "cross-probe", format).items() if k not in PROBE_KEYS}


def _probe_run(run: RunInfo, entry: ProbeAblation) -> RunInfo:
    return dataclasses.replace(run, probe=entry.probe, timings={"baseline_seconds": entry.baseline_seconds,
                                                                "ablation_seconds": entry.ablation.seconds})


def _probe_entry(entry: ProbeAblation, top_k: int) -> dict:
    scan = entry.ablation
    return {
        "probe": entry.probe.name,
        "source": entry.probe.source,
        "sample_count": len(entry.probe.samples),
        "baseline": scan.baseline.score.mean,
        "baseline_ci": scan.baseline.score.as_list(),
        "baseline_accuracy": scan.baseline.accuracy.mean,
        "top_layers": [int(i) for i in scan.important_layers[:top_k]],
        "significant_layers": [int(i) for i in scan.important_layers],
        "ablation_deltas": [layer.damage.mean for layer in scan.layers],
        "ablation_deltas_ci": [layer.damage.as_list() for layer in scan.layers],
        "ablation_deltas_p_value_adjusted": [layer.damage.p_value_adjusted for layer in scan.layers],
    }


def document(result: CrossProbeResult, run: RunInfo) -> dict:
    return {
        **_common(run, FORMAT),
        "warnings": result.warnings,
        "probes": result.names,
        "universal_layers": result.universal_layers,
        "probe_specific_layers": result.specific_layers,
        "correlation_matrix": result.pearson,
        "correlation_method": "pearson",
        "spearman_matrix": result.spearman,
        "definitions": {
            "score_delta": "baseline - ablated mean answer log-prob (nats), 95% paired bootstrap-t interval",
            "universal_layers": "removal does significant damage in every probe (damage > 0 and p-value adjusted "
                                "across the probe's layers by Benjamini-Hochberg <= 0.05)",
            "probe_specific_layers": "significant damage in that probe and in no other",
            "correlation": "between the probes' damage-per-layer profiles; null when a profile is flat",
        },
        "time_seconds": round(result.seconds, 3),
        "per_probe": [_probe_entry(entry, run.top_k) for entry in result.per_probe],
    }


def figure(report: dict) -> go.Figure:
    """Damage per layer for every probe (with intervals; filled markers: significant damage), and
    the Spearman/Pearson matrices."""
    names = report["probes"]
    chart = make_subplots(rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], row_heights=[0.6, 0.4],
                          subplot_titles=("damage per layer", "Pearson", "Spearman"), vertical_spacing=0.12)
    for entry in report["per_probe"]:
        deltas = entry["ablation_deltas"]
        significant = set(entry["significant_layers"])
        chart.add_scatter(
            x=list(range(len(deltas))), y=deltas, mode="lines+markers", name=entry["probe"],
            marker={"symbol": ["circle" if i in significant else "circle-open" for i in range(len(deltas))],
                    "size": 9},
            error_y=interval_bars(deltas, entry["ablation_deltas_ci"]),
            customdata=["significant" if i in significant else "not significant" for i in range(len(deltas))],
            hovertemplate="layer %{x}<br>damage %{y:.4g} nats (%{customdata})<extra>%{fullData.name}</extra>",
            row=1, col=1)
    for layer in sorted(set(report["universal_layers"])):
        chart.add_vline(x=layer, line={"color": "gold", "width": 2, "dash": "dot"}, row=1, col=1)
    for col, key in ((1, "correlation_matrix"), (2, "spearman_matrix")):
        chart.add_heatmap(z=report[key], x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu_r", showscale=col == 2,
                          texttemplate="%{z:.2f}", colorbar={"y": 0.2, "len": 0.4},
                          hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>", row=2, col=col)
    chart.update_xaxes(title_text="layer skipped", **integer_axis(report["total_layers"]), row=1, col=1)
    note(chart, f"filled markers: significant damage ({SIGNIFICANCE}); open: not significant; dotted lines: "
                "universal layers, significant in every probe")
    chart.update_yaxes(title_text="damage (nats)", row=1, col=1)
    chart.update_layout(
        title=f"Cross-probe ablation — {report['model']} · universal layers (dotted): {report['universal_layers'] or 'none'}",
        template="plotly_white", height=900, legend={"y": 1, "yanchor": "top"}, margin={"t": 100},
    )
    return chart


def summary(report: dict) -> list:
    """Per probe: baseline and significant layers; the universal layers; each pair's correlations."""
    table = summary_table("probe", "samples", "baseline", "accuracy", "significant layers", "only here")
    for entry in report["per_probe"]:
        table.add_row(escape(entry["probe"]), str(entry["sample_count"]), number(entry["baseline"]),
                      f"{entry['baseline_accuracy']:.3f}", ", ".join(map(str, entry["significant_layers"])) or "none",
                      ", ".join(map(str, report["probe_specific_layers"][entry["probe"]])) or "none")
    lines: list = [table, f"universal layers (significant damage in every probe): {report['universal_layers'] or 'none'}"]
    names = report["probes"]
    for i, j in ((i, j) for i in range(len(names)) for j in range(i + 1, len(names))):
        lines.append(f"{names[i]} vs {names[j]}: Pearson {correlation_text(report['correlation_matrix'][i][j])}, "
                     f"Spearman {correlation_text(report['spearman_matrix'][i][j])}")
    return lines
