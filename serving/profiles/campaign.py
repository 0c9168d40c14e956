"""Campaign lists and member profiles: leave out flagged members, order by purchase propensity.

``recsys recommend`` and ``recsys lookalike`` write the lists that go out by e-mail, SMS and
push. By default members flagged for abnormal behaviour (``anomaly_flagged`` in the bundle's
profiles, see ``training.profiles.anomaly``) are left out of them: a bot or a fake-order
account should not receive offers. ``--include-flagged`` keeps them (for a fraud team's
list). ``--order-by-propensity`` puts the members likeliest to buy first and adds their
``purchase_propensity`` column; members without a profile (unknown users) come last.

A bundle without profiles cannot tell who is flagged: the list is written unfiltered and
the command says so; ordering by propensity then raises
:class:`~serving.errors.FeatureUnavailableError`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import FeatureUnavailableError

if TYPE_CHECKING:
    import polars as pl

# Only argparse-level imports at module level: ``recsys`` builds every parser from this module.

PROPENSITY_COLUMN = "purchase_propensity"


def add_campaign_arguments(parser: argparse.ArgumentParser) -> None:
    """``--include-flagged``, ``--order-by-propensity`` and the hold-out arguments
    (:func:`serving.campaigns.holdout.add_holdout_arguments`)."""
    from serving.campaigns.holdout import add_holdout_arguments

    add_holdout_arguments(parser)
    parser.add_argument(
        "--include-flagged",
        action="store_true",
        help="keep members flagged for abnormal behaviour (left out by default)",
    )
    parser.add_argument(
        "--order-by-propensity",
        action="store_true",
        help="list the members likeliest to buy first (adds a purchase_propensity column)",
    )


@dataclass(frozen=True)
class CampaignResult:
    """The list after the rules, and what they did (for the command's summary line)."""

    frame: pl.DataFrame
    flagged_removed: int
    note: str


def member_flags(bundle: Path, manifest: dict[str, Any]) -> pl.DataFrame | None:
    """``user_id`` (bundle ids), ``anomaly_flagged``, ``purchase_propensity`` and the protected
    attributes (``attr.gender``, ``attr.age``, when the bundle keeps them; for the fairness
    table of :mod:`serving.campaigns.holdout`) of every profiled member; None when the bundle
    has no profiles. The bundle was verified when loaded."""
    import polars as pl

    from serving.profiles.store import PROFILES_FILE

    if PROFILES_FILE not in manifest.get("files", {}) or "profiles" not in manifest:
        return None
    columns = pl.read_parquet_schema(Path(bundle) / PROFILES_FILE)
    wanted = [
        (pl.col(c) if c in columns else pl.lit(None, dtype=dtype).alias(c))
        for c, dtype in (("anomaly_flagged", pl.Boolean), (PROPENSITY_COLUMN, pl.Float64))
    ]
    protected = [c for c in ("attr.gender", "attr.age") if c in columns]
    return pl.scan_parquet(Path(bundle) / PROFILES_FILE).select("user_id", *wanted, *protected).collect()


def apply_campaign_rules(
    frame: pl.DataFrame,
    bundle_ids: pl.Series,
    flags: pl.DataFrame | None,
    include_flagged: bool,
    order_by_propensity: bool,
) -> CampaignResult:
    """``frame`` (a campaign list with ``user_id``; ``bundle_ids``: its ids as the bundle holds
    them, row-aligned) without flagged members unless ``include_flagged``, ordered by purchase
    propensity (stable: rows of one member keep their order) when ``order_by_propensity``."""

    if flags is None:
        if order_by_propensity:
            raise FeatureUnavailableError(
                "--order-by-propensity: the bundle has no member profiles (retrain it with profiles)"
            )
        note = "" if include_flagged else "the bundle has no member profiles: flagged members not filtered"
        return CampaignResult(frame, 0, note)
    joined = frame.with_columns(bundle_ids.alias("_bundle_id")).join(
        flags.rename({"user_id": "_bundle_id"}), on="_bundle_id", how="left", maintain_order="left"
    )
    flagged = joined.get_column("anomaly_flagged").fill_null(False)
    removed = 0
    if not include_flagged:
        removed = int(joined.filter(flagged).get_column("user_id").n_unique())
        joined = joined.filter(~flagged)
    if order_by_propensity:
        joined = joined.sort(PROPENSITY_COLUMN, descending=True, nulls_last=True, maintain_order=True)
        kept = [*frame.columns, PROPENSITY_COLUMN]
    else:
        kept = list(frame.columns)
    return CampaignResult(joined.select(kept), removed, "")
