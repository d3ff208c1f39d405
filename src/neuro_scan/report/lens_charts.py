"""Lens figures: the answer's probability per layer and sample, and the entropy profile."""

from __future__ import annotations

import plotly.graph_objects as go

from neuro_scan.report.charts import _title, integer_axis


def _lens_name(lens: dict) -> str:
    return "Tuned lens" if lens["lens"] == "tuned" else "Logit lens"


def logit_lens_figure(report: dict) -> go.Figure:
    """Heatmap of p(answer) per layer (x) and sample (y); hover lists the top tokens; markers
    show where the answer becomes top-1 (and stays) and where p(answer) crosses the threshold."""
    trajectory = report["logit_lens_trajectory"]
    lens = report["logit_lens"]
    z = [[cell["target_token_prob"] for cell in sample] for sample in trajectory]
    hover = [[
        f"answer rank {cell['target_token_rank']} · entropy {cell['entropy']:.2f} bits · "
        f"KL to final {cell['kl_to_final_bits']:.2f} bits<br>"
        + "<br>".join(f"{tok!r} {p:.3f}" for tok, p in cell["top_k"])
        for cell in sample] for sample in trajectory]
    names = [f"{i}: {tok!r}" for i, tok in enumerate(lens["answer_tokens"])]
    figure = go.Figure(go.Heatmap(
        z=z, x=list(range(len(z[0]) if z else 0)), y=names, colorscale="Viridis", zmin=0, zmax=1,
        text=hover, hovertemplate="layer %{x}<br>sample %{y}<br>p(answer) %{z:.3f}<br>%{text}<extra></extra>",
        colorbar={"title": "p(answer)"},
    ))
    markers = (
        ("per_sample_emergence", "answer stays top-1", {"symbol": "diamond", "color": "red", "size": 10}),
        ("per_sample_prob_emergence", f"p(answer) stays ≥ {lens['prob_emergence_threshold']}",
         {"symbol": "circle-open", "color": "white", "size": 12, "line": {"width": 2}}),
    )
    for key, what, marker in markers:
        emerged = [(layer, names[i]) for i, layer in enumerate(lens[key]) if layer is not None]
        if emerged:
            figure.add_scatter(x=[e[0] for e in emerged], y=[e[1] for e in emerged], mode="markers", name=what,
                               marker=marker, hovertemplate=f"{what} from layer %{{x}}<extra></extra>")
    if lens["emergence_layer"] is not None:
        figure.add_vline(x=lens["emergence_layer"], line_dash="dash", line_color="red",
                         annotation_text="probe emergence", annotation_position="top")
    figure.update_layout(title=_title(report, f"{_lens_name(lens)}: probability of the answer"),
                         xaxis_title="layer", yaxis_title="sample: answer token", template="plotly_white",
                         xaxis=integer_axis(report["total_layers"]),
                         legend={"orientation": "h", "y": -0.15})
    return figure


def entropy_profile_figure(report: dict) -> go.Figure:
    """Entropy-Lens style profile: the lens distribution's entropy per layer, one faint line per
    sample, the mean with its 95% bootstrap interval, and the mean KL to the final distribution."""
    trajectory = report["logit_lens_trajectory"]
    lens = report["logit_lens"]
    layers = list(range(len(lens["mean_entropy_bits"])))
    figure = go.Figure()
    for index, sample in enumerate(trajectory):
        figure.add_scatter(x=layers, y=[cell["entropy"] for cell in sample], mode="lines",
                           line={"color": "rgba(120,120,120,0.25)", "width": 1}, showlegend=index == 0,
                           name="samples", legendgroup="samples",
                           hovertemplate=f"sample {index} ({lens['answer_tokens'][index]!r})<br>layer %{{x}}: "
                                         "%{y:.2f} bits<extra></extra>")
    low, high = zip(*lens["mean_entropy_bits_ci"]) if layers else ((), ())
    figure.add_scatter(x=layers + layers[::-1], y=list(high) + list(low)[::-1], fill="toself",
                       fillcolor="rgba(76,120,168,0.25)", line={"width": 0}, name="95% CI of the mean",
                       hoverinfo="skip")
    figure.add_scatter(x=layers, y=lens["mean_entropy_bits"], mode="lines+markers", name="mean entropy",
                       line={"color": "#4c78a8", "width": 3}, hovertemplate="layer %{x}: %{y:.3f} bits<extra></extra>")
    figure.add_scatter(x=layers, y=lens["mean_kl_to_final_bits"], mode="lines", name="mean KL to final",
                       line={"color": "#e45756", "dash": "dash"},
                       hovertemplate="layer %{x}: KL %{y:.3f} bits<extra></extra>")
    figure.update_layout(title=_title(report, f"{_lens_name(lens)}: entropy profile at the first answer position"),
                         xaxis_title="layer", yaxis_title="bits", template="plotly_white",
                         xaxis=integer_axis(report["total_layers"]))
    return figure
