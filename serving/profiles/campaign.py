"""Campaign lists and member profiles: leave out flagged members, order by purchase propensity or
lifetime value, keep only members worth at least a given lifetime value.

``recsys recommend`` and ``recsys lookalike`` write the lists that go out by e-mail, SMS and
push. By default members flagged for abnormal behaviour (``anomaly_flagged`` in the bundle's
profiles, see ``training.profiles.anomaly``) are left out of them: a bot or a fake-order
account should not receive offers. ``--include-flagged`` keeps them (for a fraud team's
list). ``--order-by propensity`` puts the members likeliest to buy first and adds their
``purchase_propensity`` column; ``--order-by clv`` puts the members with the highest predicted
lifetime value first and adds their ``clv_value`` column; members without the figure (unknown
users, members who never bought for CLV) come last. ``--min-clv V`` keeps only members whose
predicted lifetime value is at least ``V`` (members without one are left out) and adds the
``clv_value`` column.

A bundle without profiles cannot tell who is flagged: the list is written unfiltered and
the command says so; ordering by a score or ``--min-clv`` then raises
:class:`~serving.errors.FeatureUnavailableError`, as do the CLV options on a bundle whose
lifetime-value model was not trained or has no money amounts (the reason is in the message).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import FeatureUnavailableError, InvalidArgumentError

if TYPE_CHECKING:
    import polars as pl

# Only argparse-level imports at module level: ``recsys`` builds every parser from this module.

PROPENSITY_COLUMN = "purchase_propensity"
CLV_COLUMN = "clv_value"
# ``--order-by`` value -> the profile column the list is ordered by (best first).
ORDER_COLUMNS = {"propensity": PROPENSITY_COLUMN, "clv": CLV_COLUMN}


def add_campaign_arguments(parser: argparse.ArgumentParser) -> None:
    """``--include-flagged``, ``--order-by``, ``--min-clv`` and the hold-out arguments
    (:func:`serving.campaigns.holdout.add_holdout_arguments`)."""
    from serving.campaigns.holdout import add_holdout_arguments

    add_holdout_arguments(parser)
    parser.add_argument(
        "--include-flagged",
        action="store_true",
        help="keep members flagged for abnormal behaviour (left out by default)",
    )
    parser.add_argument(
        "--order-by",
        choices=sorted(ORDER_COLUMNS),
        help="propensity: the members likeliest to buy first (adds purchase_propensity); clv: the "
        "highest predicted lifetime value first (adds clv_value)",
    )
    parser.add_argument(
        "--min-clv",
        type=float,
        metavar="VALUE",
        help="keep only members whose predicted lifetime value is at least VALUE (adds clv_value)",
    )


@dataclass(frozen=True)
class CampaignResult:
    """The list after the rules, and what they did (for the command's summary line)."""

    frame: pl.DataFrame
    flagged_removed: int
    note: str
    below_min_clv_removed: int = 0


@dataclass(frozen=True)
class ListRules:
    """What a campaign list keeps and how it is ordered (the command's flags, validated)."""

    include_flagged: bool = False
    order_by: str | None = None  # a key of ORDER_COLUMNS
    min_clv: float | None = None

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> ListRules:
        return cls(args.include_flagged, args.order_by, args.min_clv)

    def __post_init__(self) -> None:
        import math

        if self.order_by is not None and self.order_by not in ORDER_COLUMNS:
            raise InvalidArgumentError(
                "--order-by", f"must be one of {sorted(ORDER_COLUMNS)}, got {self.order_by!r}"
            )
        if self.min_clv is not None and not (math.isfinite(self.min_clv) and self.min_clv >= 0):
            raise InvalidArgumentError("--min-clv", f"must be a finite number >= 0, got {self.min_clv}")

    @property
    def uses_clv(self) -> bool:
        return self.order_by == "clv" or self.min_clv is not None

    @property
    def needs_profiles(self) -> bool:
        return self.order_by is not None or self.min_clv is not None


def member_flags(bundle: Path, manifest: dict[str, Any]) -> pl.DataFrame | None:
    """``user_id`` (bundle ids), ``anomaly_flagged``, ``purchase_propensity``, ``clv_value`` and the
    protected attributes (``attr.gender``, ``attr.age``, when the bundle keeps them; for the
    fairness table of :mod:`serving.campaigns.holdout`) of every profiled member; None when the
    bundle has no profiles. The bundle was verified when loaded."""
    import polars as pl

    from serving.profiles.store import PROFILES_FILE

    if PROFILES_FILE not in manifest.get("files", {}) or "profiles" not in manifest:
        return None
    columns = pl.read_parquet_schema(Path(bundle) / PROFILES_FILE)
    wanted = [
        (pl.col(c) if c in columns else pl.lit(None, dtype=dtype).alias(c))
        for c, dtype in (
            ("anomaly_flagged", pl.Boolean),
            (PROPENSITY_COLUMN, pl.Float64),
            (CLV_COLUMN, pl.Float64),
        )
    ]
    protected = [c for c in ("attr.gender", "attr.age") if c in columns]
    return pl.scan_parquet(Path(bundle) / PROFILES_FILE).select("user_id", *wanted, *protected).collect()


def excluded_members(flags: pl.DataFrame | None, rules: ListRules) -> int:
    """How many profiled members ``rules`` leave out of any list (flagged, below ``min_clv``)."""
    import polars as pl

    if flags is None:
        return 0
    out = pl.lit(False)
    if not rules.include_flagged:
        out = out | pl.col("anomaly_flagged").fill_null(False)
    if rules.min_clv is not None:
        out = out | (pl.col(CLV_COLUMN).fill_null(-1.0) < rules.min_clv)
    return int(flags.select(out.sum()).item())


def check_clv_available(manifest: dict[str, Any], rules: ListRules) -> None:
    """Raise :class:`FeatureUnavailableError` when ``rules`` use lifetime values the bundle lacks
    (no profiles, a CLV model not trained, or data without money amounts: no value to rank by)."""
    if not rules.uses_clv:
        return
    flag = "--order-by clv" if rules.order_by == "clv" else "--min-clv"
    clv = manifest.get("profiles", {}).get("clv", {})
    if not clv.get("trained"):
        reason = clv.get("reason", "the bundle has no lifetime-value model (retrain it with profiles)")
        raise FeatureUnavailableError(f"{flag}: {reason}")
    if not clv.get("has_money"):
        raise FeatureUnavailableError(
            f"{flag}: the training data has no amounts on purchase events, so there is no lifetime value "
            "(only expected purchases; see the manifest's clv.money_note)"
        )


def apply_campaign_rules(
    frame: pl.DataFrame, bundle_ids: pl.Series, flags: pl.DataFrame | None, rules: ListRules
) -> CampaignResult:
    """``frame`` (a campaign list with ``user_id``; ``bundle_ids``: its ids as the bundle holds
    them, row-aligned) without flagged members unless ``rules.include_flagged``, without members
    below ``rules.min_clv``, ordered by ``rules.order_by`` (stable: rows of one member keep their
    order). The score columns used are added to the list."""
    import polars as pl

    if flags is None:
        if rules.needs_profiles:
            flag = f"--order-by {rules.order_by}" if rules.order_by else "--min-clv"
            raise FeatureUnavailableError(
                f"{flag}: the bundle has no member profiles (retrain it with profiles)"
            )
        note = (
            "" if rules.include_flagged else "the bundle has no member profiles: flagged members not filtered"
        )
        return CampaignResult(frame, 0, note)
    # A score column the list already carries (added by an earlier pass) is not joined twice.
    scores = flags.drop([c for c in frame.columns if c != "user_id" and c in flags.columns])
    joined = frame.with_columns(bundle_ids.alias("_bundle_id")).join(
        scores.rename({"user_id": "_bundle_id"}), on="_bundle_id", how="left", maintain_order="left"
    )
    flagged = joined.get_column("anomaly_flagged").fill_null(False)
    removed = 0
    if not rules.include_flagged:
        removed = int(joined.filter(flagged).get_column("user_id").n_unique())
        joined = joined.filter(~flagged)
    kept = list(frame.columns)
    below = 0
    if rules.min_clv is not None:
        worth = pl.col(CLV_COLUMN).fill_null(-1.0) >= rules.min_clv
        below = int(joined.filter(~worth).get_column("user_id").n_unique())
        joined = joined.filter(worth)
    if rules.order_by is not None:
        column = ORDER_COLUMNS[rules.order_by]
        joined = joined.sort(column, descending=True, nulls_last=True, maintain_order=True)
        kept += [column] if column not in kept else []
    if rules.min_clv is not None and CLV_COLUMN not in kept:
        kept.append(CLV_COLUMN)
    return CampaignResult(joined.select(kept), removed, "", below)
