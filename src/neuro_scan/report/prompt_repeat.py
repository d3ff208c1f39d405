"""`prompt-repeat`: prompt_repeat.json and prompt_repeat.html, repetition vs layer duplication.

prompt_repeat.json keeps the reference's ``repeat_results`` (repeat count -> mean score) and
``baseline_x1``, and adds every duplication, the equivalence curve and a verdict per count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from rich.markup import escape

from neuro_scan.report import ReportFiles
from neuro_scan.report.charts import integer_axis, interval_bars
from neuro_scan.report.document import header, summary_table
from neuro_scan.report.read import FORMATS

if TYPE_CHECKING:  # annotations only: the runner imports report modules before torch
    from neuro_scan.analysis.prompt_repeat import Condition, Duplication, Match, PromptRepeatResult
    from neuro_scan.session import RunInfo

FORMAT = FORMATS["prompt-repeat"]


def files(result: PromptRepeatResult, run: RunInfo) -> ReportFiles:
    report = document(result, run)
    return ReportFiles({"prompt_repeat.json": report}, "prompt_repeat.json", figures={"prompt_repeat.html": figure(report)})


def _condition(condition: Condition) -> dict:
    return {"score": condition.score, "accuracy": condition.accuracy, "change": condition.change.mean,
            "change_ci": condition.change.as_list(), "change_p_value": condition.change.p_value,
            "change_p_value_adjusted": condition.change.p_value_adjusted}


def _duplication(duplication: Duplication) -> dict:
    return {"first": duplication.first, "stop": duplication.stop, "size": duplication.size,
            "layers_run_twice": list(range(duplication.first, duplication.stop)), **_condition(duplication.condition)}


def _match(match: Match) -> dict:
    return {**_duplication(match.duplication), "difference": match.difference.mean,
            "difference_ci": match.difference.as_list(), "indistinguishable": match.indistinguishable}


def document(result: PromptRepeatResult, run: RunInfo) -> dict:
    report = header(run, "prompt-repeat", FORMAT)
    report.update({
        "warnings": result.warnings,
        "repeat_results": {str(r.count): r.condition.score for r in result.repetitions},
        "baseline_x1": result.baseline.score,
        "baseline": _condition(result.baseline),
        "separator": result.separator,
        "block_sizes": result.block_sizes,
        "definitions": {
            "score": "mean answer log-prob (nats)",
            "change": "score - score of the plain prompt on the plain model, paired over samples, 95% bootstrap-t "
                      "interval; p-value of change = 0, adjusted by Benjamini-Hochberg across the repeat counts (or "
                      "across the duplications); significant: adjusted p <= 0.05",
            "duplication": "layers first..stop-1 run twice: execution order 0..stop-1, first..L-1 "
                           "(layer-scan / mergekit passthrough)",
            "difference": "repetition change - duplication change, per sample; indistinguishable when its 95% "
                          "interval contains zero (per comparison, not corrected for the number of duplications)",
            "verdict": "no_effect: the repetition's change is not significant; matched: significant and at least one "
                       "duplication is indistinguishable; unlike_duplication: significant and every duplication differs",
        },
        "repetitions": [
            {"count": r.count, **_condition(r.condition), "verdict": r.verdict,
             "best_matches": [_match(m) for m in r.best_matches],
             "indistinguishable_count": len(r.indistinguishable),
             "indistinguishable": [_match(m) for m in r.indistinguishable]}
            for r in result.repetitions
        ],
        "duplications": [_duplication(d) for d in result.duplications],
        "time_seconds": round(result.seconds, 3),
    })
    return report


def figure(report: dict) -> go.Figure:
    """The equivalence curve (repetition N vs its best-matching duplication) and the duplication map."""
    chart = make_subplots(rows=2, cols=1, row_heights=[0.5, 0.5], vertical_spacing=0.14, subplot_titles=(
        "score change: repetition N vs its best-matching duplication", "score change by duplicated block"))
    reps = report["repetitions"]
    counts = [r["count"] for r in reps]

    def errors(rows: list[dict]) -> dict:
        return interval_bars([r["change"] for r in rows], [r["change_ci"] for r in rows])

    verdicts = [r["verdict"].replace("_", " ") for r in reps]
    chart.add_scatter(x=counts, y=[r["change"] for r in reps], error_y=errors(reps), mode="lines+markers+text",
                      name="prompt repeated N times", text=verdicts, textposition="top right",
                      hovertemplate="N = %{x}<br>change %{y:.4f}<br>%{text}<extra></extra>", row=1, col=1)
    best = [r["best_matches"][0] for r in reps]
    chart.add_scatter(x=counts, y=[b["change"] for b in best], error_y=errors(best), mode="markers",
                      name="best-matching duplication", marker={"symbol": "diamond", "size": 10},
                      customdata=[f"layers {b['first']}..{b['stop'] - 1} twice (K={b['size']})" for b in best],
                      hovertemplate="N = %{x}<br>%{customdata}<br>change %{y:.4f}<extra></extra>", row=1, col=1)
    sizes = report["block_sizes"]
    layers = report["total_layers"]
    z = [[None] * layers for _ in sizes]
    for dup in report["duplications"]:
        z[sizes.index(dup["size"])][dup["first"]] = dup["change"]
    chart.add_heatmap(z=z, x=list(range(layers)), y=[f"K={k}" for k in sizes], colorscale="RdBu", zmid=0,
                      colorbar={"title": "change (nats)", "y": 0.22, "len": 0.45},
                      hovertemplate="block of %{y} from layer %{x}<br>change %{z:.4f}<extra></extra>", row=2, col=1)
    chart.update_xaxes(title_text="repeat count N", tickmode="array", tickvals=counts, row=1, col=1)
    chart.update_yaxes(title_text="score change (nats)", row=1, col=1)
    chart.update_xaxes(title_text="first layer of the duplicated block", **integer_axis(layers), row=2, col=1)
    chart.update_yaxes(title_text="block size K", row=2, col=1)
    chart.update_layout(
        title=f"Prompt repetition vs layer duplication — {report['model']} · probe {report['probe']} "
              f"({report['sample_count']} samples)", template="plotly_white", height=850)
    return chart


def summary(report: dict) -> list:
    """Per repeat count: its change, the closest duplication, their difference and the verdict."""
    table = summary_table("N", "change", "95% CI", "layers twice", "difference", "verdict")

    def ci(interval: list[float]) -> str:
        return f"{interval[0]:+.2f}..{interval[1]:+.2f}"

    for rep in report["repetitions"]:
        best = rep["best_matches"][0]
        layers = str(best["first"]) if best["size"] == 1 else f"{best['first']}..{best['stop'] - 1}"
        table.add_row(str(rep["count"]), f"{rep['change']:+.3f}", ci(rep["change_ci"]), layers,
                      ci(best["difference_ci"]), rep["verdict"].replace("_", " "))
    return [f"[bold]{escape(report['model'])}[/bold] · probe {escape(report['probe'])} ({report['sample_count']} "
            f"samples) · {len(report['duplications'])} duplicated blocks of sizes {report['block_sizes']}",
            "change: score change (nats) against the plain prompt; layers twice: the duplicated block whose change is "
            "closest; difference: 95% CI of (repetition − that duplication)",
            table]
