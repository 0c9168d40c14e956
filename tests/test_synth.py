"""Synthetic e-commerce generator: determinism, schema, funnel, skew and learnable structure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from training.data.synth import EVENT_TYPES, SynthConfig, SynthSummary, synthesize


@dataclass(frozen=True)
class Generated:
    summary: SynthSummary
    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame


def _generate(config: SynthConfig, out: Path) -> Generated:
    summary = synthesize(config, out)
    return Generated(
        summary,
        pl.read_parquet(summary.interactions_path),
        pl.read_parquet(summary.users_path),
        pl.read_parquet(summary.items_path),
    )


@pytest.fixture(scope="module")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return _generate(SynthConfig(), tmp_path_factory.mktemp("synth"))


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    config = SynthConfig(users=300, items=120, events=8_000, seed=11)
    first = _generate(config, tmp_path / "a")
    second = _generate(config, tmp_path / "b")
    other = _generate(SynthConfig(users=300, items=120, events=8_000, seed=12), tmp_path / "c")

    for name in ("interactions", "users", "items"):
        assert getattr(first, name).equals(getattr(second, name)), name
    assert not first.interactions.equals(other.interactions)
    assert not first.users.equals(other.users)
    # Users and items come from their own seed streams: changing only the event count keeps them.
    fewer = _generate(SynthConfig(users=300, items=120, events=4_000, seed=11), tmp_path / "d")
    assert fewer.users.equals(first.users)
    assert fewer.items.equals(first.items)


def test_schema_and_dtypes(default_data: Generated) -> None:
    assert dict(default_data.interactions.schema) == (
        {
            "user_id": pl.Utf8,
            "item_id": pl.Utf8,
            "timestamp": pl.Int64,
            "event_type": pl.Utf8,
            "value": pl.Float64,
        }
    )
    assert dict(default_data.users.schema) == (
        {
            "user_id": pl.Utf8,
            "gender": pl.Utf8,
            "age": pl.Int64,
            "region": pl.Utf8,
            "tier": pl.Utf8,
            "signup_date": pl.Date,
            "name": pl.Utf8,
            "email": pl.Utf8,
            "phone": pl.Utf8,
        }
    )
    assert dict(default_data.items.schema) == (
        {
            "item_id": pl.Utf8,
            "category": pl.Utf8,
            "brand": pl.Utf8,
            "price": pl.Float64,
            "tags": pl.List(pl.Utf8),
        }
    )


def test_counts_ids_and_attribute_values(default_data: Generated) -> None:
    users, items, summary = default_data.users, default_data.items, default_data.summary
    assert (summary.users, summary.items) == (users.height, items.height) == (2000, 500)
    assert users["user_id"][0] == "u000001"
    assert items["item_id"][-1] == "i000500"
    assert users["user_id"].is_unique().all()
    assert items["item_id"].is_unique().all()
    assert set(users["tier"].unique()) <= {"bronze", "silver", "gold", "platinum"}
    assert users["age"].is_between(18, 85).all()
    assert items["price"].min() > 0  # type: ignore[operator]
    assert items["tags"].list.len().is_between(1, 3).all()
    assert (items["tags"].list.n_unique() == items["tags"].list.len()).all()
    counts = default_data.interactions["event_type"].value_counts()
    assert summary.event_counts == dict(counts.iter_rows())
    assert list(summary.event_counts) == list(EVENT_TYPES)


def test_personal_data_looks_real(default_data: Generated) -> None:
    users = default_data.users
    assert users["email"].str.contains(r"^[a-z]+\.[a-z]+\d+@([a-z]+\.)?example\.(com|org|net)$").all()
    assert users["email"].is_unique().all()
    assert users["phone"].str.contains(r"^\+1-\d{3}-555-01\d{2}$").all()
    assert users["name"].str.contains(r"^[A-Z][a-z]+ [A-Z][a-z]+$").all()


def test_events_inside_window_and_value_only_for_money_events(default_data: Generated) -> None:
    config, events = SynthConfig(), default_data.interactions
    start = config.end_timestamp - config.days * 86_400
    assert events["timestamp"].is_between(start, config.end_timestamp, closed="left").all()
    money = events["event_type"].is_in(["add_to_cart", "purchase"])
    assert (events["value"].is_not_null() == money).all()
    priced = events.filter(money).join(default_data.items, on="item_id")
    assert (priced["value"] == priced["price"]).all()


def test_funnel_every_cart_and_purchase_follows_a_view(default_data: Generated) -> None:
    events = default_data.interactions.sort("timestamp")

    def preceded_by(later: str, earlier: str) -> pl.Series:
        """For each ``later`` event: seconds since the latest ``earlier`` event on the same user+item."""
        before = events.filter(pl.col("event_type") == earlier).select(
            "user_id", "item_id", pl.col("timestamp").alias("before")
        )
        # Both sides are sorted by time (hence within every user+item group too).
        matched = events.filter(pl.col("event_type") == later).join_asof(
            before.sort("before"),
            left_on="timestamp",
            right_on="before",
            by=["user_id", "item_id"],
            check_sortedness=False,
        )
        return matched["timestamp"] - matched["before"]

    for later, earlier in [("add_to_cart", "view"), ("purchase", "view"), ("purchase", "add_to_cart")]:
        gap = preceded_by(later, earlier)
        assert gap.null_count() == 0, f"{later} without an earlier {earlier}"
        # Same session: funnel steps follow their view by seconds to minutes, never hours.
        assert gap.max() < 3600, (later, earlier)  # type: ignore[operator]
    counts = default_data.summary.event_counts
    assert counts["view"] > counts["click"] > counts["add_to_cart"] > counts["purchase"] > 0


def test_popularity_is_skewed(default_data: Generated) -> None:
    per_item = default_data.interactions.group_by("item_id").len().sort("len", descending=True)
    top = per_item["len"].head(default_data.items.height // 10).sum()
    assert top / default_data.interactions.height > 0.4


def test_attributes_shift_category_preferences(default_data: Generated) -> None:
    joined = default_data.interactions.join(default_data.users, on="user_id").join(
        default_data.items, on="item_id"
    )

    def share(condition: pl.Expr, category: str) -> float:
        subset = joined.filter(condition)
        return float((subset["category"] == category).mean())  # type: ignore[arg-type]

    assert share(pl.col("gender") == "F", "beauty") > 2 * share(pl.col("gender") == "M", "beauty")
    assert share(pl.col("gender") == "M", "automotive") > 2 * share(pl.col("gender") == "F", "automotive")
    assert share(pl.col("age") >= 65, "books") > 1.5 * share(pl.col("age") < 25, "books")
    tier_price = (
        joined.filter(pl.col("event_type") == "purchase").group_by("tier").agg(pl.col("price").median())
    )
    medians = dict(tier_price.iter_rows())
    assert medians["platinum"] > medians["bronze"]


def test_history_beats_global_popularity(default_data: Generated) -> None:
    """Category-aware popularity from a user's past hits the next event more often than top-10."""
    events = default_data.interactions.join(default_data.items.select("item_id", "category"), on="item_id")
    cut = events["timestamp"].quantile(0.8)
    train, test = events.filter(pl.col("timestamp") < cut), events.filter(pl.col("timestamp") >= cut)
    popularity = train.group_by("item_id", "category").len("pop")
    top10 = popularity.sort("pop", "item_id", descending=[True, False]).head(10)["item_id"].to_list()
    taste = train.group_by("user_id", "category").len("n")
    recs = (
        taste.join(popularity, on="category")
        .with_columns(score=pl.col("n") * pl.col("pop"))
        .sort("score", "item_id", descending=[True, False])
        .group_by("user_id", maintain_order=True)
        .head(10)
        .group_by("user_id")
        .agg(pl.col("item_id").alias("recs"))
    )
    nxt = test.sort("timestamp").group_by("user_id").first().join(recs, on="user_id", how="inner")
    history_hit = nxt.select(pl.col("recs").list.contains(pl.col("item_id"))).to_series().mean()
    popular_hit = nxt["item_id"].is_in(top10).mean()
    assert history_hit > 1.2 * popular_hit  # type: ignore[operator]


@pytest.mark.parametrize("events", [3_000, 50_000, 200_000])
def test_event_total_near_target(events: int, tmp_path: Path) -> None:
    summary = synthesize(SynthConfig(users=500, items=200, events=events), tmp_path)
    assert abs(summary.interactions - events) <= max(0.02 * events, 60)
    assert summary.interactions == sum(summary.event_counts.values())


def test_fast_enough(tmp_path: Path) -> None:
    started = time.perf_counter()
    summary = synthesize(SynthConfig(users=20_000, items=5_000, events=500_000), tmp_path)
    elapsed = time.perf_counter() - started
    assert summary.interactions > 490_000
    assert elapsed < 5.0, f"500k events took {elapsed:.1f}s"


def test_tiny_catalog_and_bad_config(tmp_path: Path) -> None:
    summary = synthesize(SynthConfig(users=3, items=2, events=50), tmp_path)
    assert summary.items == 2
    assert summary.interactions > 0
    with pytest.raises(ValueError, match="events must be >= 1"):
        SynthConfig(events=0)
