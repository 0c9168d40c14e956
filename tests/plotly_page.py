"""Read the Plotly figures out of a page made by :mod:`training.reports.charts`: the exact data and
layout each ``Plotly.newPlot`` call gets, by title (what the charts draw, not pixels)."""

from __future__ import annotations

import json
import re
from typing import Any


def figures(page: str) -> dict[str, dict[str, Any]]:
    """``{title: {"data": [...], "layout": {...}}}`` of every chart in ``page``."""
    decoder = json.JSONDecoder()
    found = {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page):
        data, end = decoder.raw_decode(page, match.end())
        layout, _ = decoder.raw_decode(page, page.index("{", end))
        title = layout["title"]["text"] if isinstance(layout["title"], dict) else layout["title"]
        found[title] = {"data": data, "layout": layout}
    return found


def assert_self_contained(page: str) -> None:
    """plotly.js inlined, no script loaded from anywhere, no URL outside the scripts (inside them
    plotly.js names sites, e.g. its logo link, but loads nothing)."""
    assert re.search(r"<script[^>]+src=", page) is None
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.DOTALL)
    assert re.search(r"https?://", markup) is None
    assert page.count("Plotly.newPlot") >= 1
    assert len(page) > 1_000_000
