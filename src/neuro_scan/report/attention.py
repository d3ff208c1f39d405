"""`attention`: attention.json and attention.html; the attention section and figure are `map`'s too.

``attention_entropy`` ([layer][head], bits at the answer position) is the reference's key;
``attention`` holds ours: both positions' entropies, raw and normalised, and the layer means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from rich.markup import escape

from neuro_scan.report import ReportFiles
from neuro_scan.report.charts import integer_axis, layer_heatmap_height, title
from neuro_scan.report.document import failed_phases, header, phases_section
from neuro_scan.report.read import FORMATS

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.attention import AttentionResult, AttentionRun
    from neuro_scan.session import RunInfo

FORMAT = FORMATS["attention"]


def files(result: AttentionRun, run: RunInfo) -> ReportFiles:
    report = document(result, run)
    return ReportFiles({"attention.json": report}, "attention.json",
                       figures={"attention.html": figure(report)} if result.attention is not None else {},
                       failed_phases=failed_phases(report))


def document(result: AttentionRun, run: RunInfo) -> dict:
    return {**header(run, "attention", FORMAT), "warnings": result.warnings, **phases_section(result.phases),
            **section(result.attention)}


def section(attention: AttentionResult | None) -> dict:
    """None (the phase failed or has not run): the reference's key holds [] and ours null."""
    if attention is None:
        return {"attention_entropy": [], "attention": None}
    return {
        "attention_entropy": attention.answer_bits.tolist(),
        "attention": {
            "unit": "bits",
            "capture": "eager attention weights (switched to for the capture, whatever the model was loaded with)",
            "answer_position_bits": attention.answer_bits.tolist(),
            "answer_position_normalized": attention.answer_normalized.tolist(),
            "all_positions_bits": attention.all_positions_bits.tolist(),
            "all_positions_normalized": attention.all_positions_normalized.tolist(),
            "layer_mean_bits": attention.layer_mean_bits,
            "normalization": "entropy / log2(number of attended keys); 1 = uniform over the keys it can see",
        },
    }


def figure(report: dict) -> go.Figure:
    """Heatmap of each head's entropy at the answer position, layer by layer (layer 0 at the top,
    as in every heatmap with layers on its rows; one row per layer however deep the model)."""
    attention = report["attention"]
    bits = attention["answer_position_bits"]
    heads = len(bits[0]) if bits else 0
    chart = go.Figure(go.Heatmap(
        z=bits, x=list(range(heads)), y=list(range(len(bits))), colorscale="Cividis",
        customdata=attention["answer_position_normalized"], colorbar={"title": "bits"},
        hovertemplate="layer %{y}, head %{x}<br>entropy %{z:.3f} bits<br>normalised %{customdata:.3f}<extra></extra>",
    ))
    chart.update_layout(title=title(report, "Attention entropy at the answer position"),
                        xaxis_title="head", yaxis_title="layer", template="plotly_white",
                        xaxis=integer_axis(heads), yaxis=integer_axis(len(bits), reverse=True),
                        height=layer_heatmap_height(len(bits)))
    return chart


def summary(report: dict) -> list:
    """The mean entropy of each layer (nothing when the phase failed: the warning says why)."""
    if report["attention"] is None:
        return []
    means = report["attention"]["layer_mean_bits"]
    return [f"[bold]{escape(report['model'])}[/bold] · probe {escape(report['probe'])}: mean attention entropy at the "
            "answer position per layer (bits): " + ", ".join(f"{m:.2f}" for m in means)]
