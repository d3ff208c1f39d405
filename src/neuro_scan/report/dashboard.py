"""index.html: one offline page with the run's summary, its key numbers, every chart and the
label table. Charts are the same figures as the individual pages."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from neuro_scan.report.charts import LABEL_COLOURS, PLOTLY_JS

TITLES = {"ablation.html": "Ablation", "logit_lens.html": "Logit lens", "entropy_profile.html": "Entropy profile",
          "attention.html": "Attention entropy"}  # each chart's heading, by its page

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 16px 24px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 4px; } h2 { font-size: 1.15em; margin-top: 28px; }
.meta { color: #555; margin-bottom: 16px; }
.numbers { display: flex; flex-wrap: wrap; gap: 12px; }
.number { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.number b { display: block; font-size: 1.3em; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border-bottom: 1px solid #eee; padding: 4px 8px; text-align: left; vertical-align: top; }
.label { border-radius: 4px; padding: 1px 6px; color: #fff; white-space: nowrap; }
.chart { min-height: 420px; }
.failed { border: 1px solid #e45756; background: #fdeeee; border-radius: 6px; padding: 8px 14px; margin: 12px 0; }
"""


def _number(title: str, value: str) -> str:
    return f'<div class="number">{html.escape(title)}<b>{html.escape(value)}</b></div>'


def _label_table(report: dict) -> str:
    details = report.get("layer_label_details", {})
    rows = {r["layer_idx"]: r for r in report["ablation_results"]}
    influence = report.get("block_influence") or []
    lines = ["<table><tr><th>layer</th><th>label</th><th>damage (nats)</th><th>95% CI</th>"
             "<th>accuracy without</th><th>block influence</th><th>why</th></tr>"]
    for layer in range(report["total_layers"]):
        row = rows[layer]
        detail = details.get(str(layer), {})
        label = report["layer_labels"].get(str(layer), "")
        low, high = row["score_delta_ci"]
        bi = f"{influence[layer]:.3f}" if layer < len(influence) else ""
        lines.append(
            f"<tr><td>{layer}</td><td><span class='label' style='background:{LABEL_COLOURS.get(label, '#999')}'>"
            f"{html.escape(label)}</span></td><td>{row['score_delta']:.4f}</td><td>{low:.4f}..{high:.4f}</td>"
            f"<td>{row['accuracy']:.3f}</td><td>{bi}</td><td>{html.escape(detail.get('reason', ''))}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _failures(failed: dict[str, str]) -> str:
    return "".join(f"<div class='failed'><b>The {html.escape(phase)} phase failed</b>: {html.escape(error.rstrip('.'))}. "
                   "Its charts and keys are left out; everything else in this report is complete.</div>"
                   for phase, error in failed.items())


def dashboard_page(report: dict, figures: dict[str, go.Figure], failed: dict[str, str] | None = None) -> str:
    """``figures``: by page name; ``failed``: phase -> error, for the phases that failed (their
    figures are not given)."""
    failed = failed or {}
    baseline = report["baseline"]
    lens = report.get("logit_lens") or {}
    emergence = lens.get("emergence_layer")
    emerges = "lens failed" if "lens" in failed else "never" if emergence is None else f"layer {emergence}"
    numbers = [
        _number("baseline answer log-prob", f"{baseline['score']:.3f} [{baseline['score_ci'][0]:.3f}, {baseline['score_ci'][1]:.3f}]"),
        _number("baseline accuracy", f"{baseline['accuracy']:.3f}"),
        _number("top layers", ", ".join(str(i) for i in report["top_important_layers"][:6]) or "none"),
        _number("significant layers", f"{len(report.get('significantly_important_layers', []))} of {report['total_layers']}"),
        _number("answer emerges (lens)", emerges),
        _number("scan time", f"{report['scan_time_seconds']:.1f} s"),
    ]
    charts = "\n".join(
        f"<h2>{html.escape(TITLES.get(name, name))}</h2><div class='chart'>"
        f"{figure.to_html(full_html=False, include_plotlyjs=False, config={'responsive': True})}</div>"
        for name, figure in figures.items()
    )
    title = f"neuro-scan map: {report['model']} · {report['probe']}"
    meta = (f"{report['sample_count']} samples · {report['total_layers']} layers · {report['dtype']} on "
            f"{report['device']} · {report['backend']} backend · neuro-scan {report['tool']['version']} · "
            f"{report['created_at']}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style>
<script src="{PLOTLY_JS}"></script></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">{html.escape(meta)}</div>
<div class="numbers">{''.join(numbers)}</div>
{_failures(failed)}
{charts}
<h2>Layer labels</h2>
{_label_table(report)}
</body></html>
"""
