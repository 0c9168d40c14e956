"""Tiny inline-SVG charts for self-contained HTML reports (no JavaScript, no downloads).

Each function returns an ``<svg>`` element as text; every label is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
FONT = "font-family='Helvetica, Arial, sans-serif'"


def _number(value: float) -> str:
    if abs(value) >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}"


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    width: int = 620,
    bar_height: int = 22,
    label_width: int = 220,
    color: str = PALETTE[0],
    colors: Sequence[str] | None = None,
    value_format: str = "{}",
    title: str = "",
) -> str:
    """Horizontal bars, one per ``(label, value)``, values written at the bar ends."""
    top = 28 if title else 6
    height = top + len(bars) * (bar_height + 6) + 6
    peak = max((v for _, v in bars), default=0.0) or 1.0
    span = width - label_width - 70
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' {FONT} font-size='13'>"
    ]
    if title:
        parts.append(f"<text x='0' y='18' font-weight='bold'>{escape(title)}</text>")
    for i, (label, value) in enumerate(bars):
        y = top + i * (bar_height + 6)
        length = max(span * value / peak, 1.0 if value > 0 else 0.0)
        fill = colors[i % len(colors)] if colors else color
        text = value_format.format(_number(value))
        baseline = y + bar_height * 0.7
        parts.append(
            f"<text x='{label_width - 8}' y='{baseline:.1f}' text-anchor='end'>{escape(label)}</text>"
            f"<rect x='{label_width}' y='{y}' width='{length:.1f}' height='{bar_height}' "
            f"fill='{fill}' rx='3'/>"
            f"<text x='{label_width + length + 6:.1f}' y='{baseline:.1f}'>{escape(text)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def funnel(stages: Sequence[tuple[str, float]], *, width: int = 620, step_height: int = 44) -> str:
    """Centred bars narrowing with the value, in the given order, with counts and shares."""
    total = sum(v for _, v in stages) or 1.0
    peak = max((v for _, v in stages), default=0.0) or 1.0
    height = len(stages) * (step_height + 6) + 6
    centre = width / 2
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' {FONT} font-size='14'>"
    ]
    for i, (label, value) in enumerate(stages):
        y = 6 + i * (step_height + 6)
        w = max((width - 40) * value / peak, 2.0)
        parts.append(
            f"<rect x='{centre - w / 2:.1f}' y='{y}' width='{w:.1f}' height='{step_height}' "
            f"fill='{PALETTE[i % len(PALETTE)]}' rx='4'/>"
            f"<text x='{centre}' y='{y + step_height * 0.62:.1f}' text-anchor='middle' fill='#111' "
            f"font-weight='bold'>{escape(label)}: {_number(value)} ({value / total:.0%})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def heat_map(
    cells: dict[tuple[int, int], float],
    rows: Sequence[int],
    columns: Sequence[int],
    *,
    row_title: str,
    column_title: str,
    labels: dict[tuple[int, int], str] | None = None,
    cell: int = 86,
) -> str:
    """A grid coloured by value (white -> blue); rows drawn top = highest."""
    left, top = 70, 30
    width = left + len(columns) * cell + 20
    height = top + len(rows) * cell + 50
    peak = max(cells.values(), default=0.0) or 1.0
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' {FONT} font-size='12'>"
    ]
    parts.append(
        f"<text x='{left + len(columns) * cell / 2}' y='{height - 8}' text-anchor='middle' "
        f"font-weight='bold'>{escape(column_title)} →</text>"
        f"<text x='14' y='{top + len(rows) * cell / 2}' text-anchor='middle' font-weight='bold' "
        f"transform='rotate(-90 14 {top + len(rows) * cell / 2})'>{escape(row_title)} →</text>"
    )
    for i, r in enumerate(sorted(rows, reverse=True)):
        y = top + i * cell
        parts.append(f"<text x='{left - 8}' y='{y + cell / 2 + 4}' text-anchor='end'>{r}</text>")
        for j, c in enumerate(columns):
            x = left + j * cell
            value = cells.get((r, c), 0.0)
            t = value / peak
            fill = f"rgb({int(255 - 200 * t)},{int(255 - 140 * t)},{int(255 - 60 * t)})"
            ink = "#fff" if t > 0.6 else "#111"
            parts.append(
                f"<rect x='{x}' y='{y}' width='{cell - 2}' height='{cell - 2}' fill='{fill}' stroke='#ccc'/>"
                f"<text x='{x + cell / 2}' y='{y + cell / 2 - 4}' text-anchor='middle' fill='{ink}' "
                f"font-size='15' font-weight='bold'>{_number(value)}</text>"
            )
            label = (labels or {}).get((r, c))
            if label:
                parts.append(
                    f"<text x='{x + cell / 2}' y='{y + cell / 2 + 14}' text-anchor='middle' fill='{ink}' "
                    f"font-size='10'>{escape(label)}</text>"
                )
    for j, c in enumerate(columns):
        parts.append(
            f"<text x='{left + j * cell + cell / 2}' y='{top + len(rows) * cell + 16}' "
            f"text-anchor='middle'>{c}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram(
    counts: Sequence[int],
    edges: Sequence[float],
    *,
    width: int = 620,
    height: int = 240,
    color: str = PALETTE[3],
    x_title: str = "",
) -> str:
    """Vertical bars for ``counts`` between consecutive ``edges``."""
    left, bottom, top = 50, 40, 20
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(counts, default=0) or 1
    step = plot_w / max(len(counts), 1)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' {FONT} font-size='11'>"
    ]
    parts.append(
        f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' stroke='#555'/>"
    )
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        x = left + i * step
        parts.append(
            f"<rect x='{x + 1:.1f}' y='{top + plot_h - h:.1f}' width='{step - 2:.1f}' height='{h:.1f}' "
            f"fill='{color}'/>"
            f"<text x='{x + step / 2:.1f}' y='{top + plot_h - h - 3:.1f}' text-anchor='middle'>{n}</text>"
        )
    for i, edge in enumerate(edges):
        if i % max(len(edges) // 6, 1) == 0 or i == len(edges) - 1:
            parts.append(
                f"<text x='{left + i * step:.1f}' y='{top + plot_h + 14}' "
                f"text-anchor='middle'>{edge:.2g}</text>"
            )
    if x_title:
        parts.append(
            f"<text x='{left + plot_w / 2}' y='{height - 6}' text-anchor='middle'>{escape(x_title)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    points: Sequence[tuple[float, float]],
    *,
    width: int = 420,
    height: int = 200,
    highlight: float | None = None,
    x_title: str = "",
    y_title: str = "",
) -> str:
    """A polyline through ``points`` with dots; the point at x = ``highlight`` in red."""
    if not points:
        return ""
    left, bottom, top = 50, 36, 12
    plot_w, plot_h = width - left - 14, height - bottom - top
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def px(x: float) -> float:
        return left + plot_w * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + plot_h * (1 - (y - y0) / (y1 - y0))

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' {FONT} font-size='11'>"
    ]
    parts.append(
        f"<polyline fill='none' stroke='{PALETTE[0]}' stroke-width='2' "
        f"points='{' '.join(f'{px(x):.1f},{py(y):.1f}' for x, y in points)}'/>"
    )
    for x, y in points:
        fill = PALETTE[3] if highlight is not None and x == highlight else PALETTE[0]
        parts.append(
            f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='4' fill='{fill}'/>"
            f"<text x='{px(x):.1f}' y='{top + plot_h + 14}' text-anchor='middle'>{x:g}</text>"
        )
    parts.append(
        f"<text x='{left - 6}' y='{py(y1) + 4:.1f}' text-anchor='end'>{y1:.3f}</text>"
        f"<text x='{left - 6}' y='{py(y0) + 4:.1f}' text-anchor='end'>{y0:.3f}</text>"
        f"<text x='{left + plot_w / 2}' y='{height - 4}' text-anchor='middle'>{escape(x_title)}</text>"
        f"<text x='12' y='{top + plot_h / 2}' text-anchor='middle' "
        f"transform='rotate(-90 12 {top + plot_h / 2})'>"
        f"{escape(y_title)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)
