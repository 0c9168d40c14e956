"""Member profiles on hand-made data: behaviour, RFM, lifecycle, segments, churn, config."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from serving.profiles.behaviour import DAY_SECONDS
from serving.profiles.build import ProfileInputs, profile_context, profile_frame
from serving.profiles.linear import LinearModel
from serving.profiles.options import ProfileOptions
from serving.profiles.rfm import SEGMENTS, quantile_score, segment
from serving.profiles.segments import cluster, cosine_distances, describe, normalised, silhouette
from training.config import ConfigError, load_config
from training.profiles.churn import train_churn
from training.profiles.classifiers import auc, fit_logistic
from training.profiles.cuts import Cuts

CLOCK = 1_700_000_000  # the latest timestamp of the hand-made data


def _interactions(rows: list[tuple[str, str, int, str, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={
            "user_id": pl.Utf8,
            "item_id": pl.Utf8,
            "timestamp": pl.Int64,
            "event_type": pl.Utf8,
            "value": pl.Float64,
        },
        orient="row",
    )


ITEMS = pl.DataFrame(
    {
        "item_id": ["i1", "i2", "i3"],
        "category": ["books", "books", "toys"],
        "tags": [["a", "b"], ["b"], None],
        "price": [10.0, 20.0, 30.0],
    }
)
# Thursday 2023-11-14 22:13:20 UTC is CLOCK.
SHOP = _interactions(
    [
        ("alice", "i1", CLOCK - 40 * DAY_SECONDS, "view", None),
        ("alice", "i1", CLOCK - 40 * DAY_SECONDS + 60, "purchase", 10.0),
        ("alice", "i2", CLOCK - 2 * DAY_SECONDS, "view", None),
        ("alice", "i2", CLOCK - 2 * DAY_SECONDS + 60, "add_to_cart", 20.0),
        ("alice", "i2", CLOCK - 2 * DAY_SECONDS + 120, "purchase", 30.0),
        ("bob", "i3", CLOCK - 100 * DAY_SECONDS, "view", None),
        ("bob", "i3", CLOCK - 100 * DAY_SECONDS + 5, "view", None),
        ("carol", "i3", CLOCK, "view", None),
    ]
)
USERS = pl.DataFrame(
    {"user_id": ["alice", "bob", "carol"], "tier": ["gold", "bronze", None], "age": [30, 40, 50]}
)


def _profiles(interactions: pl.DataFrame = SHOP, options: ProfileOptions | None = None) -> pl.DataFrame:
    options = options or ProfileOptions()
    inputs = ProfileInputs(
        interactions.lazy(), ITEMS.lazy(), USERS.lazy(), ("category", "tags"), ("tier", "age")
    )
    return profile_frame(inputs, profile_context(inputs, options), options).collect()


def test_behaviour_counts_times_preferences_and_values() -> None:
    profiles = _profiles()
    assert profiles.get_column("user_id").to_list() == ["alice", "bob", "carol"]
    alice = profiles.row(0, named=True)
    assert alice["events_total"] == 5
    assert (alice["events.view"], alice["events.purchase"], alice["events.add_to_cart"]) == (2, 2, 1)
    assert alice["first_activity"] == CLOCK - 40 * DAY_SECONDS
    assert alice["last_activity"] == CLOCK - 2 * DAY_SECONDS + 120
    assert alice["active_days"] == 2
    # Average basket value: purchases only (the add_to_cart value is not money spent).
    assert alice["average_value"] == pytest.approx(20.0)
    assert (alice["frequency"], alice["monetary"]) == (2, pytest.approx(40.0))
    preferences = {(p["attribute"], p["value"]): p["share"] for p in alice["preferences"]}
    assert preferences[("category", "books")] == pytest.approx(1.0)
    # tags: i1 has a and b, i2 has b; all 5 interactions have tags.
    assert preferences[("tags", "b")] == pytest.approx(1.0)
    assert preferences[("tags", "a")] == pytest.approx(2 / 5)
    assert alice["top_hours"][0] == 22
    assert alice["top_weekdays"][0] == 7
    bob = profiles.row(1, named=True)
    assert bob["average_value"] is None
    assert bob["frequency"] == 0
    assert bob["monetary"] == 0.0
    # Items without tags contribute no tag share; personal data never appears.
    assert {p["attribute"] for p in bob["preferences"]} == {"category"}
    assert (bob["attr.tier"], bob["attr.age"]) == ("bronze", 40)


def test_monetary_falls_back_to_interaction_counts_without_amounts() -> None:
    ratings = SHOP.with_columns(pl.lit("rating").alias("event_type"), pl.lit(4.0).alias("value"))
    options = ProfileOptions()
    inputs = ProfileInputs(ratings.lazy())
    context = profile_context(inputs, options)
    assert context.monetary_source == "value"
    profiles = profile_frame(inputs, context, options).collect()
    alice = profiles.row(0, named=True)
    assert (alice["frequency"], alice["monetary"], alice["average_value"]) == (5, 5.0, 4.0)


def test_quantile_scores_handle_ties_and_tiny_data() -> None:
    frame = pl.DataFrame({"x": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "tied": [0] * 6 + [1, 2, 3, 4]})
    scores = frame.select(
        quantile_score(pl.col("x"), 5).alias("x"), quantile_score(pl.col("tied"), 5).alias("tied")
    )
    assert scores.get_column("x").to_list() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # Six users without activity share the lowest score, however many they are.
    assert scores.get_column("tied").to_list() == [1] * 6 + [4, 4, 5, 5]
    single = pl.DataFrame({"x": [3]}).select(quantile_score(pl.col("x"), 5))
    assert single.item() == 1


@pytest.mark.parametrize(
    ("r", "f", "name"),
    [
        (5, 5, "champions"),
        (5, 4, "champions"),
        (4, 5, "loyal"),
        (3, 4, "loyal"),
        (5, 2, "potential_loyalists"),
        (5, 1, "new_customers"),
        (4, 1, "promising"),
        (3, 3, "need_attention"),
        (3, 1, "about_to_sleep"),
        (1, 5, "cannot_lose"),
        (2, 3, "at_risk"),
        (2, 2, "hibernating"),
        (1, 2, "hibernating"),
        (1, 1, "lost"),
    ],
)
def test_named_rfm_segments(r: int, f: int, name: str) -> None:
    got = pl.DataFrame({"r": [r], "f": [f]}).select(segment(pl.col("r"), pl.col("f"), 5)).item()
    assert got == name


def test_every_rfm_cell_has_a_known_segment_for_other_bin_counts() -> None:
    for bins in (3, 5, 10):
        grid = pl.DataFrame(
            {"r": [r for r in range(1, bins + 1) for _ in range(bins)], "f": list(range(1, bins + 1)) * bins}
        )
        names = grid.select(segment(pl.col("r"), pl.col("f"), bins)).to_series()
        assert set(names.to_list()) <= set(SEGMENTS)
        assert names[0] == "lost"
        assert names[-1] == "champions"


def test_lifecycle_stages_follow_the_thresholds() -> None:
    profiles = _profiles(
        options=ProfileOptions(new_days=10, active_days=30, at_risk_days=60, dormant_days=90)
    )
    stages = dict(zip(profiles["user_id"], profiles["lifecycle"], strict=True))
    # alice: tenure 40 d, recency 2 d -> active; bob: recency 100 d -> churned; carol: first seen now -> new.
    assert stages == {"alice": "active", "bob": "churned", "carol": "new"}
    # Moving the dormant threshold past bob's recency makes him dormant.
    profiles = _profiles(options=ProfileOptions(new_days=10, dormant_days=120))
    assert dict(zip(profiles["user_id"], profiles["lifecycle"], strict=True))["bob"] == "dormant"


def _blobs(per_cluster: int = 60, k: int = 4, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:k] * 5.0
    labels = np.repeat(np.arange(k), per_cluster)
    return centres[labels] + rng.normal(scale=0.5, size=(len(labels), dim)), labels


def test_silhouette_chooses_the_true_number_of_clusters() -> None:
    x, truth = _blobs()
    result = cluster(x, 0, 2, 8, 500, seed=1)
    assert result.k == 4
    assert result.chosen_by == "silhouette"
    assert max(result.silhouettes, key=lambda k: result.silhouettes[k]) == 4
    # The clusters found are the true ones (up to renaming).
    pairs = set(zip(truth.tolist(), result.labels.tolist(), strict=True))
    assert len(pairs) == 4
    configured = cluster(x, 3, 2, 8, 500, seed=1)
    assert (configured.k, configured.chosen_by, len(np.unique(configured.labels))) == (3, "configured", 3)
    assert cluster(x[:2], 0, 2, 8, 500, seed=1).k == 1  # too few users: one segment


def test_silhouette_is_high_for_separated_and_low_for_random_labels() -> None:
    x, truth = _blobs()
    distance = cosine_distances(normalised(x))
    assert silhouette(distance, truth) > 0.8
    shuffled = np.random.default_rng(3).permutation(truth)
    assert abs(silhouette(distance, shuffled)) < 0.1


def test_segment_descriptions_rank_values_by_lift() -> None:
    assignments = pl.DataFrame({"user_id": ["alice", "bob", "carol"], "segment": [0, 1, 1]})
    described = describe(
        assignments, SHOP.lazy(), ITEMS.lazy(), ("category",), USERS.lazy(), ("tier",), top=3
    )
    assert [d["segment"] for d in described] == [0, 1]
    assert [d["size"] for d in described] == [1, 2]
    books = described[0]["top_item_attributes"][0]
    # alice: all 5 interactions on books; overall 5 of 8.
    assert (books["value"], books["share"], books["lift"]) == ("books", 1.0, pytest.approx(1.6))
    assert described[1]["top_item_attributes"][0]["value"] == "toys"
    assert described[0]["top_user_attributes"][0]["value"] == "gold"
    assert "category=books" in described[0]["label"]


def test_auc_and_logistic_regression() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] - 2 * x[:, 1] + rng.normal(scale=0.5, size=400) > 0).astype(float)
    model = fit_logistic(x, y, ("a", "b", "c"), l2=1.0)
    assert model.coefficients[0] > 0 > model.coefficients[1]
    assert abs(model.coefficients[2]) < 0.3
    assert auc(y, model.score(x)) > 0.95
    assert LinearModel.from_dict(model.to_dict()) == model


def _churny_data(users: int = 200, days: int = 120, seed: int = 0) -> pl.DataFrame:
    """Half the users are regulars (a visit every ~3 days throughout); the other half
    fade: they visit rarely and stop at a random day."""
    rng = np.random.default_rng(seed)
    rows = []
    end = CLOCK
    start = end - days * DAY_SECONDS
    for u in range(users):
        regular = u % 2 == 0
        stop = days if regular else rng.integers(10, days)
        gap = 3 if regular else 9
        day = int(rng.integers(0, gap))
        while day < stop:
            rows.append((f"u{u}", f"i{rng.integers(0, 20)}", start + day * DAY_SECONDS + 3600, "view", None))
            day += int(rng.integers(1, 2 * gap))
    rows.append(("u0", "i0", end, "view", None))
    return _interactions(rows)


def test_churn_model_is_validated_on_a_later_cut_and_beats_chance() -> None:
    data = _churny_data()
    options = ProfileOptions(churn_horizon_days=20)
    inputs = ProfileInputs(data.lazy())
    context = profile_context(inputs, options)
    result = train_churn(Cuts(inputs, context, options))
    meta = result.metadata
    assert meta["trained"]
    assert result.model is not None
    assert meta["fit_cut"] < meta["validation_cut"] == context.clock + 1 - 20 * DAY_SECONDS
    assert meta["auc"] > 0.75
    assert 0 < meta["validation_base_rate"] < 1
    assert meta["validation_users"] >= meta["fit_users"]


def test_churn_is_skipped_with_a_reason_when_data_is_too_short() -> None:
    options = ProfileOptions(churn_horizon_days=60)
    inputs = ProfileInputs(SHOP.lazy())
    result = train_churn(Cuts(inputs, profile_context(inputs, options), options))
    assert result.model is None
    assert not result.metadata["trained"]
    assert "users active before it" in result.metadata["reason"]


def test_profiles_config_section() -> None:
    config = load_config(None, ["profiles.segments_k=4", "profiles.churn_horizon_days=14"])
    assert (config.profiles.segments_k, config.profiles.churn_horizon_days) == (4, 14.0)
    assert config.to_dict()["profiles"]["monetary_event_types"] == ["purchase", "order"]
    with pytest.raises(ConfigError, match=r"profiles\.rfm_bins"):
        load_config(None, ["profiles.rfm_bins=1"])
    with pytest.raises(ConfigError, match=r"profiles\.at_risk_days"):
        load_config(None, ["profiles.at_risk_days=500"])
    with pytest.raises(ConfigError, match=r"profiles\.colour: unknown key"):
        load_config(None, ["profiles.colour=1"])
