"""`circuit`: circuit.json and circuit.html, layer pairs with their interactions and intervals.

circuit.json keeps the reference's keys (``strategy``, ``top_k``, ``total_pairs``,
``total_evals``, ``time_seconds``, ``synergistic``, ``redundant``, ``all_interactions`` with
``layer_i``, ``layer_j``, ``interaction_effect``, ``interaction_type``, ``joint_delta``,
``individual_delta_i``, ``individual_delta_j``) and adds intervals and provenance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from rich.markup import escape

from neuro_scan.report import ReportFiles
from neuro_scan.report.charts import SIGNIFICANCE, integer_axis, layer_heatmap_height, note
from neuro_scan.report.document import header, interval_text, number, summary_table
from neuro_scan.report.read import FORMATS

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.circuit import CircuitResult, CircuitRun, PairInteraction
    from neuro_scan.session import RunInfo

FORMAT = FORMATS["circuit"]
KINDS = ("synergistic", "redundant", "independent")


def files(result: CircuitRun, run: RunInfo) -> ReportFiles:
    report = document(result, run)
    return ReportFiles({"circuit.json": report}, "circuit.json", figures={"circuit.html": figure(report)})


def _pair(pair: PairInteraction, result: CircuitResult) -> dict:
    damage = result.singles.layers
    return {
        "layer_i": pair.first,
        "layer_j": pair.second,
        "interaction_effect": pair.interaction.mean,
        "interaction_ci": pair.interaction.as_list(),
        "interaction_stderr": pair.interaction.stderr,
        "interaction_p_value": pair.interaction.p_value,
        "interaction_p_value_adjusted": pair.interaction.p_value_adjusted,
        "interaction_type": pair.kind,
        "joint_delta": pair.joint_damage.mean,
        "joint_delta_ci": pair.joint_damage.as_list(),
        "individual_delta_i": damage[pair.first].damage.mean,
        "individual_delta_j": damage[pair.second].damage.mean,
        "reason": pair.reason,
    }


def document(run_result: CircuitRun, run: RunInfo) -> dict:
    result, plan = run_result.result, run_result.result.plan
    report = header(run, "circuit", FORMAT)
    report.update({
        "warnings": run_result.warnings,
        "strategy": plan.strategy,
        "top_k": len(plan.candidates),
        "candidate_layers": plan.candidates,
        "total_pairs": len(plan.pairs),
        "pair_evaluations": len(plan.pairs),
        "total_evals": len(plan.pairs) * report["sample_count"],
        "evals_definition": "total_evals = pairs x samples (as the reference counts); each pair resumes from the "
                            "baseline's cached stream at its first layer, several pairs per forward",
        "time_seconds": round(result.seconds, 3),
        "single_layer_scan": run_result.singles_source,
        "score_definition": "damage = baseline - ablated mean answer log-prob (nats), per sample",
        "interaction_definition": "joint_delta - (individual_delta_i + individual_delta_j), per sample, then averaged; "
                                  "95% paired bootstrap-t interval over samples",
        "significance": "p-value: two-sided bootstrap-t test of interaction = 0; adjusted: Benjamini-Hochberg across "
                        "the pairs tested. synergistic: adjusted p <= 0.05 and interaction > 0; redundant: adjusted "
                        "p <= 0.05 and interaction < 0; otherwise independent (docs/statistics.md)",
        "expected_false_positives_if_independent": result.expected_false_positives,
        "expected_false_positives_definition": "pairs an uncorrected 5% test would call significant if no pair "
                                               "interacted (the correction keeps them out of the lists)",
        "expected_false_discoveries": result.expected_false_discoveries,
        "expected_false_discoveries_definition": "q = 0.05 times the significant pairs: about how many of them may "
                                                 "be false discoveries",
        "single_layers": [
            {"layer_idx": layer.layer, "score_delta": layer.damage.mean, "score_delta_ci": layer.damage.as_list()}
            for layer in result.singles.layers
        ],
        "synergistic": [_pair(p, result) for p in result.synergistic],
        "redundant": [_pair(p, result) for p in result.redundant],
        "all_interactions": [_pair(p, result) for p in result.pairs],
        "layer_similarity": plan.similarity.tolist() if plan.similarity is not None else None,
        "layer_similarity_definition": "cosine of two layers' outputs at the same token, mean over every probe token"
                                       if plan.similarity is not None else None,
    })
    return report


def figure(report: dict) -> go.Figure:
    """Layer x layer heatmap of the interaction (symmetric; untested pairs blank)."""
    size = report["total_layers"]
    z: list[list[float | None]] = [[None] * size for _ in range(size)]
    text: list[list[str]] = [[""] * size for _ in range(size)]
    marks = {"synergistic": ([], []), "redundant": ([], [])}
    for pair in report["all_interactions"]:
        i, j = pair["layer_i"], pair["layer_j"]
        low, high = pair["interaction_ci"]
        label = (f"{pair['interaction_type']}<br>95% CI {low:.4f}..{high:.4f}, adjusted p "
                 f"{pair['interaction_p_value_adjusted']:.2g}<br>joint damage {pair['joint_delta']:.4f}"
                 f"<br>damage alone {pair['individual_delta_i']:.4f} + {pair['individual_delta_j']:.4f}"
                 f"<br>tested as: {pair['reason']}")
        for a, b in ((i, j), (j, i)):
            z[b][a] = pair["interaction_effect"]
            text[b][a] = label
        if pair["interaction_type"] in marks:  # one triangle only: the map is symmetric
            marks[pair["interaction_type"]][0].append(j)
            marks[pair["interaction_type"]][1].append(i)
    chart = go.Figure(go.Heatmap(
        z=z, x=list(range(size)), y=list(range(size)), text=text, colorscale="RdBu_r", zmid=0,
        hovertemplate="layers %{x} and %{y}<br>interaction %{z:.4f} nats<br>%{text}<extra></extra>",
        colorbar={"title": "interaction (nats)"},
    ))
    for kind, symbol in (("synergistic", "circle"), ("redundant", "x")):
        xs, ys = marks[kind]
        if xs:
            chart.add_scatter(x=xs, y=ys, mode="markers", name=f"{kind} (significant)",
                              marker={"symbol": symbol, "size": 6, "color": "black"}, hoverinfo="skip")
    note(chart, f"colour: interaction of the pair (blank: not tested); marks: significant, {SIGNIFICANCE}")
    chart.update_layout(
        title=(f"Layer-pair interactions — {report['model']} · probe {report['probe']} ({report['sample_count']} samples)"
               f" · {report['strategy']}: {report['total_pairs']} pairs"),
        xaxis_title="layer", yaxis_title="layer", template="plotly_white", margin={"t": 100},
        legend={"orientation": "h", "yanchor": "top", "y": -0.1, "xanchor": "left", "x": 0},
        xaxis={"scaleanchor": "y", "constrain": "domain", **integer_axis(size)},
        yaxis=integer_axis(size, reverse=True), height=layer_heatmap_height(size, 560),
    )
    return chart


def summary(report: dict) -> list:
    """How many pairs of each kind, and the strongest synergistic and redundant pairs."""
    counts = {kind: sum(p["interaction_type"] == kind for p in report["all_interactions"]) for kind in KINDS}
    pairs = summary_table("pair", "type", "interaction", "95% CI", "joint damage", "damage alone")
    for pair in report["synergistic"][:5] + report["redundant"][:5]:
        pairs.add_row(f"{pair['layer_i']}+{pair['layer_j']}", pair["interaction_type"],
                      number(pair["interaction_effect"]), interval_text(pair["interaction_ci"]),
                      number(pair["joint_delta"]),
                      f"{number(pair['individual_delta_i'])} + {number(pair['individual_delta_j'])}")
    return [f"[bold]{escape(report['model'])}[/bold] · probe {escape(report['probe'])} · {report['strategy']}: "
            f"{report['total_pairs']} pairs in {report['time_seconds']:.1f} s: {counts['synergistic']} synergistic, "
            f"{counts['redundant']} redundant, {counts['independent']} independent (false-discovery rate 5%: about "
            f"{report['expected_false_discoveries']:.1f} of the significant may be chance)",
            *(["the strongest significant pairs (nats):", pairs] if pairs.row_count else
              ["no pair interacts significantly (adjusted p <= 0.05)"])]
