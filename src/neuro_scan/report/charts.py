"""What the figures of every report module share: colours, layer axes, heights, marks and the
page around a figure. Pages reference ``plotly.min.js`` written once beside them, so they render
with no network; a page whose script is missing says so instead of staying blank."""

from __future__ import annotations

import html

import plotly.graph_objects as go

LABEL_COLOURS = {
    "early_processing": "#4c78a8",
    "syntax": "#72b7b2",
    "reasoning": "#e45756",
    "semantic_processing": "#54a24b",
    "formatting": "#eeca3b",
    "output": "#b279a2",
    "": "#9d9d9d",
}
PLOTLY_JS = "plotly.min.js"
SIGNIFICANCE = "adjusted p ≤ 0.05 (Benjamini-Hochberg)"  # what every significance mark means
ROW_PIXELS = 22  # height of one heatmap row (a sample, a layer) when there are many

# Shown while the page loads; removed once plotly.min.js has run. A page copied without the
# script beside it keeps the message instead of showing blank charts.
NO_PLOTLY = ('<div id="no-plotly" style="border:1px solid #e45756;background:#fdeeee;border-radius:6px;'
             'padding:8px 14px;margin:12px 0;font-family:sans-serif">The charts need <code>'
             f'{PLOTLY_JS}</code> in the same folder as this page; it is missing or could not run. Copy the '
             'whole results folder, not the page alone.</div>')
NO_PLOTLY_CHECK = ("<script>if (window.Plotly) { var m = document.getElementById('no-plotly'); "
                   "if (m) m.remove(); }</script>")


def page(figure: go.Figure) -> str:
    """A figure's own page: titled like the figure, with the missing-script message."""
    text = figure.to_html(include_plotlyjs="directory", full_html=True, config={"responsive": True})
    name = figure.layout.title.text or "neuro-scan"
    text = text.replace("<head>", f"<head><meta charset=\"utf-8\"><title>{html.escape(name)}</title>", 1)
    text = text.replace("<body>", "<body>" + NO_PLOTLY, 1)
    return text.replace("</body>", NO_PLOTLY_CHECK + "</body>", 1)


def plotly_js() -> dict[str, bytes]:
    """The script every page loads, by its file name."""
    from plotly.offline import get_plotlyjs

    return {PLOTLY_JS: get_plotlyjs().encode("utf-8")}


def integer_axis(count: int, reverse: bool = False) -> dict:
    """Axis settings for layer or head indices 0..count-1: whole-number ticks (one per index
    when few), no room for the -1 and ``count`` that do not exist; ``reverse``: 0 at the top."""
    ends = [-0.5, count - 0.5]
    return {"tickmode": "linear", "dtick": 1 if count <= 40 else max(1, count // 20), "tick0": 0,
            "range": ends[::-1] if reverse else ends}


def layer_heatmap_height(rows: int, least: int = 420) -> int:
    """A heatmap's height that grows with its rows (layers or samples), so labels never overlap."""
    return max(least, 160 + ROW_PIXELS * rows)


def title(document: dict, what: str) -> str:
    return f"{what} — {document['model']} · probe {document['probe']} ({document['sample_count']} samples)"


def interval_bars(values: list[float], intervals: list[list[float]]) -> dict:
    """Error bars from each value to the ends of its interval."""
    return {"type": "data", "symmetric": False, "array": [high - v for v, (_, high) in zip(values, intervals)],
            "arrayminus": [v - low for v, (low, _) in zip(values, intervals)]}


def shorten(text: str, width: int = 28) -> str:
    """A prompt for an axis label: one line, at most ``width`` characters, the end kept."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else "…" + flat[-(width - 1):]


def note(figure: go.Figure, text: str) -> None:
    """A line under the title saying what the marks and colours mean."""
    figure.add_annotation(text=text, xref="paper", yref="paper", x=0, y=1.0, yanchor="bottom", xanchor="left",
                          showarrow=False, font={"size": 12, "color": "#555"})
