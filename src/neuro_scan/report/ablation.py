"""`ablate`: ablation.json, ablation.csv and ablation.html; the ablation section, table, chart and
summary are `map`'s too (and each report of cross-probe's multi_probe.json is an ablation.json).

The section keeps every key of the reference tool's report (``baseline_score``,
``baseline_uncertainty``, ``scan_time_seconds``, ``ablation_results`` rows with ``layer_idx``,
``score``, ``score_delta``, ``uncertainty``, ``log_odds``, ``accuracy``, and
``top_important_layers``, a list of ints), so its consumers keep working, and adds ours.
"""

from __future__ import annotations

import plotly.graph_objects as go
from rich.markup import escape
from rich.table import Table

from neuro_scan.analysis.ablation import AblationResult, ProbeScore
from neuro_scan.analysis.labels import LABELS
from neuro_scan.report import ReportFiles, csv_bytes
from neuro_scan.report.charts import LABEL_COLOURS, integer_axis, interval_bars, title
from neuro_scan.report.document import header
from neuro_scan.report.read import FORMATS
from neuro_scan.session import RunInfo

FORMAT = FORMATS["ablation"]
CSV_COLUMNS = [
    # the reference's columns, in its order
    "layer_idx", "score", "score_delta", "uncertainty", "log_odds", "accuracy", "label",
    # ours
    "score_delta_ci_low", "score_delta_ci_high", "significant", "accuracy_drop", "accuracy_drop_ci_low",
    "accuracy_drop_ci_high", "expected_digit", "block_influence", "lens_answer_prob", "lens_answer_rank",
    "p_value", "p_value_adjusted",
]


def files(result: AblationResult, run: RunInfo) -> ReportFiles:
    return files_of(document(result, run))


def files_of(report: dict) -> ReportFiles:
    """Every file of `ablate` from its ablation.json."""
    return ReportFiles({"ablation.json": report}, "ablation.json", {"ablation.csv": table(report)},
                       {"ablation.html": figure(report)})


def document(result: AblationResult, run: RunInfo) -> dict:
    return {**header(run, "ablate", FORMAT), **section(result, run)}


def section(ablation: AblationResult, run: RunInfo) -> dict:
    return {
        "baseline_score": ablation.baseline.score.mean,
        "baseline_uncertainty": ablation.baseline.score.stderr,
        "scan_time_seconds": round(ablation.seconds, 3),
        "ablation_results": _rows(ablation),
        "top_important_layers": [int(i) for i in ablation.top_layers(run.top_k)],
        "baseline": _probe_score(ablation.baseline),
        "score_definition": "mean teacher-forced log-probability of the answer (nats); "
                            "score_delta = baseline - ablated (positive: removing the layer hurts)",
        "significance_definition": "score_delta_ci: 95% bootstrap-t interval over samples; p_value: two-sided "
                                   "bootstrap-t test of score_delta = 0; p_value_adjusted: Benjamini-Hochberg across "
                                   "the layers; significant: p_value_adjusted <= 0.05 (docs/statistics.md)",
        "significantly_important_layers": [int(i) for i in ablation.important_layers],
        "improving_layers": [int(i) for i in ablation.improving_layers],
        "ranked_layers": [int(i) for i in ablation.ranked_layers],
        "category_accuracy": {name: vars(accuracy) for name, accuracy in
                              ablation.category_accuracy([sample.category for sample in run.probe.samples]).items()},
        "per_sample": _per_sample(ablation),
    }


def _probe_score(score: ProbeScore) -> dict:
    return {
        "score": score.score.mean,
        "score_ci": score.score.as_list(),
        "score_stderr": score.score.stderr,
        "accuracy": score.accuracy.mean,
        "accuracy_ci": score.accuracy.as_list(),
        "log_odds": score.log_odds,
        "expected_digit": score.expected_digit,
    }


def _rows(ablation: AblationResult) -> list[dict]:
    return [
        {
            "layer_idx": layer.layer,
            "score": layer.score,
            "score_delta": layer.damage.mean,
            "uncertainty": layer.damage.stderr,
            "log_odds": layer.log_odds,
            "accuracy": layer.accuracy,
            "score_delta_ci": layer.damage.as_list(),
            "significant": layer.significant,
            "p_value": layer.damage.p_value,
            "p_value_adjusted": layer.damage.p_value_adjusted,
            "accuracy_drop": layer.accuracy_drop.mean,
            "accuracy_drop_ci": layer.accuracy_drop.as_list(),
            "expected_digit": layer.expected_digit,
        }
        for layer in ablation.layers
    ]


def _per_sample(ablation: AblationResult) -> dict:
    """Per-sample outcomes, so later commands (circuit) can pair new runs with this scan's samples."""
    return {
        "baseline": {"answer_logprob": ablation.baseline_logprob.tolist(),
                     "correct": ablation.baseline_correct.astype(bool).tolist()},
        "ablated": {"answer_logprob": ablation.ablated_logprob.tolist(),
                    "correct": ablation.ablated_correct.astype(bool).tolist()},
    }


def table(report: dict) -> bytes:
    """ablation.csv: a row per layer, with the map's labels, block influence and lens reads when it has them."""
    labels = report.get("layer_labels", {})
    influence = report.get("block_influence") or []
    lens = report.get("logit_lens") or {}
    rows = []
    for entry in report["ablation_results"]:
        layer = entry["layer_idx"]
        rows.append({
            **{k: entry[k] for k in ("layer_idx", "score", "score_delta", "uncertainty", "log_odds", "accuracy")},
            "label": labels.get(str(layer), ""),
            "score_delta_ci_low": entry["score_delta_ci"][0],
            "score_delta_ci_high": entry["score_delta_ci"][1],
            "significant": entry["significant"],
            "accuracy_drop": entry["accuracy_drop"],
            "accuracy_drop_ci_low": entry["accuracy_drop_ci"][0],
            "accuracy_drop_ci_high": entry["accuracy_drop_ci"][1],
            "expected_digit": entry["expected_digit"],
            "block_influence": influence[layer] if layer < len(influence) else None,
            "lens_answer_prob": lens["mean_answer_prob"][layer] if lens else None,
            "lens_answer_rank": lens["median_answer_rank"][layer] if lens else None,
            "p_value": entry.get("p_value"),
            "p_value_adjusted": entry.get("p_value_adjusted"),
        })
    return csv_bytes(CSV_COLUMNS, rows)


def figure(report: dict) -> go.Figure:
    """Damage per layer with its interval, coloured by label (a map's), the top layers starred."""
    rows = report["ablation_results"]
    labels = report.get("layer_labels", {})
    layers = [r["layer_idx"] for r in rows]
    delta = [r["score_delta"] for r in rows]
    chart = go.Figure()
    for label in (*LABELS, ""):
        chosen = [i for i, layer in enumerate(layers) if labels.get(str(layer), "") == label]
        if not chosen:
            continue
        chart.add_bar(
            x=[layers[i] for i in chosen],
            y=[delta[i] for i in chosen],
            name=label or "unlabelled",
            marker_color=LABEL_COLOURS[label],
            error_y=interval_bars([delta[i] for i in chosen], [rows[i]["score_delta_ci"] for i in chosen]),
            customdata=[[rows[i]["accuracy"], rows[i]["score_delta_ci"][0], rows[i]["score_delta_ci"][1]] for i in chosen],
            hovertemplate="layer %{x}<br>damage %{y:.4f} nats<br>95% CI %{customdata[1]:.4f}..%{customdata[2]:.4f}"
                          "<br>accuracy without it %{customdata[0]:.3f}<extra>%{fullData.name}</extra>",
        )
    top = report.get("top_important_layers", [])
    if top:
        highest = max(r["score_delta_ci"][1] for r in rows)
        chart.add_scatter(x=top, y=[highest * 1.08 if highest > 0 else 0.1] * len(top), mode="markers",
                          marker={"symbol": "star", "size": 14, "color": "gold", "line": {"color": "black", "width": 1}},
                          name="top layers", hovertemplate="top layer %{x}<extra></extra>")
    chart.update_layout(
        title=title(report, "Ablation damage per layer"),
        xaxis_title="layer skipped", yaxis_title="damage = baseline − ablated score (nats)",
        barmode="overlay", template="plotly_white", legend_title="label",
        xaxis=integer_axis(len(layers)),
    )
    return chart


def summary(report: dict) -> list:
    """The run, the baseline, and the top layers with their damage, interval and (a map's) label."""
    base = report["baseline"]
    top = Table("layer", "damage (nats)", "95% CI", "accuracy without", "label")
    labels = report.get("layer_labels", {})
    rows = {r["layer_idx"]: r for r in report["ablation_results"]}
    for layer in report["top_important_layers"]:
        row = rows[layer]
        top.add_row(str(layer), f"{row['score_delta']:.4f}",
                       f"{row['score_delta_ci'][0]:.4f}..{row['score_delta_ci'][1]:.4f}", f"{row['accuracy']:.3f}",
                       labels.get(str(layer), ""))
    lines: list = [
        f"[bold]{escape(report['model'])}[/bold] · probe [bold]{escape(report['probe'])}[/bold] · "
        f"{report['sample_count']} samples · {report['total_layers']} layers · {report['dtype']} on {report['device']}",
        f"baseline: answer log-prob {base['score']:.3f} (95% CI {base['score_ci'][0]:.3f}..{base['score_ci'][1]:.3f}), "
        f"accuracy {base['accuracy']:.3f}",
        top,
    ]
    if report.get("improving_layers"):
        lines.append(f"layers whose removal improves the score: {report['improving_layers']}")
    return lines
