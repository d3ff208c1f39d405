"""`attribute`: attribution.json, attribution.csv, the charts (head heatmap: exact where verified,
estimated elsewhere, marked; attention vs MLP bars per layer; estimate vs exact) and the terminal
summary with the verification figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from rich import box
from rich.markup import escape
from rich.table import Table

from neuro_scan.report import ReportFiles, csv_bytes
from neuro_scan.report.charts import note, title
from neuro_scan.report.components import block_bars, head_grid, head_heatmap
from neuro_scan.report.document import header, interval_text, number

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.attribution import AttributionResult
    from neuro_scan.session import RunInfo

FORMAT = "neuro-scan-attribution/1"
CSV_COLUMNS = ["node", "layer", "part", "head", "atp", "estimate", "ranking", "verified", "exact", "exact_ci_low",
               "exact_ci_high", "exact_p_value_adjusted", "damage"]
SHOWN = 15


def files(result: AttributionResult, run: RunInfo) -> ReportFiles:
    return files_of(document(result, run))


def files_of(report: dict) -> ReportFiles:
    figures = {"attribution.html": scatter(report)}
    if any(n["part"] == "head" for n in report["nodes"]):
        figures["attribution_heads.html"] = heads(report)
    if any(n["part"] in ("attention", "mlp") for n in report["nodes"]):
        figures["attribution_blocks.html"] = blocks(report)
    return ReportFiles({"attribution.json": report}, "attribution.json", {"attribution.csv": table(report)}, figures)


def document(result: AttributionResult, run: RunInfo) -> dict:
    v, null = result.verification, result.null_check
    return {
        **header(run, "attribute", FORMAT),
        "warnings": result.warnings,
        "ablation": result.ablation,
        "num_heads": result.num_heads,
        "corrections": {"graddrop": result.graddrop, "qk_fix": result.qk_fix},
        "seconds": {k: round(s, 3) for k, s in result.seconds.items()},
        "definitions": {
            "damage": "baseline - ablated mean answer log-prob (nats), the exact scans' quantity",
            "atp": "first-order estimate of the damage: -grad . (replacement - value), summed over real tokens, "
                   "mean over samples",
            "estimate": "atp with the QK fix: the next layer's attention softmax recomputed exactly",
            "ranking": "AtP* score: mean over samples and over the other layers l of |estimate with layer l cut "
                       "from the backward| (GradDrop); without GradDrop, mean over samples of |estimate|",
            "damage_column": "exact where verified, else the estimate",
        },
        "nodes": [_row(n) for n in result.nodes],
        "verification": {
            "top_k": v.top_k, "random_sample": v.sample_size, "spearman": v.spearman, "recall_top10": v.recall_top10,
            "missed_effect_bound": v.missed_effect_bound, "missed_fraction_bound": v.missed_fraction_bound,
            "missed_count_bound": v.missed_count_bound,
            "definition": "spearman: estimate vs exact damage over the verified nodes; recall_top10: share of the "
                          "verified nodes' 10 largest |exact damage| among the top_k by ranking; from the random "
                          "sample of m unverified nodes, with 95% confidence at most missed_fraction_bound "
                          "(= 1 - 0.05^(1/m); missed_count_bound nodes) of the nodes outside the top_k have |damage| "
                          "above missed_effect_bound, the largest seen in the sample",
        },
        "null_check": {"estimate": null.estimate, "measured": null.measured, "tolerance": null.tolerance,
                       "ok": null.ok, "definition": "largest |answer log-prob - baseline| over samples when nothing "
                                                   "is removed: in the gradient pass (estimate) and a fresh run "
                                                   "(measured)"},
    }


def _row(node) -> dict:
    target, exact = node.target, node.exact
    return {"node": str(target), "layer": target.layer, "part": target.part,
            "head": target.head if target.part == "head" else None, "atp": node.atp, "estimate": node.estimate,
            "ranking": node.ranking, "verified": node.verified or None,
            "exact": exact.damage.mean if exact else None, "exact_ci": exact.damage.as_list() if exact else None,
            "exact_p_value_adjusted": exact.damage.p_value_adjusted if exact else None,
            "damage": exact.damage.mean if exact else node.estimate}


def table(report: dict) -> bytes:
    rows = [{**{k: n[k] for k in CSV_COLUMNS if k in n},
             "exact_ci_low": n["exact_ci"][0] if n["exact_ci"] else None,
             "exact_ci_high": n["exact_ci"][1] if n["exact_ci"] else None} for n in report["nodes"]]
    return csv_bytes(CSV_COLUMNS, rows)


def heads(report: dict) -> go.Figure:
    nodes = report["nodes"]
    grid = head_grid(nodes, report["total_layers"], report["num_heads"], "damage")
    verified = [(n["layer"], n["head"]) for n in nodes if n["part"] == "head" and n["verified"]]
    return head_heatmap(report, grid, verified, f"Damage per head, {report['ablation']} ablation (exact where verified, "
                        "estimated elsewhere)", "x: verified, exact damage; other cells: estimated")


def blocks(report: dict) -> go.Figure:
    rows = [{**n, "estimate_ci": n["exact_ci"]} for n in report["nodes"] if n["part"] != "head"]
    return block_bars(report, rows, "damage", "estimate_ci", f"Damage per block, {report['ablation']} ablation",
                      "exact with its 95% interval where verified, estimated (no interval) elsewhere")


def scatter(report: dict) -> go.Figure:
    checked = [n for n in report["nodes"] if n["verified"]]
    chart = go.Figure()
    for kind, colour in (("top-k", "#e45756"), ("random", "#4c78a8")):
        chosen = [n for n in checked if n["verified"] == kind]
        chart.add_scatter(x=[n["estimate"] for n in chosen], y=[n["exact"] for n in chosen], mode="markers",
                          name=kind, marker={"color": colour, "size": 8}, text=[n["node"] for n in chosen],
                          hovertemplate="%{text}<br>estimate %{x:.4g}<br>exact %{y:.4g}<extra>%{fullData.name}</extra>")
    values = [v for n in checked for v in (n["estimate"], n["exact"])]
    if values:
        low, high = min(values), max(values)
        chart.add_scatter(x=[low, high], y=[low, high], mode="lines", name="estimate = exact",
                          line={"color": "#999", "dash": "dash"}, hoverinfo="skip")
    v = report["verification"]
    note(chart, f"Spearman {number(v['spearman'], 3)} over {len(checked)} verified nodes; recall of their true "
                f"top-10 in the estimated top-{v['top_k']}: {number(v['recall_top10'], 3)}")
    chart.update_layout(title=title(report, "Estimated vs exact damage"), xaxis_title="estimated damage (nats)",
                        yaxis_title="exact damage (nats)", template="plotly_white", margin={"t": 90})
    return chart


def summary(report: dict) -> list:
    v, null = report["verification"], report["null_check"]
    nodes = sorted(report["nodes"], key=lambda n: -n["ranking"])[:SHOWN]
    grid = Table("node", "estimate", "exact", "95% CI", "verified", box=box.SIMPLE_HEAD, pad_edge=False)
    for n in nodes:
        grid.add_row(n["node"], number(n["estimate"]), number(n["exact"]),
                     interval_text(n["exact_ci"]) if n["exact_ci"] else "", n["verified"] or "")
    lines: list = [
        f"[bold]{escape(report['model'])}[/bold] · probe [bold]{escape(report['probe'])}[/bold] · "
        f"{len(report['nodes'])} nodes estimated ({report['ablation']} ablation; GradDrop "
        f"{'on' if report['corrections']['graddrop'] else 'off'}, QK fix {'on' if report['corrections']['qk_fix'] else 'off'})"
        f" in {report['seconds']['estimate']:.1f} s, {v['top_k']} + {v['random_sample']} verified in "
        f"{report['seconds']['verification']:.1f} s",
        "the nodes ranked first (damage in nats; L3.H2: layer 3, head 2):", grid,
        f"estimate vs exact over the verified nodes: Spearman {number(v['spearman'], 3)}; recall of their true top-10 "
        f"in the estimated top-{v['top_k']}: {number(v['recall_top10'], 3)}",
    ]
    if v["missed_effect_bound"] is not None:
        lines.append(f"missed nodes: with 95% confidence at most {v['missed_count_bound']} nodes outside the top-"
                     f"{v['top_k']} have |damage| above {number(v['missed_effect_bound'])} nats (the largest in a "
                     f"random sample of {v['random_sample']})")
    if not null["ok"]:
        lines.append(f"[bold red]warning[/bold red]: removing nothing is off by {number(null['estimate'])} (estimate) / "
                     f"{number(null['measured'])} (measured) nats: is the model in eval mode?")
    return lines
