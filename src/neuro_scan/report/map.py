"""`map`: report.json, ablation.csv, one page per chart and index.html holding them all.

report.json keeps every key of the reference tool's report (so ``layer-scan annotate`` and other
consumers keep working: ``layer_labels`` is an object with a string key per layer,
``top_important_layers`` a list of ints) and adds ours. It is written after each phase: a phase
that failed or has not run yet leaves its keys empty (the reference's hold [], ``layer_labels``
"" for every layer; ours null) and has no chart page, and the dashboard says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

from neuro_scan.report import ReportFiles, ablation, attention, lens
from neuro_scan.report.charts import LABEL_COLOURS, integer_axis, note, title
from neuro_scan.report.document import correlation_text, failed_phases, finished, header, phases_section, running
from neuro_scan.report.read import FORMATS

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.labels import LayerLabel
    from neuro_scan.analysis.map import MapResult
    from neuro_scan.session import RunInfo

FORMAT = FORMATS["map"]


def influence_figure(report: dict) -> go.Figure:
    """Block influence per layer (bars, coloured by label) beside the exact damage (line): how far
    the cheap proxy ranks the layers as the ablation does."""
    influence = report["block_influence"]
    labels = report.get("layer_labels") or {}
    layers = list(range(len(influence)))
    chart = go.Figure()
    chart.add_bar(x=layers, y=influence, name="block influence", yaxis="y",
                  marker_color=[LABEL_COLOURS.get(labels.get(str(i), ""), "#9d9d9d") for i in layers],
                  customdata=[labels.get(str(i), "") for i in layers],
                  hovertemplate="layer %{x}: block influence %{y:.4f}<br>label %{customdata}<extra></extra>")
    chart.add_scatter(x=layers, y=[r["score_delta"] for r in report["ablation_results"]], name="damage (exact)",
                      yaxis="y2", mode="lines+markers", line={"color": "#222", "width": 2},
                      hovertemplate="layer %{x}: damage %{y:.4g} nats<extra></extra>")
    audit = report.get("proxy_audit") or {}
    if audit.get("atp_estimate"):
        chart.add_scatter(x=layers, y=audit["atp_estimate"], name="damage (AtP estimate)", yaxis="y2",
                          mode="lines+markers", line={"color": "#e45756", "width": 2, "dash": "dot"},
                          hovertemplate="layer %{x}: AtP estimate %{y:.4g} nats<extra></extra>")
        note(chart, "Spearman with the exact damage: block influence "
                    f"{correlation_text(audit['spearman_block_influence'])}, AtP {correlation_text(audit['spearman_atp'])}")
    chart.update_layout(title=title(report, "Block influence per layer, beside the damage"),
                        template="plotly_white", xaxis={"title": "layer", **integer_axis(len(layers))},
                        yaxis={"title": "block influence = 1 − cos(layer input, output)"},
                        yaxis2={"title": "damage (nats)", "overlaying": "y", "side": "right", "showgrid": False},
                        legend={"orientation": "h", "y": -0.2}, margin={"t": 90})
    return chart


PAGES = {  # page -> (the phase it shows, its figure); the dashboard titles them from dashboard.TITLES
    "ablation.html": ("ablation", ablation.figure),
    "accuracy.html": ("ablation", ablation.accuracy_figure),
    "logit_lens.html": ("lens", lens.answer_figure),
    "lens_comparison.html": ("lens", lens.comparison_figure),  # with --tuned-lens only
    "entropy_profile.html": ("lens", lens.entropy_figure),
    "block_influence.html": ("lens", influence_figure),
    "attention.html": ("attention", attention.figure),
}


def files(result: MapResult, run: RunInfo) -> ReportFiles:
    return files_of(document(result, run))


def files_of(report: dict) -> ReportFiles:
    """Every file of a map from its report.json: the table, the pages of the phases that finished
    and the dashboard. While a phase is still to run, report.json alone (what has finished so far)."""
    if running(report):
        return ReportFiles({"report.json": report}, "report.json")
    return ReportFiles({"report.json": report}, "report.json", {"ablation.csv": ablation.table(report)},
                       {page: figure(report) for page, (phase, figure) in PAGES.items()
                        if finished(report, phase) and (page != "lens_comparison.html" or report.get("plain_logit_lens"))},
                       dashboard=True, failed_phases=failed_phases(report))


def document(result: MapResult, run: RunInfo) -> dict:
    report = {**header(run, "map", FORMAT), "warnings": result.warnings, **phases_section(result.phases),
              **ablation.section(result.ablation, run),
              **_labels(result.labels, run.model.num_layers)}
    report["logit_lens_trajectory"] = lens.trajectory(result.lens) if result.lens is not None else []
    report["logit_lens"] = lens.section(result.lens, result.tuned) if result.lens is not None else None
    report["tuned_lens_file"] = run.lens_file
    report["plain_logit_lens"] = lens.plain_section(result.plain_lens)
    report.update(attention.section(result.attention))
    report["block_influence"] = result.block_influence if result.block_influence is not None else []
    report["block_influence_definition"] = "1 - cos(layer input, layer output), mean over every non-pad probe token"
    report["proxy_audit"] = _proxy_audit(result)
    return report


def _proxy_audit(result: MapResult) -> dict:
    """How the proxies rank the layers against the exact damage; empty until the audit has run."""
    from neuro_scan.analysis.attribution import LOW_CORRELATION

    audit, phase = result.proxy_audit, result.proxy_audit_phase
    return {
        "status": phase.status, **({"error": phase.error} if phase.error else {}),
        "definition": "Spearman rank correlation over the layers of each proxy with the exact damage (score_delta); "
                      f"below {LOW_CORRELATION} a warning says the proxy does not stand in for the ablation",
        "atp_definition": "whole-layer AtP: first-order estimate of each layer's damage with its residual update zeroed, "
                          "-grad . (0 - update) summed over real tokens, mean over samples (nats), from one "
                          "differentiable forward and backward",
        "low_correlation": LOW_CORRELATION,
        "atp_estimate": audit.atp if audit else [],
        "spearman_atp": audit.spearman_atp if audit else None,
        "spearman_block_influence": audit.spearman_block_influence if audit else None,
    }


def _labels(labels: list[LayerLabel] | None, num_layers: int) -> dict:
    if labels is None:
        return {"layer_labels": {str(layer): "" for layer in range(num_layers)}, "layer_label_details": {}}
    return {
        "layer_labels": {str(lab.layer): lab.label for lab in labels},
        "layer_label_details": {str(lab.layer): {"label": lab.label, "reason": lab.reason, "signals": lab.signals}
                                for lab in labels},
    }


def summary(report: dict) -> list:
    """The run, the baseline and the most damaging layers with their labels; then how the proxies
    rank the layers against the exact damage."""
    lines = ablation.summary(report)
    audit = report.get("proxy_audit") or {}
    if audit.get("status") == "done":
        lines.append(f"proxies vs exact damage, Spearman over layers: block influence "
                     f"{correlation_text(audit['spearman_block_influence'])}, AtP {correlation_text(audit['spearman_atp'])}")
    return lines
