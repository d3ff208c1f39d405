"""index.html: one offline page with the run's warnings on top, its key numbers, the labels along
depth, every chart, the layer table and the per-sample table. Charts are the same figures as the
individual pages."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from neuro_scan.report.charts import LABEL_COLOURS, NO_PLOTLY, NO_PLOTLY_CHECK, PLOTLY_JS, SIGNIFICANCE, shorten
from neuro_scan.report.document import correlation_text, interval_text, number, p_text

TITLES = {"ablation.html": "Ablation damage", "accuracy.html": "Accuracy without each layer",
          "logit_lens.html": "Logit lens", "lens_comparison.html": "Logit lens and tuned lens",
          "entropy_profile.html": "Entropy profile",
          "block_influence.html": "Block influence", "attention.html": "Attention entropy"}  # headings, by page

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 16px 24px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 4px; } h2 { font-size: 1.15em; margin-top: 28px; }
.meta { color: #555; margin-bottom: 16px; }
.numbers { display: flex; flex-wrap: wrap; gap: 12px; }
.number { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 150px; max-width: 360px; }
.number b { display: block; font-size: 1.3em; }
.number small { display: block; color: #777; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border-bottom: 1px solid #eee; padding: 4px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.label { border-radius: 4px; padding: 1px 6px; color: #fff; white-space: nowrap; }
.weak { opacity: 0.55; font-style: italic; }
.muted { color: #888; }
.chart { min-height: 420px; }
.failed { border: 1px solid #e45756; background: #fdeeee; border-radius: 6px; padding: 8px 14px; margin: 12px 0; }
.warnings { border: 1px solid #d9a400; background: #fff7dc; border-radius: 6px; padding: 8px 14px; margin: 12px 0; }
.warnings ul { margin: 4px 0 0 0; padding-left: 20px; }
.strip { display: flex; gap: 1px; margin: 8px 0 2px 0; }
.strip div { flex: 1; height: 28px; }
.strip div.weak { opacity: 0.45; background-image: repeating-linear-gradient(45deg, transparent 0 4px,
                  rgba(255,255,255,0.7) 4px 6px); }
.strip-axis { display: flex; justify-content: space-between; color: #777; font-size: 0.8em; }
.legend span { margin-right: 10px; white-space: nowrap; }
.scroll { max-height: 480px; overflow-y: auto; }
"""


def _number(title: str, value: str, note: str = "") -> str:
    small = f"<small>{html.escape(note)}</small>" if note else ""
    return f'<div class="number">{html.escape(title)}<b>{html.escape(value)}</b>{small}</div>'


def _warnings(report: dict) -> str:
    warnings = report.get("warnings") or []
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(warning)}</li>" for warning in warnings)
    return f"<div class='warnings'><b>Read this report with care</b><ul>{items}</ul></div>"


def _evidence(report: dict, layer: int) -> str:
    details = (report.get("layer_label_details") or {}).get(str(layer), {})
    return (details.get("signals") or {}).get("evidence", "")


def _label_strip(report: dict) -> str:
    """The labels along depth: one coloured cell per layer (faded and hatched: weak evidence)."""
    labels = report.get("layer_labels") or {}
    if not any(labels.values()):
        return ""
    total = report["total_layers"]
    details = report.get("layer_label_details") or {}
    cells = "".join(
        f"<div class='{'weak' if _evidence(report, layer) == 'weak' else ''}' "
        f"style='background:{LABEL_COLOURS.get(labels.get(str(layer), ''), '#999')}' "
        f"title='layer {layer}: {html.escape(labels.get(str(layer), ''))} — "
        f"{html.escape(details.get(str(layer), {}).get('reason', ''), quote=True)}'></div>"
        for layer in range(total))
    used = [name for name in LABEL_COLOURS if name and name in labels.values()]
    legend = "".join(f"<span><span class='label' style='background:{LABEL_COLOURS[name]}'>{name}</span></span>"
                     for name in used)
    return (f"<h2>Labels along depth</h2><div class='strip'>{cells}</div>"
            f"<div class='strip-axis'><span>layer 0</span><span>layer {total - 1}</span></div>"
            f"<p class='legend'>{legend} <span class='muted'>faded, hatched: weak evidence (a guess); hover a "
            "layer for its reason</span></p>")


def _label_table(report: dict) -> str:
    details = report.get("layer_label_details", {})
    rows = {r["layer_idx"]: r for r in report["ablation_results"]}
    influence = report.get("block_influence") or []
    top = set(report.get("top_important_layers", []))
    lines = ["<table><tr><th>layer</th><th>label</th><th>damage (nats)</th><th>95% CI</th><th>adjusted p</th>"
             "<th>significant</th><th>accuracy without</th><th>block influence</th><th>why</th></tr>"]
    for layer in range(report["total_layers"]):
        row = rows[layer]
        label = report["layer_labels"].get(str(layer), "")
        weak = _evidence(report, layer) == "weak"
        badge = (f"<span class='label{' weak' if weak else ''}' style='background:{LABEL_COLOURS.get(label, '#999')}'>"
                 f"{html.escape(label)}</span>{' <i class=muted>weak</i>' if weak else ''}")
        significant = ("yes" + (" ★" if layer in top else "")) if row["significant"] else "<span class=muted>no</span>"
        bi = f"{influence[layer]:.3f}" if layer < len(influence) else ""
        lines.append(
            f"<tr><td>{layer}</td><td>{badge}</td><td class=num>{number(row['score_delta'])}</td>"
            f"<td class=num>{interval_text(row['score_delta_ci'])}</td><td class=num>{p_text(row.get('p_value_adjusted'))}"
            f"</td><td>{significant}</td><td class=num>{row['accuracy']:.3f}</td><td class=num>{bi}</td>"
            f"<td>{html.escape(details.get(str(layer), {}).get('reason', ''))}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _sample_table(report: dict) -> str:
    """A row per sample: prompt, answer, whether the model gets it right, its answer log-prob and
    (with the lens) from which layer the answer stays top-1."""
    samples = report.get("samples") or []
    per_sample = (report.get("per_sample") or {}).get("baseline") or {}
    if not samples or not per_sample:
        return ""
    emergence = (report.get("logit_lens") or {}).get("per_sample_emergence") or [None] * len(samples)
    lines = ["<div class='scroll'><table><tr><th>#</th><th>prompt</th><th>answer</th><th>category</th>"
             "<th>correct</th><th>answer log-prob (nats)</th><th>stays top-1 in the lens from layer</th></tr>"]
    for index, (sample, correct, logprob, emerges) in enumerate(zip(samples, per_sample["correct"],
                                                                      per_sample["answer_logprob"], emergence)):
        lines.append(f"<tr><td>{index + 1}</td><td title='{html.escape(sample['prompt'], quote=True)}'>"
                     f"{html.escape(shorten(sample['prompt'], 60))}</td><td>{html.escape(repr(sample['answer']))}</td>"
                     f"<td>{html.escape(sample['category'])}</td><td>{'yes' if correct else '<b>no</b>'}</td>"
                     f"<td class=num>{number(logprob)}</td><td class=num>{'never' if emerges is None else emerges}</td></tr>")
    lines.append("</table></div>")
    return "<h2>Samples (baseline)</h2>" + "\n".join(lines)


def _proxies(report: dict) -> list[str]:
    """The proxy audit's card: how block influence and whole-layer AtP rank the layers against the
    exact damage (or why there are no figures)."""
    audit = report.get("proxy_audit")
    if not audit:
        return []
    if audit["status"] != "done":
        return [_number("proxies vs exact damage", audit["status"], audit.get("error", ""))]
    return [_number("proxies vs exact damage", f"BI {correlation_text(audit['spearman_block_influence'])} · "
                    f"AtP {correlation_text(audit['spearman_atp'])}",
                    f"Spearman over layers; below {audit['low_correlation']} a proxy misleads")]


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
    top = report["top_important_layers"]
    rest = report.get("top_layers_not_significant", [])
    significant = report.get("significantly_important_layers", [])
    numbers = [
        _number("baseline answer log-prob", f"{number(baseline['score'])}", f"95% CI {interval_text(baseline['score_ci'])}"),
        _number("baseline accuracy", f"{baseline['accuracy']:.3f}", f"{report['sample_count']} samples"),
        _number("top layers (significant)", ", ".join(map(str, top)) or "none",
                f"most damaging, not significant: {', '.join(map(str, rest))}" if rest else ""),
        _number("significant layers", f"{len(significant)} of {report['total_layers']}", SIGNIFICANCE),
        _number("answer emerges (lens)", emerges),
        _number("scan time", f"{report['scan_time_seconds']:.1f} s"),
        *_proxies(report),
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
{_warnings(report)}
{NO_PLOTLY}
<div class="numbers">{''.join(numbers)}</div>
{_failures(failed)}
{_label_strip(report)}
{charts}
<h2>Layers</h2>
{_label_table(report)}
{_sample_table(report)}
{NO_PLOTLY_CHECK}
</body></html>
"""
