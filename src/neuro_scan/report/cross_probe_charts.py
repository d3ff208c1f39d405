"""cross_probe.json, multi_probe.json and cross_probe.html.

- cross_probe.json: the cross-probe analysis, with the reference's keys (``model``, ``probes``,
  ``total_layers``, ``universal_layers``, ``probe_specific_layers``, ``correlation_matrix``
  (Pearson), ``per_probe`` with ``probe``, ``baseline``, ``top_layers``, ``ablation_deltas``) plus
  intervals, Spearman and the definitions.
- multi_probe.json: one full ablation report per probe (the ``ablate`` report format), so each
  can be read on its own, e.g. by ``neuro-scan compare``.
"""

from __future__ import annotations

import dataclasses

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from neuro_scan.analysis.cross_probe import CrossProbeResult
from neuro_scan.report.build import RunInfo, ablation_report, header

_PROBE_KEYS = ("probe", "probe_info", "sample_count")


def cross_probe_documents(run: RunInfo, result: CrossProbeResult) -> dict[str, dict]:
    """{"cross_probe.json": ..., "multi_probe.json": ...}; ``run.probe`` is the first probe."""
    common = {k: v for k, v in header(run, "cross-probe").items() if k not in _PROBE_KEYS}
    per_probe = []
    reports = []
    for entry in result.per_probe:
        ablation = entry.ablation
        per_probe.append({
            "probe": entry.probe.name,
            "source": entry.probe.source,
            "sample_count": len(entry.probe.samples),
            "baseline": ablation.baseline.score.mean,
            "baseline_ci": ablation.baseline.score.as_list(),
            "baseline_accuracy": ablation.baseline.accuracy.mean,
            "top_layers": [int(i) for i in ablation.top_layers(run.top_k)],
            "significant_layers": [int(i) for i in ablation.important_layers],
            "ablation_deltas": [layer.damage.mean for layer in ablation.layers],
            "ablation_deltas_ci": [layer.damage.as_list() for layer in ablation.layers],
            "ablation_deltas_p_value_adjusted": [layer.damage.p_value_adjusted for layer in ablation.layers],
        })
        probe_run = dataclasses.replace(run, probe=entry.probe, timings={
            "baseline_seconds": entry.baseline_seconds, "ablation_seconds": ablation.seconds})
        reports.append(ablation_report(probe_run, ablation))
    analysis = {
        **common,
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
        "per_probe": per_probe,
    }
    return {"cross_probe.json": analysis, "multi_probe.json": {**common, "probes": result.names, "reports": reports}}


def cross_probe_figure(report: dict) -> go.Figure:
    """Damage per layer for every probe (with intervals), and the Spearman/Pearson matrices."""
    names = report["probes"]
    figure = make_subplots(rows=2, cols=2, specs=[[{"colspan": 2}, None], [{}, {}]], row_heights=[0.6, 0.4],
                           subplot_titles=("damage per layer", "Pearson", "Spearman"), vertical_spacing=0.12)
    universal = set(report["universal_layers"])
    for entry in report["per_probe"]:
        deltas = entry["ablation_deltas"]
        cis = entry["ablation_deltas_ci"]
        figure.add_scatter(
            x=list(range(len(deltas))), y=deltas, mode="lines+markers", name=entry["probe"],
            error_y={"type": "data", "symmetric": False, "array": [hi - d for d, (_, hi) in zip(deltas, cis)],
                     "arrayminus": [d - lo for d, (lo, _) in zip(deltas, cis)]},
            hovertemplate="layer %{x}<br>damage %{y:.4f} nats<extra>%{fullData.name}</extra>", row=1, col=1)
    for layer in sorted(universal):
        figure.add_vline(x=layer, line={"color": "gold", "width": 2, "dash": "dot"}, row=1, col=1)
    for col, key in ((1, "correlation_matrix"), (2, "spearman_matrix")):
        figure.add_heatmap(z=report[key], x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu_r", showscale=col == 2,
                           texttemplate="%{z:.2f}", colorbar={"y": 0.2, "len": 0.4},
                           hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>", row=2, col=col)
    figure.update_xaxes(title_text="layer skipped", row=1, col=1)
    figure.update_yaxes(title_text="damage (nats)", row=1, col=1)
    figure.update_layout(
        title=f"Cross-probe ablation — {report['model']} · universal layers (dotted): {report['universal_layers'] or 'none'}",
        template="plotly_white", height=900, legend={"y": 1, "yanchor": "top"},
    )
    return figure
