"""`ablate`: ablation.json, ablation.csv and ablation.html; the ablation section, table, chart and
summary are `map`'s too (and each report of cross-probe's multi_probe.json is an ablation.json).

The section keeps every key of the reference tool's report (``baseline_score``,
``baseline_uncertainty``, ``scan_time_seconds``, ``ablation_results`` rows with ``layer_idx``,
``score``, ``score_delta``, ``uncertainty``, ``log_odds``, ``accuracy``, and
``top_important_layers``, a list of ints), so its consumers keep working, and adds ours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from rich.markup import escape

from neuro_scan.analysis.labels import LABELS
from neuro_scan.report import ReportFiles, csv_bytes
from neuro_scan.report.charts import (LABEL_COLOURS, SIGNIFICANCE, integer_axis, interval_bars, layer_heatmap_height,
                                      note, title)
from neuro_scan.report.document import header, interval_text, number, p_text, sample_list, summary_table
from neuro_scan.report.read import FORMATS

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.ablation import AblationResult, ProbeScore
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
    """`ablate`'s files: of a layer scan, or (``--granularity sublayer|head``, ``--ablation mean``)
    of a component scan, written by its own report module."""
    if type(result).__name__ == "ComponentResult":
        from neuro_scan.report import components

        return components.files(result, run)
    return files_of(document(result, run))


def files_of(report: dict) -> ReportFiles:
    """Every file of `ablate` from its ablation.json."""
    return ReportFiles({"ablation.json": report}, "ablation.json", {"ablation.csv": table(report)},
                       {"ablation.html": figure(report), "accuracy.html": accuracy_figure(report)})


def document(result: AblationResult, run: RunInfo) -> dict:
    return {**header(run, "ablate", FORMAT), "warnings": result.warnings, **section(result, run)}


def section(ablation: AblationResult, run: RunInfo) -> dict:
    return {
        "baseline_score": ablation.baseline.score.mean,
        "baseline_uncertainty": ablation.baseline.score.stderr,
        "scan_time_seconds": round(ablation.seconds, 3),
        "ablation_results": _rows(ablation),
        "top_important_layers": [int(i) for i in ablation.important_layers[:run.top_k]],
        "top_layers_not_significant": [int(i) for i in ablation.top_layers(run.top_k)
                                       if i not in ablation.important_layers],
        "top_layers_definition": "top_important_layers: the --top-k most damaging layers whose damage is significant; "
                                 "top_layers_not_significant: the most damaging of the rest, up to --top-k in all",
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
        "samples": sample_list(run.probe),
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
    """Damage per layer with its interval, coloured by label (a map's); bars whose damage is not
    significant faded and hatched; the top layers (significant damage) starred."""
    rows = report["ablation_results"]
    labels = report.get("layer_labels") or {}
    labelled = any(labels.values())
    chart = go.Figure()
    for label in (*LABELS, ""):
        chosen = [r for r in rows if labels.get(str(r["layer_idx"]), "") == label]
        if not chosen:
            continue
        delta = [r["score_delta"] for r in chosen]
        significant = [r["significant"] for r in chosen]
        chart.add_bar(
            x=[r["layer_idx"] for r in chosen], y=delta, name=label or ("unlabelled" if labelled else "damage"),
            width=0.8,  # one layer wide whatever the trace's spacing (a label's layers may lie far apart)
            marker={"color": LABEL_COLOURS[label], "opacity": [1.0 if s else 0.45 for s in significant],
                    "pattern": {"shape": ["" if s else "/" for s in significant]}},
            error_y=interval_bars(delta, [r["score_delta_ci"] for r in chosen]),
            customdata=[[r["accuracy"], *r["score_delta_ci"], p_text(r.get("p_value_adjusted")),
                         "significant" if s else "not significant"] for r, s in zip(chosen, significant)],
            hovertemplate="layer %{x}<br>damage %{y:.4g} nats<br>95% CI %{customdata[1]:.4g}..%{customdata[2]:.4g}"
                          "<br>adjusted p %{customdata[3]}: %{customdata[4]}<br>accuracy without it "
                          "%{customdata[0]:.3f}<extra>%{fullData.name}</extra>",
        )
    top = report.get("top_important_layers", [])
    if top:
        highest = max(r["score_delta_ci"][1] for r in rows)
        chart.add_scatter(x=top, y=[highest * 1.08 if highest > 0 else 0.1] * len(top), mode="markers",
                          marker={"symbol": "star", "size": 14, "color": "gold", "line": {"color": "black", "width": 1}},
                          name="top layers (significant)", hovertemplate="top layer %{x}<extra></extra>")
    note(chart, f"stars: the top layers, whose damage is significant ({SIGNIFICANCE}); faded, hatched bars: not "
                f"significant{'' if top else ' (no layer is)'}")
    chart.update_layout(
        title=title(report, "Ablation damage per layer"), margin={"t": 90},
        xaxis_title="layer skipped", yaxis_title="damage = baseline − ablated score (nats)",
        barmode="overlay", template="plotly_white", legend_title="label" if labelled else "",
        xaxis=integer_axis(len(rows)),
    )
    return chart


def accuracy_figure(report: dict) -> go.Figure:
    """Accuracy with each layer skipped, against the baseline's; per sample category below when
    the probe has several."""
    rows = report["ablation_results"]
    layers = [r["layer_idx"] for r in rows]
    base = report["baseline"]
    categories = report.get("category_accuracy") or {}
    several = len(categories) > 1
    chart = make_subplots(rows=2 if several else 1, cols=1, vertical_spacing=0.18,
                          row_heights=[0.55, 0.45] if several else None,
                          subplot_titles=("accuracy with the layer skipped",
                                          "per sample category (rows: category, samples, baseline accuracy)")
                          if several else None)
    chart.add_bar(x=layers, y=[r["accuracy"] for r in rows], name="accuracy with the layer skipped",
                  marker_color="#4c78a8", showlegend=False,
                  customdata=[[r["accuracy_drop"], *r["accuracy_drop_ci"]] for r in rows],
                  hovertemplate="layer %{x} skipped: accuracy %{y:.3f}<br>drop %{customdata[0]:.3f} (95% CI "
                                "%{customdata[1]:.3f}..%{customdata[2]:.3f})<extra></extra>", row=1, col=1)
    chart.add_hline(y=base["accuracy"], line={"color": "#e45756", "dash": "dash"}, row=1, col=1,
                    annotation_text=f"baseline {base['accuracy']:.3f}", annotation_position="top right")
    chart.update_yaxes(title_text="accuracy", range=[0, 1.05], row=1, col=1)
    chart.update_xaxes(title_text="layer skipped", **integer_axis(len(layers)), row=1, col=1)
    if several:
        names = sorted(categories)
        chart.add_heatmap(z=[categories[name]["per_layer"] for name in names], x=layers, zmin=0, zmax=1,
                          y=[f"{name} ({categories[name]['samples']}, {categories[name]['baseline']:.2f})"
                             for name in names], colorscale="Blues", colorbar={"title": "accuracy", "len": 0.4, "y": 0.2},
                          hovertemplate="%{y}<br>layer %{x} skipped: accuracy %{z:.3f}<extra></extra>", row=2, col=1)
        chart.update_xaxes(title_text="layer skipped", **integer_axis(len(layers)), row=2, col=1)
        chart.update_yaxes(autorange="reversed", row=2, col=1)  # categories from the top, in order
    height = 420 + (layer_heatmap_height(len(categories), 240) if several else 0)
    chart.update_layout(title=title(report, "Accuracy without each layer"), template="plotly_white", height=height)
    return chart


def summary(report: dict) -> list:
    """The run, the baseline, and the most damaging layers with their damage, interval, adjusted
    p-value, significance and (a map's) label; then which layers are significant."""
    from neuro_scan.report import components

    if report.get("format") == components.FORMAT:
        return components.summary(report)
    base = report["baseline"]
    labels = report.get("layer_labels") or {}
    labelled = any(labels.values())
    rows = {r["layer_idx"]: r for r in report["ablation_results"]}
    significant = report["top_important_layers"]
    shown = significant + report.get("top_layers_not_significant", [])
    table = summary_table("layer", "damage", "95% CI", "adj. p", "sig.", "acc. w/o", *(["label"] if labelled else []))
    for layer in shown:
        row = rows[layer]
        table.add_row(str(layer), number(row["score_delta"], 3), interval_text(row["score_delta_ci"], 3),
                      p_text(row.get("p_value_adjusted")), "yes" if layer in significant else "no",
                      f"{row['accuracy']:.3f}", *([labels.get(str(layer), "")] if labelled else []))
    everyone = report.get("significantly_important_layers", significant)
    lines: list = [
        f"[bold]{escape(report['model'])}[/bold] · probe [bold]{escape(report['probe'])}[/bold] · "
        f"{report['sample_count']} samples · {report['total_layers']} layers · {report['dtype']} on {report['device']}",
        f"baseline accuracy {base['accuracy']:.3f}; answer log-prob {number(base['score'], 3)} (95% CI "
        f"{interval_text(base['score_ci'], 3)})",
    ]
    if shown:
        lines += ["the most damaging layers (damage in nats; adj. p: Benjamini-Hochberg):", table]
    lines.append(f"significant damage: layers {', '.join(map(str, everyone))} ({len(everyone)} of "
                 f"{report['total_layers']}; adjusted p <= 0.05)" if everyone else
                 "significant damage: no layer (adjusted p <= 0.05): no top layers are named")
    if report.get("improving_layers"):
        lines.append(f"layers whose removal improves the score: {', '.join(map(str, report['improving_layers']))}")
    return lines
