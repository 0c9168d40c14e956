"""``recsys dashboard``'s page: KPIs over time, A/B variants, lifecycle stages and segments, the
latest campaigns, the model and its health, as Plotly charts (:mod:`training.reports.charts`).

One self-contained HTML page (plotly.js inlined: no network, no CDN), built from the event log
(:func:`serving.events.reader.read_events`), a bundle (manifest and ``profiles.parquet``) and,
optionally, a folder of campaign files (``*.campaign.json``, written by ``recsys recommend`` /
``recsys lookalike --campaign``). Every figure comes from code the file reports use:

* KPIs over time and per group: :mod:`training.reports.dashboard_kpis`;
* per A/B variant: :func:`training.reports.ab_report.build_report`;
* campaigns: :func:`training.reports.campaign_report.build_campaign_report`;
* model health: the bundle manifest's own evaluation figures and the event log's freshness.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl

from serving.campaigns.holdout import CAMPAIGN_SUFFIX
from serving.events.reader import read_events
from serving.profiles.lifecycle import STAGES
from training.reports.ab_report import build_report
from training.reports.ab_results import AbReport
from training.reports.campaign_report import build_campaign_report
from training.reports.charts import PALETTE, bar_chart, chart_html, html_page, interval_bars, line_chart
from training.reports.dashboard_kpis import KPI_COLUMNS, daily_kpis, group_kpis
from training.reports.segments_report import load_profiles

log = logging.getLogger(__name__)

# Bootstrap resamples of revenue/user per variant: the page is rebuilt per request, so fewer than
# the file report's 2000 (the interval's ends move in the third digit, not more).
BOOTSTRAP_RESAMPLES = 300
# The latest campaigns shown (by send time), and at most this many campaign files read (newest first).
LATEST_CAMPAIGNS = 6
MAX_CAMPAIGN_FILES = 200

KPI_TITLES = {
    "active_members": "Active members per day",
    "ctr": "CTR (clicks / impressions)",
    "conversion": "Conversion (buyers / active members)",
    "average_order_value": "Average order value",
    "repurchase_share": "Repurchase share (buyers who bought before)",
    "churned_share": "Churned share (no event for the churn horizon)",
}


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


def latest_campaigns(
    folder: Path, events_dir: Path, days: float, limit: int = LATEST_CAMPAIGNS
) -> tuple[list[dict[str, Any]], list[str]]:
    """(reports of the ``limit`` campaigns in ``folder`` sent last, newest first; one line per
    campaign file that could not be measured, with the reason)."""
    # The files written last first: a folder of years of campaigns is not read whole on every request.
    paths = sorted(Path(folder).glob(f"*{CAMPAIGN_SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
    paths = paths[:MAX_CAMPAIGN_FILES]
    reports, problems = [], []
    for path in paths:
        try:
            reports.append(build_campaign_report(path, events_dir, days, 0.0))
        except (ValueError, OSError) as exc:
            problems.append(f"{path.name}: {exc}")
    reports.sort(key=lambda r: str(r["sent_at"]), reverse=True)
    return reports[:limit], problems


def _kpi_figures(kpis: pl.DataFrame, churn_days: float) -> list[go.Figure]:
    dates = [d.isoformat() for d in kpis.get_column("date").to_list()]
    titles = dict(KPI_TITLES, churned_share=f"Churned share (no event for {churn_days:g} days)")
    return [
        line_chart(dates, {column: kpis.get_column(column).to_list()}, title=titles[column])
        for column in KPI_COLUMNS
    ]


def _variant_figure(report: AbReport) -> go.Figure:
    names = [v.variant for v in report.variants]
    return interval_bars(
        names,
        {
            metric: (
                [getattr(v, metric) for v in report.variants],
                [(getattr(v, f"{metric}_ci").low, getattr(v, f"{metric}_ci").high) for v in report.variants],
            )
            for metric in ("ctr", "conversion")
        },
        title=f"Experiment {report.experiment}: CTR and conversion (95 % CI)",
    )


def _in_order(frame: pl.DataFrame, column: str, order: tuple[str, ...]) -> pl.DataFrame:
    """``frame`` sorted by ``column`` in ``order`` (values outside it last, by value)."""
    if not order:
        return frame.sort(column)
    rank = pl.col(column).cast(pl.Utf8).replace_strict(order, range(len(order)), default=len(order))
    return frame.sort(rank, pl.col(column))


def _group_figures(
    events: pl.DataFrame, profiles: pl.DataFrame, column: str, name: str, order: tuple[str, ...] = ()
) -> list[go.Figure]:
    """Members per group (the bundle) and each group's conversion and revenue per member (the log)."""
    counts = _in_order(profiles.group_by(column).len().drop_nulls(column), column, order)
    figures = [
        bar_chart(
            [str(v) for v in counts.get_column(column).to_list()],
            counts.get_column("len").to_list(),
            title=f"Members per {name}",
        )
    ]
    kpis = _in_order(group_kpis(events, profiles, column), column, order)
    if kpis.height:
        labels = [str(v) for v in kpis.get_column(column).to_list()]
        figure = go.Figure(
            layout={
                "title": {"text": f"Per {name}: conversion and revenue per member in the log"},
                "height": 340,
                "yaxis": {"title": {"text": "conversion"}},
                "yaxis2": {"title": {"text": "revenue per member"}, "overlaying": "y", "side": "right"},
                "barmode": "group",
                "legend": {"orientation": "h", "y": -0.2},
            }
        )
        figure.add_bar(
            x=labels,
            y=kpis.get_column("conversion").to_list(),
            name="conversion",
            offsetgroup=0,
            marker_color=PALETTE[0],
        )
        figure.add_bar(
            x=labels,
            y=kpis.get_column("revenue_per_member").to_list(),
            name="revenue per member",
            yaxis="y2",
            offsetgroup=1,
            marker_color=PALETTE[1],
        )
        figures.append(figure)
    return figures


def _campaign_figures(reports: list[dict[str, Any]]) -> list[go.Figure]:
    """Reach, response rates (contacted vs control) and uplifts with 95 % intervals, oldest left."""
    reports = list(reversed(reports))
    # Name and send day: two sends of one campaign name are two bars.
    names = [f"{r['campaign']} {str(r['sent_at'])[:10]}" for r in reports]
    figures = [
        bar_chart(names, [r["reach"] for r in reports], title="Latest campaigns: reach (members contacted)")
    ]
    rates = go.Figure(
        layout={"title": {"text": "Campaign response rate: contacted vs control"}, "height": 340}
    )
    for i, group in enumerate(("treatment", "control")):
        rates.add_bar(
            x=names,
            y=[r["groups"][group]["response_rate"] for r in reports],
            name="contacted" if group == "treatment" else "control",
            marker_color=PALETTE[i],
        )
    figures.append(rates)
    for keys, title in (
        (("response_rate", "conversion_rate"), "Campaign uplift over the control (95 % CI)"),
        (("revenue_per_member",), "Campaign uplift in revenue per member (95 % CI)"),
    ):
        series = {}
        for key in keys:
            found = [r["uplift"][key] for r in reports]
            series[key.replace("_", " ")] = (
                [u["difference"] if u else None for u in found],
                [(u["low"], u["high"]) if u else (None, None) for u in found],
            )
        figures.append(_uplift_bars(names, series, title))
    return figures


def _uplift_bars(
    names: list[str], series: dict[str, tuple[list[Any], list[tuple[Any, Any]]]], title: str
) -> go.Figure:
    """:func:`interval_bars` where a campaign without a control (no uplift) has no bar."""
    clean = {
        label: (
            [v if v is not None else 0.0 for v in values],
            [(low, high) if low is not None else (0.0, 0.0) for low, high in intervals],
        )
        for label, (values, intervals) in series.items()
    }
    figure = interval_bars(names, clean, title=title)
    for trace, (values, _) in zip(figure.data, series.values(), strict=True):
        trace.y = values  # None where there is no uplift: no bar rather than a zero
    return figure


def _health_figure(manifest: dict[str, Any], events: pl.DataFrame, now: datetime) -> go.Figure:
    """The model's own figures (offline ranking metric, look-ahead models' AUCs, CLV holdout
    predicted / actual) and freshness (hours since the last logged event, days since the
    profiles' clock), as indicators."""
    section = manifest.get("profiles", {})
    metrics = manifest.get("metrics", {})
    k = manifest.get("config", {}).get("eval", {}).get("k", 10)
    tiles: list[tuple[str, float | None, str]] = [
        (f"recall@{k} (offline)", metrics.get(f"recall@{k}"), ".3f"),
        ("churn AUC", section.get("churn", {}).get("auc"), ".3f"),
        ("propensity AUC", section.get("propensity", {}).get("auc"), ".3f"),
    ]
    validation = section.get("clv", {}).get("validation", {})
    if validation.get("actual_total"):
        tiles.append(
            (
                "CLV holdout: predicted / actual",
                validation["predicted_total"] / validation["actual_total"],
                ".2f",
            )
        )
    if events.height:
        last = events.get_column("timestamp").max()
        assert isinstance(last, datetime)
        tiles.append(("hours since the last event", (now - last).total_seconds() / 3600, ".1f"))
    if "clock" in section:
        tiles.append(
            ("days since the profiles' clock", (now.timestamp() - int(section["clock"])) / 86_400, ".1f")
        )
    figure = go.Figure(
        layout={
            "title": {"text": f"Model {manifest['model_version']}: health"},
            "height": 360,
            "grid": {"rows": 2, "columns": 3, "pattern": "independent"},
            "margin": {"t": 70, "b": 10},
        }
    )
    for position, (label, value, number_format) in enumerate(tiles):
        figure.add_trace(
            go.Indicator(
                mode="number",
                value=value,
                title={"text": label, "font": {"size": 14}},
                number={"valueformat": number_format, "font": {"size": 36}},
                domain={"row": position // 3, "column": position % 3},
            )
        )
    return figure


def render_dashboard(
    bundle: Path,
    events_dir: Path,
    *,
    campaigns_dir: Path | None = None,
    campaign_days: float = 14.0,
    now: datetime | None = None,
) -> str:
    """The page (complete HTML, plotly.js inlined) for ``bundle``, the event log at ``events_dir``
    and the campaign files in ``campaigns_dir`` (measured over ``campaign_days`` after sending).

    Raises the bundle reader's errors for a bundle without valid profiles.
    """
    now = now or datetime.now(UTC)
    manifest, profiles = load_profiles(bundle)
    events = read_events(events_dir)
    churn_days = float(manifest["profiles"].get("churn", {}).get("horizon_days") or 30.0)
    notes = []
    sections: list[tuple[str, list[go.Figure]]] = [
        ("Model", [_health_figure(manifest, events, now)]),
        ("KPIs over time", _kpi_figures(daily_kpis(events, churn_days), churn_days)),
        ("A/B experiments", [_variant_figure(report) for report in experiment_reports(events)]),
    ]
    joinable = events
    if manifest.get("config", {}).get("privacy", {}).get("pseudonymise_user_ids"):
        # The log holds raw ids, the bundle pseudonyms: members cannot be matched without the key.
        joinable = events.head(0)
        notes.append("pseudonymised bundle: the per-group charts count members only")
    groups = _group_figures(joinable, profiles, "lifecycle", "lifecycle stage", STAGES)
    if "segment" in profiles.columns:
        groups += _group_figures(joinable, profiles, "segment", "embedding segment")
    sections.append(("Lifecycle stages and segments", groups))
    if campaigns_dir is not None:
        campaigns, problems = latest_campaigns(campaigns_dir, events_dir, campaign_days)
        notes += problems
        sections.append(("Latest campaigns", _campaign_figures(campaigns) if campaigns else []))
    header = (
        f"<h1>Recommendations dashboard</h1><p>model <b>{escape(str(manifest['model_version']))}</b>, "
        f"{profiles.height} members in the bundle, {events.height} events in the log; "
        f"built {now:%Y-%m-%d %H:%M:%S} UTC</p>"
        + "".join(f"<p class='note'>{escape(note)}</p>" for note in notes)
    )
    body = header + "".join(
        f"<h2>{escape(title)}</h2><div class='charts'>{''.join(chart_html(f) for f in figures)}</div>"
        for title, figures in sections
        if figures
    )
    css = (
        ".charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}"
        ".note{color:#666;font-size:12px}"
    )
    return html_page("recsys dashboard", body, css)
