"""``recsys dashboard``'s page: KPIs over time, A/B variants, segments and the model, as Plotly charts.

One self-contained HTML page (the plotly.js bundle is inlined: no network, no CDN), built
from the event log (:func:`serving.events.reader.read_events`) and a bundle (manifest and
``profiles.parquet``). Definitions of the daily KPIs (UTC days, all events of the day):

* **active members**: distinct users with at least one event that day;
* **CTR** = clicks / impressions of the day (events counted as logged);
* **conversion** = members who bought that day / active members;
* **average order value** = purchase value / purchases of the day (purchases without a
  value count as 0);
* **repurchase share** = buyers of the day who had bought on an earlier day / buyers.

Per A/B variant the figures and intervals are those of :func:`training.reports.ab_report.build_report`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from pathlib import Path

import plotly.graph_objects as go
import polars as pl

from serving.events.reader import read_events
from training.reports.ab_report import build_report
from training.reports.ab_results import AbReport
from training.reports.segments_report import load_profiles

# Bootstrap resamples of revenue/user per variant: the page is rebuilt per request, so fewer than
# the file report's 2000 (the interval's ends move in the third digit, not more).
BOOTSTRAP_RESAMPLES = 300

KPI_COLUMNS = ("active_members", "ctr", "conversion", "average_order_value", "repurchase_share")


def daily_kpis(events: pl.DataFrame) -> pl.DataFrame:
    """One row per UTC day: ``date``, ``active_members``, ``impressions``, ``clicks``, ``ctr``,
    ``buyers``, ``conversion``, ``purchases``, ``revenue``, ``average_order_value``,
    ``repurchase_share`` (definitions in the module docstring; ratios are null on a zero
    denominator)."""
    frame = events.with_columns(pl.col("timestamp").dt.date().alias("day"))
    purchases = frame.filter(pl.col("event_type") == "purchase")
    first_purchase = purchases.group_by("user_id").agg(pl.col("day").min().alias("first_day"))
    buyers = (
        purchases.select("day", "user_id")
        .unique()
        .join(first_purchase, on="user_id")
        .group_by("day")
        .agg(pl.len().alias("buyers"), (pl.col("first_day") < pl.col("day")).sum().alias("repeat_buyers"))
    )
    counts = frame.group_by("day").agg(
        pl.col("user_id").n_unique().alias("active_members"),
        (pl.col("event_type") == "impression").sum().alias("impressions"),
        (pl.col("event_type") == "click").sum().alias("clicks"),
        (pl.col("event_type") == "purchase").sum().alias("purchases"),
        pl.when(pl.col("event_type") == "purchase")
        .then(pl.col("value").fill_null(0.0))
        .sum()
        .alias("revenue"),
    )
    out = counts.join(buyers, on="day", how="left").with_columns(
        pl.col("buyers").fill_null(0), pl.col("repeat_buyers").fill_null(0)
    )

    def ratio(numerator: str, denominator: str) -> pl.Expr:
        return pl.when(pl.col(denominator) > 0).then(pl.col(numerator) / pl.col(denominator))

    return (
        out.with_columns(
            ratio("clicks", "impressions").alias("ctr"),
            ratio("buyers", "active_members").alias("conversion"),
            ratio("revenue", "purchases").alias("average_order_value"),
            ratio("repeat_buyers", "buyers").alias("repurchase_share"),
        )
        .rename({"day": "date"})
        .drop("repeat_buyers")
        .sort("date")
    )


def experiment_reports(events: pl.DataFrame) -> list[AbReport]:
    """The A/B report of every experiment with impressions in the log, by name."""
    names = events.filter(pl.col("variant").is_not_null()).get_column("experiment").drop_nulls().unique()
    reports = []
    for name in sorted(names.to_list()):
        try:
            reports.append(build_report(events, name, bootstrap_resamples=BOOTSTRAP_RESAMPLES))
        except ValueError:  # an experiment with clicks or purchases but no impressions
            continue
    return reports


def _kpi_figures(kpis: pl.DataFrame) -> list[go.Figure]:
    titles = {
        "active_members": "Active members per day",
        "ctr": "CTR (clicks / impressions)",
        "conversion": "Conversion (buyers / active members)",
        "average_order_value": "Average order value",
        "repurchase_share": "Repurchase share (buyers who bought before)",
    }
    dates = [d.isoformat() for d in kpis.get_column("date").to_list()]
    return [
        go.Figure(
            go.Scatter(x=dates, y=kpis.get_column(column).to_list(), mode="lines+markers", name=column),
            layout={"title": titles[column], "height": 320},
        )
        for column in KPI_COLUMNS
    ]


def _variant_figure(report: AbReport) -> go.Figure:
    names = [v.variant for v in report.variants]
    figure = go.Figure(layout={"title": f"Experiment {report.experiment}: CTR and conversion (95 % CI)"})
    for metric in ("ctr", "conversion"):
        values = [getattr(v, metric) for v in report.variants]
        intervals = [getattr(v, f"{metric}_ci") for v in report.variants]
        figure.add_bar(
            x=names,
            y=values,
            name=metric,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [ci.high - value for ci, value in zip(intervals, values, strict=True)],
                "arrayminus": [value - ci.low for ci, value in zip(intervals, values, strict=True)],
            },
        )
    figure.update_layout(barmode="group", height=360)
    return figure


def _count_figure(profiles: pl.DataFrame, column: str, title: str) -> go.Figure:
    counts = profiles.group_by(column).len().drop_nulls(column).sort(column)
    return go.Figure(
        go.Bar(x=[str(v) for v in counts.get_column(column).to_list()], y=counts.get_column("len").to_list()),
        layout={"title": title, "height": 320},
    )


def render_dashboard(bundle: Path, events_dir: Path, *, now: datetime | None = None) -> str:
    """The page (complete HTML, plotly.js inlined) for ``bundle`` and the event log at ``events_dir``.

    Raises the bundle reader's errors for a bundle without valid profiles.
    """
    manifest, profiles = load_profiles(bundle)
    events = read_events(events_dir)
    figures = _kpi_figures(daily_kpis(events))
    figures += [_variant_figure(report) for report in experiment_reports(events)]
    figures.append(_count_figure(profiles, "lifecycle", "Members per lifecycle stage"))
    if "segment" in profiles.columns:
        figures.append(_count_figure(profiles, "segment", "Members per embedding segment"))
    charts = [
        figure.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, figure in enumerate(figures)
    ]
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = (
        f"<h1>Recommendations dashboard</h1><p>model <b>{escape(str(manifest['model_version']))}</b>, "
        f"{profiles.height} members in the bundle, {events.height} events in the log; built {stamp}</p>"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>recsys dashboard</title>"
        "<style>body{font-family:Helvetica,Arial,sans-serif;margin:24px 40px}"
        ".charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}</style>"
        f"</head><body>{header}<div class='charts'>{''.join(charts)}</div></body></html>"
    )
