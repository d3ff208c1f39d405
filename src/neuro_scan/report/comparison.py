"""`compare`: comparison.json and comparison.html. No torch here: `neuro-scan compare` only reads JSON.

comparison.json keeps the reference's keys (``models`` with ``name``, ``total_layers``,
``baseline_score``, ``reasoning_layers``, ``reasoning_fraction``, ``top_important_layers``;
``similarity_matrix`` (Pearson); ``shared_reasoning_layers``; ``model_rankings`` with ``model``
and ``mean_sensitivity``) and is always valid JSON: undefined correlations are null.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from rich.markup import escape

from neuro_scan.report import ReportFiles
from neuro_scan.report.document import correlation_text, number, stamp, summary_table
from neuro_scan.report.read import FORMATS

if TYPE_CHECKING:  # annotations only
    from neuro_scan.analysis.compare import Comparison, ModelProfile, SharedDepth

FORMAT = FORMATS["comparison"]


def files(result: Comparison) -> ReportFiles:
    report = document(result)
    return ReportFiles({"comparison.json": report}, "comparison.json", figures={"comparison.html": figure(report)})


def _shared(entries: list[SharedDepth]) -> list[dict]:
    return [{"relative_depth": round(s.relative_depth, 4), "layers": s.layers} for s in entries]


def _model(profile: ModelProfile) -> dict:
    peak = profile.most_damaging_layer
    return {
        "name": profile.name,
        "model": profile.model,
        "file": profile.source,
        "probe": profile.probe,
        "total_layers": profile.total_layers,
        "baseline_score": profile.baseline_score,
        "score_unit": profile.unit,
        "mean_sensitivity": profile.mean_sensitivity,
        "flat_profile": profile.flat,
        "most_damaging_layer": peak,
        "most_damaging_relative_depth": round(float(profile.depths[peak]), 4),
        "reasoning_layers": profile.reasoning_layers,
        "reasoning_layers_from": profile.reasoning_source,
        "reasoning_relative_depths": [round(float(profile.depths[i]), 4) for i in profile.reasoning_layers],
        "reasoning_fraction": profile.reasoning_fraction,
        "top_important_layers": profile.top_layers,
        "significant_layers": profile.significant_layers,
        "damage_profile": profile.damage.tolist(),
    }


def document(result: Comparison) -> dict:
    profiles = result.profiles
    return {
        **stamp("compare", FORMAT),
        "warnings": result.warnings,
        "models": [_model(p) for p in profiles],
        "names": [p.name for p in profiles],
        "similarity_matrix": result.pearson,
        "similarity_method": "pearson",
        "spearman_matrix": result.spearman,
        "flat_profiles": [p.name for p in profiles if p.flat],
        "shared_reasoning_layers": _shared(result.shared_reasoning),
        "pairwise_shared_reasoning_layers": {f"{a} vs {b}": _shared(s) for (a, b), s in result.pairwise_shared.items()},
        "relative_depth_tolerance": result.tolerance,
        "model_rankings": [{"model": p.name, "mean_sensitivity": p.mean_sensitivity} for p in result.ranked_profiles],
        "rankings_comparable": result.comparable_means,
        "method": {
            "relative_depth": "layer / (L - 1)",
            "similarity": f"damage profiles linearly interpolated onto {len(result.grid)} evenly spaced relative depths "
                          "(the deepest model's layers), then Pearson and Spearman correlation; null for a flat profile",
            "shared_reasoning_layers": "relative depths where every model has a reasoning layer (labelled 'reasoning', "
                                       "else top_important_layers) within the tolerance",
            "model_rankings": "mean damage over layers; comparable only within one score unit and one probe",
        },
    }


def _distinct_tails(paths: list[str]) -> list[str]:
    """The fewest trailing parts of the paths that tell them apart (the whole paths if none do)."""
    parts = [Path(path).parts for path in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        tails = [str(Path(*p[-depth:])) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return paths


def legend_names(models: list[dict]) -> list[str]:
    """Each model's name for the chart; reports of the same model are told apart by the end of
    their file's path, never the whole (absolute) path."""
    names = [model["name"] for model in models]
    repeated = [model for model, count in Counter(m["model"] for m in models).items() if count > 1]
    for model in repeated:
        chosen = [i for i, m in enumerate(models) if m["model"] == model]
        for i, tail in zip(chosen, _distinct_tails([models[i]["file"] for i in chosen])):
            names[i] = f"{model} ({tail})"
    return names if len(set(names)) == len(names) else [model["name"] for model in models]  # one file given twice


def figure(report: dict) -> go.Figure:
    """Damage profiles on relative depth (each scaled by its largest |damage|), and the similarity matrix."""
    chart = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1,
                          subplot_titles=("damage by relative depth (scaled to max |damage| = 1)", "Pearson similarity"))
    palette = plotly.colors.qualitative.Plotly
    names = legend_names(report["models"])
    for index, model in enumerate(report["models"]):
        colour = palette[index % len(palette)]
        damage = np.asarray(model["damage_profile"])
        scale = np.abs(damage).max() or 1.0
        depths = np.arange(len(damage)) / max(len(damage) - 1, 1)
        chart.add_scatter(x=depths, y=damage / scale, mode="lines+markers", name=names[index], line={"color": colour},
                          customdata=np.stack([np.arange(len(damage)), damage], axis=1),
                          hovertemplate="layer %{customdata[0]} (depth %{x:.2f})<br>damage %{customdata[1]:.4f}"
                                        "<extra>%{fullData.name}</extra>", row=1, col=1)
        reasoning = model["reasoning_layers"]
        if reasoning:
            chart.add_scatter(x=depths[reasoning], y=damage[reasoning] / scale, mode="markers", showlegend=False,
                              marker={"symbol": "star", "size": 12, "color": colour, "line": {"width": 1, "color": "black"}},
                              name=f"{names[index]} reasoning", hovertemplate="reasoning layer<extra>%{fullData.name}</extra>",
                              row=1, col=1)
    for shared in report["shared_reasoning_layers"]:
        chart.add_vline(x=shared["relative_depth"], line={"color": "gold", "dash": "dot"}, row=1, col=1)
    chart.add_heatmap(z=report["similarity_matrix"], x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu_r",
                      texttemplate="%{z:.2f}", hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>", row=1, col=2)
    chart.update_xaxes(title_text="relative depth = layer / (L - 1)", row=1, col=1)
    chart.update_layout(title="Model comparison (stars: reasoning layers; dotted: shared reasoning depths)",
                        template="plotly_white", height=650,
                        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0})
    return chart


def summary(report: dict) -> list:
    """Per model: depth, probe, mean damage, peak and reasoning layers; each pair's correlations; shared depths."""
    table = summary_table("model", "layers", "probe", "mean damage", "peak (depth)", "reasoning layers")
    for model, name in zip(report["models"], legend_names(report["models"])):
        table.add_row(escape(name), str(model["total_layers"]), escape(model["probe"]), number(model["mean_sensitivity"]),
                      f"{model['most_damaging_layer']} ({model['most_damaging_relative_depth']:.2f})",
                      ", ".join(map(str, model["reasoning_layers"])) or "none")
    lines: list = [*(f"[yellow]warning:[/yellow] {escape(warning)}" for warning in report.get("warnings", [])), table]
    names = report["names"]
    for i, j in ((i, j) for i in range(len(names)) for j in range(i + 1, len(names))):
        lines.append(f"{escape(names[i])} vs {escape(names[j])}: "
                     f"Pearson {correlation_text(report['similarity_matrix'][i][j])}, "
                     f"Spearman {correlation_text(report['spearman_matrix'][i][j])}")
    shared = [f"{s['relative_depth']:.2f}" for s in report["shared_reasoning_layers"]]
    lines.append(f"shared reasoning depths (±{report['relative_depth_tolerance']}): {', '.join(shared) or 'none'}")
    return lines
