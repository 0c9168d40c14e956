"""The charts of an A/B report (Plotly, :mod:`training.reports.charts`): one self-contained page.

``report.html``: CTR and conversion per day and variant with Wilson 95 % bands, then CTR,
conversion and revenue per user of each variant with their 95 % intervals (the numbers of
``report.json``; nothing is recomputed for the picture but the daily bands).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from serving.storage import atomic_write_text
from training.reports.ab_stats import wilson_interval
from training.reports.charts import band_chart, chart_html, html_page, interval_bars

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from training.reports.ab_results import AbReport

DAILY_METRICS = {
    "ctr": ("CTR (clicks / impressions)", "clicks", "impressions"),
    "conversion": ("conversion (buyers / exposed users)", "converted_users", "users"),
}


def daily_figure(daily: pl.DataFrame, metric: str) -> go.Figure:
    """One line per variant of ``metric`` (``ctr`` or ``conversion``) by day, with Wilson 95 % bands."""
    title, successes, trials = DAILY_METRICS[metric]
    x_of, value_of, bands_of = {}, {}, {}
    for (variant,), rows in sorted(daily.sort("date").partition_by("variant", as_dict=True).items()):
        name = str(variant)
        x_of[name] = [d.isoformat() for d in rows.get_column("date").to_list()]
        value_of[name] = rows.get_column(metric).to_list()
        intervals = [wilson_interval(s, n) for s, n in zip(rows[successes], rows[trials], strict=True)]
        bands_of[name] = [(i.low, i.high) for i in intervals]
    return band_chart(
        x_of, value_of, bands_of, title=f"{title} per day, 95 % Wilson intervals", y_title=metric
    )


def summary_figures(report: AbReport) -> list[go.Figure]:
    """CTR, conversion and revenue per user of each variant (by name) with their 95 % intervals."""
    variants = sorted(report.variants, key=lambda v: v.variant)
    names = [v.variant for v in variants]
    figures = []
    for metric, label in (
        ("ctr", "CTR"),
        ("conversion", "conversion"),
        ("revenue_per_user", "revenue per user"),
    ):
        values = [float(getattr(v, metric)) for v in variants]
        intervals = [(getattr(v, f"{metric}_ci").low, getattr(v, f"{metric}_ci").high) for v in variants]
        figures.append(
            interval_bars(
                names,
                {label: (values, intervals)},
                title=f"{label} per variant, 95 % intervals (control {report.control})",
            )
        )
    return figures


def write_charts(report: AbReport, path: Path) -> Path:
    """The charts page of ``report`` at ``path`` (atomically); returns ``path``."""
    figures = [daily_figure(report.daily, metric) for metric in DAILY_METRICS] + summary_figures(report)
    body = (
        f"<h1>A/B report: experiment {escape(report.experiment)}</h1>"
        f"<p>{report.events} events; control {escape(report.control)}; ranked by CTR: "
        f"{escape(', '.join(report.ranking))}. The tables are report.txt and report.json.</p>"
        + "".join(chart_html(figure) for figure in figures)
    )
    atomic_write_text(path, html_page(f"A/B report {report.experiment}", body))
    return path
