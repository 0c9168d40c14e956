"""PNG figures of an A/B report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from serving.storage import atomic_write
from training.reports.ab_stats import wilson_interval

if TYPE_CHECKING:
    from training.reports.ab_results import AbReport


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return path


def plot_daily(daily: pl.DataFrame, metric: str, title: str, path: Path) -> Path:
    """One line per variant of ``metric`` (``ctr`` or ``conversion``) by day, with Wilson 95 % bands."""
    plt = _pyplot()
    successes, trials = ("clicks", "impressions") if metric == "ctr" else ("converted_users", "users")
    figure, axes = plt.subplots(figsize=(9, 4.5))
    try:
        for (variant,), rows in daily.sort("date").partition_by("variant", as_dict=True).items():
            days = rows.get_column("date").to_list()
            bands = [wilson_interval(s, n) for s, n in zip(rows[successes], rows[trials], strict=True)]
            (line,) = axes.plot(
                days, rows.get_column(metric).to_list(), marker="o", markersize=3, label=str(variant)
            )
            axes.fill_between(
                days, [b.low for b in bands], [b.high for b in bands], color=line.get_color(), alpha=0.15
            )
        axes.set_title(f"{title} per day, 95 % Wilson intervals")
        axes.set_ylabel(metric)
        from matplotlib.dates import DateFormatter

        axes.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))  # type: ignore[no-untyped-call]
        axes.grid(alpha=0.3)
        axes.legend(title="variant")
        figure.autofmt_xdate()
        return _save(figure, path)
    finally:
        plt.close(figure)


def plot_summary(report: AbReport, path: Path) -> Path:
    """CTR, conversion and revenue per user of each variant with their 95 % intervals."""
    plt = _pyplot()
    variants = sorted(report.variants, key=lambda v: v.variant)
    names = [v.variant for v in variants]
    panels = [
        ("CTR", [v.ctr for v in variants], [(v.ctr_ci.low, v.ctr_ci.high) for v in variants]),
        (
            "conversion",
            [v.conversion for v in variants],
            [(v.conversion_ci.low, v.conversion_ci.high) for v in variants],
        ),
        (
            "revenue per user",
            [v.revenue_per_user for v in variants],
            [(v.revenue_per_user_ci.low, v.revenue_per_user_ci.high) for v in variants],
        ),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4))
    try:
        for ax, (title, values, intervals) in zip(axes, panels, strict=True):
            errors = [
                [v - low for v, (low, _) in zip(values, intervals, strict=True)],
                [high - v for v, (_, high) in zip(values, intervals, strict=True)],
            ]
            ax.bar(names, values, yerr=errors, capsize=6, color=[f"C{i}" for i in range(len(names))])
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        figure.suptitle(f"experiment {report.experiment}: 95 % intervals (control {report.control})")
        return _save(figure, path)
    finally:
        plt.close(figure)
