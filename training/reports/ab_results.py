"""The result of an A/B report: per-variant metrics and comparisons with the control (plain data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from training.reports.ab_stats import Interval, TestResult


@dataclass(frozen=True, slots=True)
class VariantMetrics:
    variant: str
    users: int
    impressions: int
    clicks: int
    ctr: float
    ctr_ci: Interval
    converted_users: int
    purchases: int
    conversion: float
    conversion_ci: Interval
    revenue: float
    revenue_per_user: float
    revenue_per_user_ci: Interval


@dataclass(frozen=True, slots=True)
class Comparison:
    """``variant`` against ``control``: differences are ``variant - control``."""

    variant: str
    control: str
    ctr: TestResult
    conversion: TestResult
    revenue_per_user: TestResult
    revenue_per_user_difference_ci: Interval


@dataclass(frozen=True)
class AbReport:
    experiment: str
    control: str
    variants: list[VariantMetrics]  # ranked by CTR, best first
    comparisons: list[Comparison]
    daily: pl.DataFrame  # date, variant, impressions, clicks, ctr, users, converted_users, conversion
    events: int

    @property
    def ranking(self) -> list[str]:
        return [v.variant for v in self.variants]

    def comparison(self, variant: str) -> Comparison:
        return next(c for c in self.comparisons if c.variant == variant)

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "control": self.control,
            "events": self.events,
            "ranking": self.ranking,
            "variants": [asdict(v) for v in self.variants],
            "comparisons": [asdict(c) for c in self.comparisons],
        }
