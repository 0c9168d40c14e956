"""``recsys ab-report``: per-variant metrics of one experiment from the feedback event log.

Definitions (events of the experiment, attributed to the variant each event names):

* **users**: distinct users with at least one impression in the variant (the exposed users;
  assignment is per user, so users are the unit of randomisation);
* **impressions**: impression events;
* **clicks**: impressions followed by a click on the same item in the same Recommend call
  (same ``user_id``, ``item_id`` and ``request_id``), so ``clicks <= impressions``;
* **CTR** = clicks / impressions, with a Wilson 95 % interval. Its z-test treats
  impressions as independent trials; impressions of one user are correlated, so its
  intervals are somewhat optimistic (the per-user metrics below are not);
* **conversion rate** = exposed users with at least one purchase / exposed users (Wilson
  95 % interval, z-test over users);
* **revenue per user** = the sum of purchase values over exposed users / exposed users
  (bootstrap 95 % interval over users; bootstrap test of the difference).

Each variant is compared with the control (``--control``, default: the first variant
by name) by two-proportion z-tests (CTR, conversion) and the bootstrap (revenue per user).
Variants are ranked by CTR, best first. No correction for multiple comparisons is made.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import polars as pl

from training.config import TrackingConfig
from training.reports.ab_results import AbReport, Comparison, VariantMetrics
from training.reports.ab_stats import (
    Interval,
    bootstrap_difference_test,
    bootstrap_mean_interval,
    two_proportion_z_test,
    wilson_interval,
)

log = logging.getLogger(__name__)


def _experiment_events(events: pl.DataFrame, experiment: str) -> pl.DataFrame:
    return events.filter((pl.col("experiment") == experiment) & pl.col("variant").is_not_null()).with_columns(
        pl.col("request_id").fill_null(""),
        pl.col("timestamp").dt.date().alias("day"),
    )


def _clicked_impressions(frame: pl.DataFrame) -> pl.DataFrame:
    """Impression rows with a ``clicked`` flag (a click on the same item in the same call)."""
    key = ["variant", "user_id", "item_id", "request_id"]
    impressions = frame.filter(pl.col("event_type") == "impression")
    clicks = (
        frame.filter(pl.col("event_type") == "click")
        .select(key)
        .unique()
        .with_columns(pl.lit(True).alias("clicked"))
    )
    return impressions.join(clicks, on=key, how="left").with_columns(pl.col("clicked").fill_null(False))


def _per_user(frame: pl.DataFrame, impressions: pl.DataFrame) -> pl.DataFrame:
    """One row per exposed (variant, user): purchases and revenue (0 when none)."""
    exposed = impressions.select("variant", "user_id").unique()
    purchases = (
        frame.filter(pl.col("event_type") == "purchase")
        .group_by("variant", "user_id")
        .agg(pl.len().alias("purchases"), pl.col("value").fill_null(0.0).sum().alias("revenue"))
    )
    # Sorted: the bootstrap resamples by position, so a fixed order makes its intervals reproducible.
    return (
        exposed.join(purchases, on=["variant", "user_id"], how="left")
        .with_columns(pl.col("purchases").fill_null(0).cast(pl.Int64), pl.col("revenue").fill_null(0.0))
        .sort("variant", "user_id")
    )


def _daily(impressions: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    shown = impressions.group_by("day", "variant").agg(
        pl.len().alias("impressions"),
        pl.col("clicked").sum().alias("clicks"),
        pl.col("user_id").n_unique().alias("users"),
    )
    buyers = (
        frame.filter(pl.col("event_type") == "purchase")
        .select("day", "variant", "user_id")
        .unique()
        .join(impressions.select("day", "variant", "user_id").unique(), on=["day", "variant", "user_id"])
        .group_by("day", "variant")
        .agg(pl.len().alias("converted_users"))
    )
    return (
        shown.join(buyers, on=["day", "variant"], how="left")
        .with_columns(pl.col("converted_users").fill_null(0))
        .with_columns(
            (pl.col("clicks") / pl.col("impressions")).alias("ctr"),
            (pl.col("converted_users") / pl.col("users")).alias("conversion"),
        )
        .rename({"day": "date"})
        .sort("date", "variant")
    )


def build_report(
    events: pl.DataFrame,
    experiment: str,
    *,
    control: str | None = None,
    bootstrap_resamples: int = 2000,
    seed: int = 0,
) -> AbReport:
    """The report of ``experiment`` over event-log rows (:func:`serving.events.reader.read_events`).

    Raises :class:`ValueError` when the experiment has no impressions or ``control`` is
    not one of its variants.
    """
    frame = _experiment_events(events, experiment)
    impressions = _clicked_impressions(frame)
    if impressions.height == 0:
        known = sorted(events.get_column("experiment").drop_nulls().unique().to_list())
        raise ValueError(f"experiment {experiment!r}: no impressions in the event log (experiments: {known})")
    users = _per_user(frame, impressions)
    names = sorted(impressions.get_column("variant").unique().to_list())
    control = names[0] if control is None else control
    if control not in names:
        raise ValueError(f"control {control!r}: not a variant of {experiment!r} (variants: {names})")

    metrics: dict[str, VariantMetrics] = {}
    revenue_of: dict[str, list[float]] = {}
    for name in names:
        shown = impressions.filter(pl.col("variant") == name)
        exposed = users.filter(pl.col("variant") == name)
        clicks = int(shown.get_column("clicked").sum())
        converted = int((exposed.get_column("purchases") > 0).sum())
        revenue = exposed.get_column("revenue").to_list()
        revenue_of[name] = revenue
        metrics[name] = VariantMetrics(
            variant=name,
            users=exposed.height,
            impressions=shown.height,
            clicks=clicks,
            ctr=clicks / shown.height,
            ctr_ci=wilson_interval(clicks, shown.height),
            converted_users=converted,
            purchases=int(exposed.get_column("purchases").sum()),
            conversion=converted / exposed.height,
            conversion_ci=wilson_interval(converted, exposed.height),
            revenue=float(sum(revenue)),
            revenue_per_user=float(sum(revenue)) / exposed.height,
            revenue_per_user_ci=bootstrap_mean_interval(revenue, bootstrap_resamples, seed),
        )
    base = metrics[control]
    comparisons = []
    for name in names:
        if name == control:
            continue
        m = metrics[name]
        rpu, rpu_ci = bootstrap_difference_test(
            revenue_of[control], revenue_of[name], bootstrap_resamples, seed
        )
        comparisons.append(
            Comparison(
                variant=name,
                control=control,
                ctr=two_proportion_z_test(base.clicks, base.impressions, m.clicks, m.impressions),
                conversion=two_proportion_z_test(
                    base.converted_users, base.users, m.converted_users, m.users
                ),
                revenue_per_user=rpu,
                revenue_per_user_difference_ci=rpu_ci,
            )
        )
    ranked = sorted(metrics.values(), key=lambda v: (-v.ctr, v.variant))
    return AbReport(experiment, control, ranked, comparisons, _daily(impressions, frame), frame.height)


def format_table(report: AbReport) -> str:
    """The report as a fixed-width text table (ranked by CTR) plus one line per comparison."""
    lines = [
        f"experiment {report.experiment}: {report.events} events, control {report.control}, ranked by CTR",
        f"{'#':>2} {'variant':<16} {'users':>7} {'impr.':>8} {'clicks':>7} {'CTR [95% CI]':>26} "
        f"{'conversion [95% CI]':>26} {'revenue/user [95% CI]':>28}",
    ]
    for rank, v in enumerate(report.variants, start=1):
        lines.append(
            f"{rank:>2} {v.variant:<16} {v.users:>7} {v.impressions:>8} {v.clicks:>7} "
            f"{_pct(v.ctr, v.ctr_ci):>26} {_pct(v.conversion, v.conversion_ci):>26} "
            f"{v.revenue_per_user:>8.3f} "
            f"[{v.revenue_per_user_ci.low:.3f}, {v.revenue_per_user_ci.high:.3f}]"
        )
    for c in report.comparisons:
        lines.append(
            f"{c.variant} vs {c.control}: CTR {c.ctr.difference * 100:+.2f} pp (z {c.ctr.statistic:.2f}, "
            f"p {_p(c.ctr.p_value)}); conversion {c.conversion.difference * 100:+.2f} pp "
            f"(z {c.conversion.statistic:.2f}, p {_p(c.conversion.p_value)}); revenue/user "
            f"{c.revenue_per_user.difference:+.3f} [{c.revenue_per_user_difference_ci.low:+.3f}, "
            f"{c.revenue_per_user_difference_ci.high:+.3f}] (bootstrap p {_p(c.revenue_per_user.p_value)})"
        )
    return "\n".join(lines)


def _pct(value: float, interval: Interval) -> str:
    return f"{value * 100:.2f}% [{interval.low * 100:.2f}, {interval.high * 100:.2f}]"


def _p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def report_metrics(report: AbReport) -> dict[str, float]:
    """Flat MLflow metrics: ``<variant>.<metric>`` and ``<variant>_vs_<control>.<test>`` (names
    MLflow does not allow are mended where metrics are logged, ``mlflow_store.metric_key``)."""
    out: dict[str, float] = {}
    for v in report.variants:
        key = v.variant
        out |= {
            f"{key}.users": v.users,
            f"{key}.impressions": v.impressions,
            f"{key}.clicks": v.clicks,
            f"{key}.ctr": v.ctr,
            f"{key}.ctr_ci_low": v.ctr_ci.low,
            f"{key}.ctr_ci_high": v.ctr_ci.high,
            f"{key}.conversion": v.conversion,
            f"{key}.conversion_ci_low": v.conversion_ci.low,
            f"{key}.conversion_ci_high": v.conversion_ci.high,
            f"{key}.revenue_per_user": v.revenue_per_user,
            f"{key}.revenue_per_user_ci_low": v.revenue_per_user_ci.low,
            f"{key}.revenue_per_user_ci_high": v.revenue_per_user_ci.high,
        }
    for c in report.comparisons:
        key = f"{c.variant}_vs_{c.control}"
        out |= {
            f"{key}.ctr_difference": c.ctr.difference,
            f"{key}.ctr_z": c.ctr.statistic,
            f"{key}.ctr_p_value": c.ctr.p_value,
            f"{key}.conversion_difference": c.conversion.difference,
            f"{key}.conversion_z": c.conversion.statistic,
            f"{key}.conversion_p_value": c.conversion.p_value,
            f"{key}.revenue_per_user_difference": c.revenue_per_user.difference,
            f"{key}.revenue_per_user_p_value": c.revenue_per_user.p_value,
        }
    return {k: float(v) for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def write_report(report: AbReport, out: Path) -> list[Path]:
    """``report.json``, ``report.txt``, ``daily.csv`` and the charts page ``report.html`` into ``out``
    (atomic writes)."""
    from serving.storage import atomic_write_csv, atomic_write_text
    from training.reports.ab_plots import write_charts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "report.txt", format_table(report) + "\n")
    atomic_write_csv(out / "daily.csv", report.daily)
    charts = write_charts(report, out / "report.html")
    return [out / "report.json", out / "report.txt", out / "daily.csv", charts]


def run_ab_report(
    events_dir: Path,
    experiment: str,
    out: Path,
    tracking: TrackingConfig,
    *,
    control: str | None = None,
    bootstrap_resamples: int = 2000,
) -> AbReport:
    """Read the event log, build the report, write it to ``out`` and log it all to MLflow.

    MLflow run ``ab-report-<experiment>``: params (experiment, control, events dir), the
    metrics of :func:`report_metrics`, ``ab_report.json`` and the ``out`` directory as the
    ``ab_report`` artifact (tables and the charts page).
    """
    from serving.events.reader import is_event_log, read_events
    from training.data.io import InputError, data_directory_hint
    from training.tracking import start_run

    if not is_event_log(events_dir):
        # An empty report would blame the experiment ("no impressions") for a wrong path.
        what = "does not exist" if not Path(events_dir).exists() else "is not an event log"
        raise InputError(
            f"--events {events_dir}: {what} (no date=*/part-*.parquet files); pass the directory "
            f"a server logs to (recsys serve --events-dir DIR){data_directory_hint(Path(events_dir))}"
        )
    report = build_report(
        read_events(events_dir), experiment, control=control, bootstrap_resamples=bootstrap_resamples
    )
    write_report(report, out)
    with start_run(tracking, f"ab-report-{experiment}", tags={"kind": "ab-report"}) as tracker:
        tracker.log_params(
            {
                "experiment": experiment,
                "control": report.control,
                "events_dir": str(events_dir),
                "bootstrap_resamples": bootstrap_resamples,
            }
        )
        tracker.log_metrics(report_metrics(report))
        tracker.log_dict(report.to_dict(), "ab_report.json")
        tracker.log_directory(out, "ab_report")
    return report
