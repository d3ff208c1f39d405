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
    )
    return figure


def logit_lens_figure(report: dict) -> go.Figure:
    trajectory = report["logit_lens_trajectory"]
    lens = report["logit_lens"]
    z = [[cell["target_token_prob"] for cell in sample] for sample in trajectory]
    hover = [[f"top: {cell['top_token']!r} ({cell['top_token_prob']:.3f})<br>answer rank {cell['target_token_rank']}"
              for cell in sample] for sample in trajectory]
    names = [f"{i}: {tok!r}" for i, tok in enumerate(lens["answer_tokens"])]
    figure = go.Figure(go.Heatmap(
        z=z, x=list(range(len(z[0]) if z else 0)), y=names, colorscale="Viridis", zmin=0, zmax=1,
        text=hover, hovertemplate="layer %{x}<br>sample %{y}<br>p(answer) %{z:.3f}<br>%{text}<extra></extra>",
        colorbar={"title": "p(answer)"},
    ))
    emerged = [(layer, names[i]) for i, layer in enumerate(lens["per_sample_emergence"]) if layer is not None]
    if emerged:
        figure.add_scatter(x=[e[0] for e in emerged], y=[e[1] for e in emerged], mode="markers", name="emergence",
                           marker={"symbol": "diamond", "color": "red", "size": 10},
                           hovertemplate="answer top-1 from layer %{x}<extra></extra>")
    figure.update_layout(title=_title(report, f"{lens['lens'].capitalize()} lens: probability of the answer"),
                         xaxis_title="layer", yaxis_title="sample: answer token", template="plotly_white")
    return figure
