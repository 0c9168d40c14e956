"""The one way the reports and the dashboard draw: Plotly figures in self-contained HTML pages.

Every page made here carries the plotly.js bundle once, inline in its ``<head>``
(:func:`html_page`); each chart is a ``<div>`` and a ``Plotly.newPlot`` call with the
figure's data and layout as JSON (:func:`chart_html`), so a page loads nothing from the
network and a test reads the exact numbers a chart draws from the page itself. The page
needs JavaScript (a browser, not a mail client).

The figure builders below are the shapes the reports use; every title, label and hover text is
data to Plotly (escaped by it), never HTML written here.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from html import escape

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

# Tableau 10: what the reports used before, so colours keep their meaning (segment i = colour i).
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
CONFIG = {"displaylogo": False, "responsive": True}
FONT = "Helvetica, Arial, sans-serif"


def chart_html(figure: go.Figure) -> str:
    """``figure`` as a ``<div>`` plus its ``Plotly.newPlot`` script (plotly.js is the page's, see
    :func:`html_page`)."""
    html: str = figure.to_html(full_html=False, include_plotlyjs=False, config=CONFIG)
    return html


def html_page(title: str, body: str, css: str = "") -> str:
    """A complete HTML page: ``title`` (escaped), plotly.js inlined once, ``css``, then ``body``."""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>"
        f"<style>body{{font-family:{FONT};margin:24px 40px;color:#222;background:#fafafa}}{css}</style>"
        f"</head><body>{body}</body></html>"
    )


def _layout(title: str, height: int, **extra: object) -> dict[str, object]:
    return {
        "title": {"text": title},
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
        "font": {"family": FONT},
        **extra,
    }


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    colors: Sequence[str] | str = PALETTE[0],
    horizontal: bool = False,
    text: Sequence[str] | None = None,
    height: int | None = None,
) -> go.Figure:
    """One bar per label (top to bottom when ``horizontal``), values written on the bars."""
    labels, values = list(labels), list(values)
    shown = list(text) if text is not None else [f"{v:,.4g}" for v in values]
    if horizontal:
        trace = go.Bar(y=labels, x=values, orientation="h", marker_color=colors, text=shown)
        layout = _layout(title, height or 90 + 28 * len(labels), yaxis={"autorange": "reversed"})
        layout["margin"] = {"l": 10, "r": 20, "t": 50, "b": 40}
        layout["yaxis"] = {"autorange": "reversed", "automargin": True}
    else:
        trace = go.Bar(x=labels, y=values, marker_color=colors, text=shown)
        layout = _layout(title, height or 340)
    trace.update(textposition="auto", cliponaxis=False)
    return go.Figure(trace, layout=layout)


def line_chart(
    x: Sequence[object],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    y_title: str = "",
    x_title: str = "",
    highlight: object | None = None,
    height: int = 320,
) -> go.Figure:
    """One line (with markers) per named series over ``x``; the point at x = ``highlight`` in red."""
    figure = go.Figure(layout=_layout(title, height, yaxis={"title": {"text": y_title}}))
    figure.update_xaxes(title_text=x_title)
    for i, (name, ys) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        figure.add_scatter(
            x=list(x),
            y=list(ys),
            mode="lines+markers",
            name=name,
            line={"color": color},
            marker={"color": [PALETTE[3] if value == highlight else color for value in x], "size": 8},
        )
    figure.update_layout(showlegend=len(series) > 1)
    return figure


def band_chart(
    x_of: Mapping[str, Sequence[object]],
    value_of: Mapping[str, Sequence[float]],
    bands_of: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    y_title: str,
    height: int = 360,
) -> go.Figure:
    """Per named series a line and its shaded interval band (``(low, high)`` per point)."""
    figure = go.Figure(layout=_layout(title, height, yaxis={"title": {"text": y_title}}))
    for i, name in enumerate(value_of):
        color = PALETTE[i % len(PALETTE)]
        x = list(x_of[name])
        lows = [b[0] for b in bands_of[name]]
        highs = [b[1] for b in bands_of[name]]
        # The band first (upper edge, then lower edge filled up to it), then the line over it.
        figure.add_scatter(x=x, y=highs, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip")
        figure.add_scatter(
            x=x,
            y=lows,
            mode="lines",
            line={"width": 0},
            fill="tonexty",
            fillcolor=_transparent(color),
            showlegend=False,
            hoverinfo="skip",
        )
        figure.add_scatter(
            x=x, y=list(value_of[name]), mode="lines+markers", name=name, line={"color": color}
        )
    figure.update_layout(legend={"title": {"text": "variant"}})
    return figure


def interval_bars(
    names: Sequence[str],
    series: Mapping[str, tuple[Sequence[float], Sequence[tuple[float, float]]]],
    *,
    title: str,
    height: int = 360,
) -> go.Figure:
    """Grouped bars, one group per name and one bar per series, each with its 95 % interval as an
    error bar (``series``: name -> (values, (low, high) per name))."""
    figure = go.Figure(layout=_layout(title, height, barmode="group"))
    for i, (label, (values, intervals)) in enumerate(series.items()):
        figure.add_bar(
            x=list(names),
            y=list(values),
            name=label,
            marker_color=PALETTE[i % len(PALETTE)],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [high - v for v, (_, high) in zip(values, intervals, strict=True)],
                "arrayminus": [v - low for v, (low, _) in zip(values, intervals, strict=True)],
            },
        )
    return figure


def heat_map(
    z: Sequence[Sequence[float]],
    rows: Sequence[object],
    columns: Sequence[object],
    *,
    title: str,
    row_title: str,
    column_title: str,
    labels: Sequence[Sequence[str]] | None = None,
    height: int = 480,
) -> go.Figure:
    """A grid coloured by value (white -> blue), each cell showing its value and its label."""
    trace = go.Heatmap(
        z=[list(r) for r in z],
        y=[str(r) for r in rows],
        x=[str(c) for c in columns],
        colorscale="Blues",
        textfont={"size": 13},
        text=[list(r) for r in labels] if labels is not None else None,
        texttemplate="<b>%{z:,}</b><br>%{text}" if labels is not None else "%{z:,}",
        hovertemplate=f"{row_title} %{{y}}, {column_title} %{{x}}: %{{z:,}}<extra></extra>",
    )
    layout = _layout(
        title, height, xaxis={"title": {"text": column_title}}, yaxis={"title": {"text": row_title}}
    )
    return go.Figure(trace, layout=layout)


def funnel_chart(
    stages: Sequence[str], values: Sequence[float], *, title: str, height: int = 360
) -> go.Figure:
    """Stages in the given order, each with its count and share of the total."""
    trace = go.Funnel(
        y=list(stages),
        x=list(values),
        textinfo="value+percent total",
        marker={"color": [PALETTE[i % len(PALETTE)] for i in range(len(stages))]},
    )
    return go.Figure(trace, layout=_layout(title, height))


def histogram_chart(
    counts: Sequence[int], edges: Sequence[float], *, title: str, x_title: str, color: str = PALETTE[3]
) -> go.Figure:
    """Bars of pre-computed ``counts`` between consecutive ``edges`` (the numbers are the caller's,
    not re-binned by plotly.js)."""
    centres = [(low + high) / 2 for low, high in itertools.pairwise(edges)]
    widths = [high - low for low, high in itertools.pairwise(edges)]
    trace = go.Bar(x=centres, y=list(counts), width=widths, marker_color=color, text=list(counts))
    trace.update(textposition="outside", cliponaxis=False)
    layout = _layout(title, 320, xaxis={"title": {"text": x_title}}, bargap=0.05)
    return go.Figure(trace, layout=layout)


def _transparent(color: str, alpha: float = 0.18) -> str:
    red, green, blue = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"
