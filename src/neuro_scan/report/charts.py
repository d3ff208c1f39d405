"""Plotly figures for the reports. Pages reference ``plotly.min.js`` written once beside them,
so they render with no network."""

from __future__ import annotations

import plotly.graph_objects as go

from neuro_scan.analysis.labels import LABELS

LABEL_COLOURS = {
    "early_processing": "#4c78a8",
    "syntax": "#72b7b2",
    "reasoning": "#e45756",
    "semantic_processing": "#54a24b",
    "formatting": "#eeca3b",
    "output": "#b279a2",
    "": "#9d9d9d",
}
PLOTLY_JS = "plotly.min.js"


def page(figure: go.Figure) -> str:
    return figure.to_html(include_plotlyjs="directory", full_html=True, config={"responsive": True})


def integer_axis(count: int) -> dict:
    """Axis settings for layer or head indices: whole-number ticks, one per index when few."""
    return {"tickmode": "linear", "dtick": 1 if count <= 40 else max(1, count // 20), "tick0": 0}


def _title(report: dict, what: str) -> str:
    return f"{what} — {report['model']} · probe {report['probe']} ({report['sample_count']} samples)"


def ablation_figure(report: dict) -> go.Figure:
    rows = report["ablation_results"]
    labels = report.get("layer_labels", {})
    layers = [r["layer_idx"] for r in rows]
    delta = [r["score_delta"] for r in rows]
    figure = go.Figure()
    for label in (*LABELS, ""):
        chosen = [i for i, layer in enumerate(layers) if labels.get(str(layer), "") == label]
        if not chosen:
            continue
        figure.add_bar(
            x=[layers[i] for i in chosen],
            y=[delta[i] for i in chosen],
            name=label or "unlabelled",
            marker_color=LABEL_COLOURS[label],
            error_y={
                "type": "data", "symmetric": False,
                "array": [rows[i]["score_delta_ci"][1] - delta[i] for i in chosen],
                "arrayminus": [delta[i] - rows[i]["score_delta_ci"][0] for i in chosen],
            },
            customdata=[[rows[i]["accuracy"], rows[i]["score_delta_ci"][0], rows[i]["score_delta_ci"][1]] for i in chosen],
            hovertemplate="layer %{x}<br>damage %{y:.4f} nats<br>95% CI %{customdata[1]:.4f}..%{customdata[2]:.4f}"
                          "<br>accuracy without it %{customdata[0]:.3f}<extra>%{fullData.name}</extra>",
        )
    top = report.get("top_important_layers", [])
    if top:
        highest = max(r["score_delta_ci"][1] for r in rows)
        figure.add_scatter(x=top, y=[highest * 1.08 if highest > 0 else 0.1] * len(top), mode="markers",
                           marker={"symbol": "star", "size": 14, "color": "gold", "line": {"color": "black", "width": 1}},
                           name="top layers", hovertemplate="top layer %{x}<extra></extra>")
    figure.update_layout(
        title=_title(report, "Ablation damage per layer"),
        xaxis_title="layer skipped", yaxis_title="damage = baseline − ablated score (nats)",
        barmode="overlay", template="plotly_white", legend_title="label",
        xaxis=integer_axis(len(layers)),
    )
    return figure


def attention_figure(report: dict) -> go.Figure:
    attention = report["attention"]
    bits = attention["answer_position_bits"]
    normalized = attention["answer_position_normalized"]
    figure = go.Figure(go.Heatmap(
        z=bits, x=list(range(len(bits[0]) if bits else 0)), y=list(range(len(bits))), colorscale="Cividis",
        customdata=normalized, colorbar={"title": "bits"},
        hovertemplate="layer %{y}, head %{x}<br>entropy %{z:.3f} bits<br>normalised %{customdata:.3f}<extra></extra>",
    ))
    figure.update_layout(title=_title(report, "Attention entropy at the answer position"),
                         xaxis_title="head", yaxis_title="layer", template="plotly_white",
                         xaxis=integer_axis(len(bits[0]) if bits else 0), yaxis=integer_axis(len(bits)))
    return figure
