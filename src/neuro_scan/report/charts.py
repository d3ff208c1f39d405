"""What the figures of every report module share. Pages reference ``plotly.min.js`` written once
beside them, so they render with no network."""

from __future__ import annotations

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


def page(figure: go.Figure) -> str:
    return figure.to_html(include_plotlyjs="directory", full_html=True, config={"responsive": True})


def plotly_js() -> dict[str, bytes]:
    """The script every page loads, by its file name."""
    from plotly.offline import get_plotlyjs

    return {PLOTLY_JS: get_plotlyjs().encode("utf-8")}


def integer_axis(count: int) -> dict:
    """Axis settings for layer or head indices: whole-number ticks, one per index when few."""
    return {"tickmode": "linear", "dtick": 1 if count <= 40 else max(1, count // 20), "tick0": 0}


def title(document: dict, what: str) -> str:
    return f"{what} — {document['model']} · probe {document['probe']} ({document['sample_count']} samples)"


def interval_bars(values: list[float], intervals: list[list[float]]) -> dict:
    """Error bars from each value to the ends of its interval."""
    return {"type": "data", "symmetric": False, "array": [high - v for v, (_, high) in zip(values, intervals)],
            "arrayminus": [v - low for v, (low, _) in zip(values, intervals)]}
