"""`logit-lens`: logit_lens.json, logit_lens.html and entropy_profile.html; the lens section and
figures are `map`'s too.

``logit_lens_trajectory`` keeps the reference's [sample][layer] objects (``layer_idx``,
``top_token``, ``top_token_prob``, ``target_token_prob``, ``entropy``) and adds ours;
``logit_lens`` holds the emergence layers and the per-layer means.
"""

from __future__ import annotations

from dataclasses import asdict

import plotly.graph_objects as go
from rich.markup import escape
from rich.table import Table

from neuro_scan.analysis.lens import LensResult, LensRun
from neuro_scan.analysis.tuned_lens import LensRecord
from neuro_scan.report import ReportFiles
from neuro_scan.report.charts import integer_axis, title
from neuro_scan.report.document import header
from neuro_scan.report.read import FORMATS
from neuro_scan.session import RunInfo

FORMAT = FORMATS["lens"]


def files(result: LensRun, run: RunInfo) -> ReportFiles:
    report = document(result, run)
    return ReportFiles({"logit_lens.json": report}, "logit_lens.json", figures=figures(report))


def document(result: LensRun, run: RunInfo) -> dict:
    return {**header(run, "logit-lens", FORMAT), "logit_lens_trajectory": trajectory(result.lens),
            "logit_lens": section(result.lens, result.tuned), "tuned_lens_file": result.lens_file}


def trajectory(lens: LensResult) -> list[list[dict]]:
    """The reference's ``logit_lens_trajectory``: [sample][layer] objects."""
    samples = len(lens.answer_tokens)
    return [
        [
            {
                "layer_idx": layer.layer,
                "top_token": layer.top_tokens[s][0],
                "top_token_prob": float(layer.top_probs[s, 0]),
                "target_token_prob": float(layer.answer_prob[s]),
                "target_token_rank": int(layer.answer_rank[s]),
                "entropy": float(layer.entropy_bits[s]),
                "kl_to_final_bits": float(layer.kl_to_final_bits[s]),
                "top_k": [[tok, float(p)] for tok, p in zip(layer.top_tokens[s], layer.top_probs[s])],
            }
            for layer in lens.layers
        ]
        for s in range(samples)
    ]


def section(lens: LensResult, tuned: LensRecord | None = None) -> dict:
    """The lens section; ``tuned``: the record of the tuned lens used (None: the logit lens)."""
    return {
        "lens": lens.lens,
        "tuned_lens": asdict(tuned) if tuned is not None else None,
        "position": "answer probability and rank over every answer token, each at the position predicting it; "
                    "top-k, entropy and KL at each sample's first answer position",
        "answer_prob_definition": "probability of the whole answer (product over its tokens, teacher-forced)",
        "answer_rank_definition": "worst rank among the answer's tokens (0: every answer token is top-1)",
        "kl_definition": "KL(model's final distribution || lens distribution), bits",
        "entropy_unit": "bits",
        "answer_tokens": lens.answer_tokens,
        "emergence_layer": lens.probe_emergence,
        "emergence_definition": "first layer from which the answer stays top-1 to the last layer for at least half the samples",
        "prob_emergence_layer": lens.probe_prob_emergence,
        "per_sample_emergence": lens.emergence,
        "per_sample_prob_emergence": lens.prob_emergence,
        "prob_emergence_threshold": lens.emergence_prob_threshold,
        "mean_answer_prob": [layer.mean_answer_prob for layer in lens.layers],
        "median_answer_rank": [layer.median_answer_rank for layer in lens.layers],
        "mean_entropy_bits": [layer.mean_entropy_bits for layer in lens.layers],
        "mean_entropy_bits_ci": [interval.as_list() for interval in lens.entropy_mean],
        "mean_kl_to_final_bits": [layer.mean_kl_to_final_bits for layer in lens.layers],
        "top1_fraction": [layer.top1_fraction for layer in lens.layers],
    }


def figures(report: dict) -> dict[str, go.Figure]:
    return {"logit_lens.html": answer_figure(report), "entropy_profile.html": entropy_figure(report)}


def _lens_name(lens: dict) -> str:
    return "Tuned lens" if lens["lens"] == "tuned" else "Logit lens"


def answer_figure(report: dict) -> go.Figure:
    """Heatmap of p(answer) per layer (x) and sample (y); hover lists the top tokens; markers
    show where the answer becomes top-1 (and stays) and where p(answer) crosses the threshold."""
    samples = report["logit_lens_trajectory"]
    lens = report["logit_lens"]
    z = [[cell["target_token_prob"] for cell in sample] for sample in samples]
    hover = [[
        f"answer rank {cell['target_token_rank']} · entropy {cell['entropy']:.2f} bits · "
        f"KL to final {cell['kl_to_final_bits']:.2f} bits<br>"
        + "<br>".join(f"{tok!r} {p:.3f}" for tok, p in cell["top_k"])
        for cell in sample] for sample in samples]
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
    figure.update_layout(title=title(report, f"{_lens_name(lens)}: probability of the answer"),
                         xaxis_title="layer", yaxis_title="sample: answer token", template="plotly_white",
                         xaxis=integer_axis(report["total_layers"]),
                         legend={"orientation": "h", "y": -0.15})
    return figure


def entropy_figure(report: dict) -> go.Figure:
    """Entropy-Lens style profile: the lens distribution's entropy per layer, one faint line per
    sample, the mean with its 95% bootstrap interval, and the mean KL to the final distribution."""
    lens = report["logit_lens"]
    layers = list(range(len(lens["mean_entropy_bits"])))
    figure = go.Figure()
    for index, sample in enumerate(report["logit_lens_trajectory"]):
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
    figure.update_layout(title=title(report, f"{_lens_name(lens)}: entropy profile at the first answer position"),
                         xaxis_title="layer", yaxis_title="bits", template="plotly_white",
                         xaxis=integer_axis(report["total_layers"]))
    return figure


def summary(report: dict) -> list:
    """The run, a row per layer (p(answer), top-1 share, entropy, KL) and the emergence layers."""
    lens = report["logit_lens"]
    name = "tuned lens " + str(report["tuned_lens_file"]) if lens["lens"] == "tuned" else "logit lens"
    layers = Table("layer", "mean p(answer)", "top-1 fraction", "entropy (bits)", "KL to final (bits)")
    for layer, values in enumerate(zip(lens["mean_answer_prob"], lens["top1_fraction"], lens["mean_entropy_bits"],
                                       lens["mean_kl_to_final_bits"])):
        layers.add_row(str(layer), *(f"{v:.3f}" for v in values))
    return [f"[bold]{escape(report['model'])}[/bold] · probe [bold]{escape(report['probe'])}[/bold] · "
            f"{report['sample_count']} samples · {escape(name)}",
            layers,
            f"emergence (answer stays top-1 for half the samples): layer {lens['emergence_layer']}; "
            f"p(answer) >= {lens['prob_emergence_threshold']}: layer {lens['prob_emergence_layer']}"]
