"""`logit-lens`: logit_lens.json, logit_lens.html and entropy_profile.html; the lens section and
figures are `map`'s too.

``logit_lens_trajectory`` keeps the reference's [sample][layer] objects (``layer_idx``,
``top_token``, ``top_token_prob``, ``target_token_prob``, ``entropy``) and adds ours;
``logit_lens`` holds the emergence layers and the per-layer means.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from rich.markup import escape

from neuro_scan.report import ReportFiles
from neuro_scan.report.charts import integer_axis, layer_heatmap_height, note, shorten, title
from neuro_scan.report.document import header, sample_list, summary_table
from neuro_scan.report.read import FORMATS

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.lens import LensResult, LensRun
    from neuro_scan.analysis.tuned_lens import LensRecord
    from neuro_scan.session import RunInfo

FORMAT = FORMATS["lens"]


def files(result: LensRun, run: RunInfo) -> ReportFiles:
    report = document(result, run)
    return ReportFiles({"logit_lens.json": report}, "logit_lens.json", figures=figures(report))


def document(result: LensRun, run: RunInfo) -> dict:
    return {**header(run, "logit-lens", FORMAT), "warnings": result.warnings, "samples": sample_list(run.probe),
            "logit_lens_trajectory": trajectory(result.lens), "logit_lens": section(result.lens, result.tuned),
            "tuned_lens_file": result.lens_file, "plain_logit_lens": plain_section(result.plain)}


def trajectory(lens: LensResult) -> list[list[dict]]:
    """The reference's ``logit_lens_trajectory``: [sample][layer] objects; ours add every answer
    token read at its own position (``answer_positions``)."""
    samples = len(lens.answer_tokens)
    positions = [[m for m, sample in enumerate(lens.token_sample) if sample == s] for s in range(samples)]
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
                "answer_positions": [_position(lens, layer, m) for m in positions[s]],
            }
            for layer in lens.layers
        ]
        for s in range(samples)
    ]


def _position(lens: LensResult, layer, m: int) -> dict:
    """Answer token ``m`` at the position that predicts it: its probability and rank, and the top tokens there."""
    reads = layer.tokens
    return {"token": lens.token_text[m], "prob": float(reads.probs[m]), "rank": int(reads.ranks[m]),
            "top_k": [[tok, float(p)] for tok, p in zip(reads.top_tokens[m], reads.top_probs[m])]}


def section(lens: LensResult, tuned: LensRecord | None = None) -> dict:
    """The lens section; ``tuned``: the record of the tuned lens used (None: the logit lens)."""
    return {
        "lens": lens.lens,
        "tuned_lens": asdict(tuned) if tuned is not None else None,
        "position": "answer probability and rank over every answer token, each at the position predicting it; "
                    "top-k, entropy and KL at each sample's first answer position",
        "answer_prob_definition": "probability of the whole answer (product over its tokens, teacher-forced)",
        "answer_rank_definition": "worst rank among the answer's tokens, counted from 0 (0: every answer token is "
                                  "top-1); the charts show it from 1",
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


def plain_section(plain: LensResult | None) -> dict | None:
    """Beside a tuned lens, the plain logit lens read from the same streams: its section and each
    sample's whole-answer probability per layer (None without a tuned lens)."""
    if plain is None:
        return None
    return {**section(plain), "answer_prob": [[float(layer.answer_prob[s]) for layer in plain.layers]
                                              for s in range(len(plain.answer_tokens))]}


def figures(report: dict) -> dict[str, go.Figure]:
    pages = {"logit_lens.html": answer_figure(report), "entropy_profile.html": entropy_figure(report)}
    if report.get("plain_logit_lens"):
        pages["lens_comparison.html"] = comparison_figure(report)
    return pages


def _lens_name(lens: dict) -> str:
    return "Tuned lens" if lens["lens"] == "tuned" else "Logit lens"


def sample_names(report: dict) -> list[str]:
    """One label per sample, the same on every chart: its number, its prompt (shortened) and its
    whole answer (documents without ``samples`` name the answer's first token)."""
    samples = report.get("samples")
    if samples:
        return [f"{i + 1}. {shorten(s['prompt'])} → {s['answer'].strip()!r}" for i, s in enumerate(samples)]
    return [f"{i + 1}. answer {token!r}" for i, token in enumerate(report["logit_lens"]["answer_tokens"])]


def _hover(cell: dict) -> str:
    """A cell's hover: the whole answer's rank (from 1), entropy and KL, then every answer token at
    its own position with its probability, rank and the lens's top tokens there."""
    lines = [f"worst answer-token rank {cell['target_token_rank'] + 1} · entropy {cell['entropy']:.2f} bits · "
             f"KL to final {cell['kl_to_final_bits']:.2f} bits"]
    positions = cell.get("answer_positions") or [{"token": "(first)", "prob": None, "rank": None, "top_k": cell["top_k"]}]
    for position in positions:
        read = "" if position["prob"] is None else f" p {position['prob']:.3f}, rank {position['rank'] + 1}"
        tops = ", ".join(f"{tok!r} {p:.2f}" for tok, p in position["top_k"])
        lines.append(f"{position['token']!r}{read} · top: {tops}")
    return "<br>".join(lines)


def answer_figure(report: dict) -> go.Figure:
    """Heatmap of the whole answer's probability per layer (x) and sample (y, labelled with its
    prompt and answer); hover reads every answer token at its own position; markers show where
    the answer becomes top-1 (and stays) and where p(answer) crosses the threshold."""
    samples = report["logit_lens_trajectory"]
    lens = report["logit_lens"]
    names = sample_names(report)
    z = [[cell["target_token_prob"] for cell in sample] for sample in samples]
    figure = go.Figure(go.Heatmap(
        z=z, x=list(range(len(z[0]) if z else 0)), y=names, colorscale="Viridis", zmin=0, zmax=1,
        text=[[_hover(cell) for cell in sample] for sample in samples],
        hovertemplate="layer %{x} · %{y}<br>p(whole answer) %{z:.3f}<br>%{text}<extra></extra>",
        colorbar={"title": "p(whole<br>answer)"},
    ))
    markers = (
        ("per_sample_emergence", "answer stays top-1 from here",
         {"symbol": "diamond", "color": "#ff3b30", "size": 10, "line": {"color": "white", "width": 1}}),
        ("per_sample_prob_emergence", f"p(answer) stays ≥ {lens['prob_emergence_threshold']} from here",
         {"symbol": "circle-open", "color": "#ff4fd8", "size": 13, "line": {"width": 3}}),
    )
    for key, what, marker in markers:
        emerged = [(layer, names[i]) for i, layer in enumerate(lens[key]) if layer is not None]
        if emerged:
            figure.add_scatter(x=[e[0] for e in emerged], y=[e[1] for e in emerged], mode="markers", name=what,
                               marker=marker, hovertemplate=f"{what}: layer %{{x}}<extra></extra>")
    if lens["emergence_layer"] is not None:
        figure.add_vline(x=lens["emergence_layer"], line_dash="dash", line_color="#ff3b30",
                         annotation_text="probe emergence", annotation_position="bottom right")
    note(figure, "colour: probability of the whole answer (product over its tokens, each read at the position "
                 "predicting it); hover: every answer token, ranks from 1")
    figure.update_layout(title=title(report, f"{_lens_name(lens)}: probability of the answer"),
                         xaxis_title="layer", yaxis_title="", template="plotly_white",
                         xaxis=integer_axis(report["total_layers"]), yaxis={"autorange": "reversed", "automargin": True},
                         height=layer_heatmap_height(len(samples)), margin={"t": 100},
                         legend={"orientation": "h", "y": -0.08, "yanchor": "top"})
    return figure


def entropy_figure(report: dict) -> go.Figure:
    """Entropy-Lens style profile: the lens distribution's entropy per layer, one faint line per
    sample, the mean with its 95% bootstrap interval, and the mean KL to the final distribution."""
    lens = report["logit_lens"]
    layers = list(range(len(lens["mean_entropy_bits"])))
    names = sample_names(report)
    figure = go.Figure()
    for index, sample in enumerate(report["logit_lens_trajectory"]):
        figure.add_scatter(x=layers, y=[cell["entropy"] for cell in sample], mode="lines",
                           line={"color": "rgba(120,120,120,0.25)", "width": 1}, showlegend=index == 0,
                           name="samples", legendgroup="samples",
                           hovertemplate=f"{names[index]}<br>layer %{{x}}: %{{y:.2f}} bits<extra></extra>")
    low, high = zip(*lens["mean_entropy_bits_ci"]) if layers else ((), ())
    figure.add_scatter(x=layers + layers[::-1], y=list(high) + list(low)[::-1], fill="toself", mode="lines",
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
    layers = summary_table("layer", "mean p(answer)", "top-1 share", "entropy (bits)", "KL to final (bits)")
    for layer, values in enumerate(zip(lens["mean_answer_prob"], lens["top1_fraction"], lens["mean_entropy_bits"],
                                       lens["mean_kl_to_final_bits"])):
        layers.add_row(str(layer), *(f"{v:.3f}" for v in values))
    def since(layer: int | None) -> str:
        return "never" if layer is None else f"from layer {layer}"

    return [f"[bold]{escape(report['model'])}[/bold] · probe [bold]{escape(report['probe'])}[/bold] · "
            f"{report['sample_count']} samples · {escape(name)}",
            layers,
            f"the answer stays top-1 for half the samples: {since(lens['emergence_layer'])}; "
            f"p(answer) >= {lens['prob_emergence_threshold']}: {since(lens['prob_emergence_layer'])}"]


def comparison_figure(report: dict) -> go.Figure:
    """The logit lens and the tuned lens side by side (the same samples and colour scale), and
    their mean p(answer) and KL to the final distribution per layer."""
    from plotly.subplots import make_subplots

    plain, tuned = report["plain_logit_lens"], report["logit_lens"]
    names = sample_names(report)
    tuned_prob = [[cell["target_token_prob"] for cell in sample] for sample in report["logit_lens_trajectory"]]
    layers = list(range(report["total_layers"]))
    chart = make_subplots(rows=2, cols=2, shared_yaxes=True, horizontal_spacing=0.03, vertical_spacing=0.1,
                          specs=[[{}, {}], [{"colspan": 2}, None]], row_heights=[0.7, 0.3],
                          subplot_titles=("logit lens: p(whole answer)", "tuned lens: p(whole answer)",
                                          "mean over samples, per layer"))
    for col, z in ((1, plain["answer_prob"]), (2, tuned_prob)):
        chart.add_heatmap(z=z, x=layers, y=names, zmin=0, zmax=1, colorscale="Viridis", showscale=col == 2,
                          colorbar={"title": "p(whole<br>answer)", "len": 0.6, "y": 0.7},
                          hovertemplate="layer %{x} · %{y}<br>p(whole answer) %{z:.3f}<extra></extra>", row=1, col=col)
        chart.update_xaxes(title_text="layer", **integer_axis(len(layers)), row=1, col=col)
    chart.update_yaxes(autorange="reversed", automargin=True, row=1, col=1)
    for lens, name, colour in ((plain, "logit lens", "#4c78a8"), (tuned, "tuned lens", "#e45756")):
        chart.add_scatter(x=layers, y=lens["mean_answer_prob"], mode="lines+markers", name=f"{name}: mean p(answer)",
                          line={"color": colour}, hovertemplate="layer %{x}: %{y:.3f}<extra>%{fullData.name}</extra>",
                          row=2, col=1)
        chart.add_scatter(x=layers, y=lens["top1_fraction"], mode="lines", name=f"{name}: top-1 share",
                          line={"color": colour, "dash": "dot"},
                          hovertemplate="layer %{x}: %{y:.3f}<extra>%{fullData.name}</extra>", row=2, col=1)
    chart.update_xaxes(title_text="layer", **integer_axis(len(layers)), row=2, col=1)
    chart.update_yaxes(title_text="share / probability", range=[0, 1.05], row=2, col=1)
    chart.update_layout(title=title(report, "Logit lens and tuned lens side by side"), template="plotly_white",
                        height=layer_heatmap_height(len(names), 300) + 360,
                        legend={"orientation": "h", "y": -0.08, "yanchor": "top"})
    return chart
