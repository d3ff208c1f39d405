"""`ablate --granularity sublayer|head` (and `layer` with `--ablation mean`): components.json,
components.csv, components.html and the terminal summary of an exact component scan. The head
heatmap and the attention-vs-MLP bars are drawn here for attribution's report too."""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from rich import box
from rich.markup import escape
from rich.table import Table

from neuro_scan.report import ReportFiles, csv_bytes
from neuro_scan.report.charts import SIGNIFICANCE, integer_axis, interval_bars, layer_heatmap_height, note, title
from neuro_scan.report.document import header, interval_text, number, p_text, sample_list

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.components import ComponentResult
    from neuro_scan.session import RunInfo

FORMAT = "neuro-scan-components/1"
CSV_COLUMNS = ["component", "layer", "part", "head", "score", "damage", "damage_ci_low", "damage_ci_high",
               "damage_stderr", "p_value", "p_value_adjusted", "significant", "accuracy", "accuracy_drop",
               "accuracy_drop_ci_low", "accuracy_drop_ci_high"]
REMOVED = {
    "layer": "the layer's residual update is zero (the stream passes through it), or its mean",
    "sublayer": "the attention or MLP block's output (what it adds to the residual stream) is zero, or its mean; in "
                "parallel-attention layers (GPT-NeoX, Phi-1/2) the other block still reads the layer's input, so its "
                "output is the baseline's",
    "head": "the head's slice of the attention output projection's input is zero, or its mean",
}
SHOWN = 15  # components in the terminal table


def files(result: ComponentResult, run: RunInfo) -> ReportFiles:
    return files_of(document(result, run))


def files_of(report: dict) -> ReportFiles:
    """Every file of a component scan from its components.json."""
    return ReportFiles({"components.json": report}, "components.json", {"components.csv": table(report)},
                       {"components.html": figure(report)})


def document(result: ComponentResult, run: RunInfo) -> dict:
    base = result.baseline
    return {
        **header(run, "ablate", FORMAT),
        "warnings": result.warnings,
        "granularity": result.granularity,
        "ablation": result.ablation,
        "removed_definition": REMOVED[result.granularity],
        "mean_definition": "mean ablation: replaced by its mean over every real token of the probe in the baseline run",
        "num_heads": result.num_heads,
        "scan_time_seconds": round(result.seconds, 3),
        "baseline": {"score": base.score.mean, "score_ci": base.score.as_list(), "accuracy": base.accuracy.mean,
                     "accuracy_ci": base.accuracy.as_list()},
        "damage_definition": "baseline - ablated mean answer log-prob (nats); positive: removing it hurts",
        "significance_definition": "damage_ci: 95% bootstrap-t interval over samples; p_value_adjusted: "
                                   "Benjamini-Hochberg across the components of the scan; significant: <= 0.05",
        "components": [_row(c) for c in result.components],
        "ranked": [str(c.target) for c in result.ranked],
        "samples": sample_list(run.probe),
        "per_sample": {"baseline": result.baseline_logprob.tolist(), "ablated": result.ablated_logprob.tolist()},
    }


def _row(component) -> dict:
    target = component.target
    return {"component": str(target), "layer": target.layer, "part": target.part,
            "head": target.head if target.part == "head" else None, "score": component.score,
            "damage": component.damage.mean, "damage_ci": component.damage.as_list(),
            "damage_stderr": component.damage.stderr, "p_value": component.damage.p_value,
            "p_value_adjusted": component.damage.p_value_adjusted,
            "significant": component.significant_damage or component.significant_gain,
            "accuracy": component.accuracy, "accuracy_drop": component.accuracy_drop.mean,
            "accuracy_drop_ci": component.accuracy_drop.as_list()}


def table(report: dict) -> bytes:
    rows = [{**{k: r[k] for k in CSV_COLUMNS if k in r}, "damage_ci_low": r["damage_ci"][0],
             "damage_ci_high": r["damage_ci"][1], "accuracy_drop_ci_low": r["accuracy_drop_ci"][0],
             "accuracy_drop_ci_high": r["accuracy_drop_ci"][1]} for r in report["components"]]
    return csv_bytes(CSV_COLUMNS, rows)


def figure(report: dict) -> go.Figure:
    rows = report["components"]
    what = f"{report['ablation']} ablation"
    if report["granularity"] == "head":
        grid = head_grid(rows, report["total_layers"], report["num_heads"], "damage")
        marked = [(r["layer"], r["head"]) for r in rows if r["significant"]]
        return head_heatmap(report, grid, marked, f"Damage per head ({what})",
                            f"x: significant damage or gain ({SIGNIFICANCE})")
    return block_bars(report, rows, "damage", "damage_ci", f"Damage per {report['granularity']} ({what})",
                      "bars: 95% intervals over samples")


def head_grid(rows: list[dict], layers: int, heads: int, key: str) -> list[list[float | None]]:
    """[layer][head] of ``key`` from rows of heads (None where a head has no row)."""
    grid: list[list[float | None]] = [[None] * heads for _ in range(layers)]
    for row in rows:
        if row["part"] == "head" and row.get(key) is not None:
            grid[row["layer"]][row["head"]] = row[key]
    return grid


def head_heatmap(report: dict, grid: list[list[float | None]], marked: list[tuple[int, int]], what: str,
                 marking: str) -> go.Figure:
    """Layers down, heads across, damage in a diverging scale centred on zero; ``marked`` cells
    carry an x (what the x means: ``marking``)."""
    values = [v for row in grid for v in row if v is not None]
    extent = max((abs(v) for v in values), default=1.0) or 1.0
    heads = len(grid[0]) if grid else 0
    chart = go.Figure(go.Heatmap(z=grid, x=list(range(heads)), y=list(range(len(grid))), colorscale="RdBu_r",
                                 zmin=-extent, zmax=extent, colorbar={"title": "nats"},
                                 hovertemplate="layer %{y}, head %{x}<br>damage %{z:.4g} nats<extra></extra>"))
    if marked:
        chart.add_scatter(x=[h for _, h in marked], y=[layer for layer, _ in marked], mode="markers", name=marking,
                          marker={"symbol": "x-thin", "size": 9, "line": {"width": 2, "color": "black"}},
                          hoverinfo="skip")
    note(chart, marking)
    chart.update_layout(title=title(report, what), xaxis_title="head", yaxis_title="layer", template="plotly_white",
                        xaxis=integer_axis(heads), yaxis=integer_axis(len(grid), reverse=True), margin={"t": 90},
                        height=layer_heatmap_height(len(grid)), showlegend=False)
    return chart


def block_bars(report: dict, rows: list[dict], key: str, interval_key: str, what: str, marking: str) -> go.Figure:
    """Per layer, a bar per part (attention, MLP, whole layer) with its interval where it has one
    (what the bars mean: ``marking``)."""
    chart = go.Figure()
    colours = {"attention": "#4c78a8", "mlp": "#f58518", "layer": "#54a24b"}
    for part, colour in colours.items():
        chosen = [r for r in rows if r["part"] == part and r.get(key) is not None]
        if not chosen:
            continue
        values = [r[key] for r in chosen]
        intervals = [r.get(interval_key) or [v, v] for r, v in zip(chosen, values)]
        chart.add_bar(x=[r["layer"] for r in chosen], y=values, name=part, marker_color=colour,
                      error_y=interval_bars(values, intervals),
                      customdata=[[*i, p_text(r.get("p_value_adjusted"))] for r, i in zip(chosen, intervals)],
                      hovertemplate=f"layer %{{x}} {part}<br>damage %{{y:.4g}} nats<br>95% CI "
                                    "%{customdata[0]:.4g}..%{customdata[1]:.4g}<br>adjusted p %{customdata[2]}"
                                    "<extra></extra>")
    note(chart, marking)
    chart.update_layout(title=title(report, what), xaxis_title="layer", barmode="group", template="plotly_white",
                        yaxis_title="damage = baseline − ablated score (nats)", margin={"t": 90},
                        xaxis=integer_axis(report["total_layers"]))
    return chart


def summary(report: dict) -> list:
    base = report["baseline"]
    rows = {r["component"]: r for r in report["components"]}
    shown = report["ranked"][:SHOWN]
    grid = Table("component", "damage", "95% CI", "adj. p", "sig.", "acc. w/o", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in shown:
        row = rows[name]
        grid.add_row(name, number(row["damage"]), interval_text(row["damage_ci"]), p_text(row["p_value_adjusted"]),
                     "yes" if row["significant"] else "no", f"{row['accuracy']:.3f}")
    significant = [r for r in report["components"] if r["significant"] and r["damage"] > 0]
    return [
        f"[bold]{escape(report['model'])}[/bold] · probe [bold]{escape(report['probe'])}[/bold] · "
        f"{report['sample_count']} samples · {len(rows)} components ({report['granularity']}, {report['ablation']} "
        f"ablation) in {report['scan_time_seconds']:.1f} s",
        f"baseline: answer log-prob {number(base['score'])} (95% CI {interval_text(base['score_ci'])}), "
        f"accuracy {base['accuracy']:.3f}",
        "the most damaging components (damage: nats lost without it; L3.H2: layer 3, head 2):", grid,
        f"significant damage: {len(significant)} of {len(rows)} components (adjusted p <= 0.05)",
    ]
