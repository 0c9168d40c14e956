"""Member profiles built part by part (a prepared directory's shards) equal the one-frame build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from serving.profiles.build import MemberEvents
from serving.profiles.options import ProfileOptions
from training.config import DataConfig
from training.data.shards import open_prepared
from training.data.stream_prepare import prepare_shards
from training.data.synth import SynthConfig, synthesize
from training.profiles.build import build_profiles


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 members with purchases, amounts, item attributes, user attributes and some fraud."""
    out = tmp_path_factory.mktemp("shop")
    synthesize(SynthConfig(users=300, items=50, events=9_000, fraud_users=6), out)
    return out


def _build(shop: Path, interactions: pl.DataFrame | MemberEvents) -> tuple[pl.DataFrame, dict[str, Any]]:
    users = pl.read_parquet(shop / "users.parquet")
    items = pl.read_parquet(shop / "items.parquet")
    user_ids = pl.read_parquet(shop / "interactions.parquet").get_column("user_id").unique().sort()
    embeddings = np.random.default_rng(0).normal(size=(user_ids.len(), 8)).astype(np.float32)
    user_attributes = tuple(c for c in ("gender", "age", "region") if c in users.columns)
    item_attributes = tuple(c for c in ("category", "brand", "tags") if c in items.columns)
    built = build_profiles(
        interactions, users, items, user_attributes, item_attributes, user_ids, embeddings, ProfileOptions()
    )
    manifest = {k: v for k, v in built.manifest.items() if k != "seconds"}
    return built.frame, manifest


def _assert_close(got: Any, want: Any, path: str = "manifest") -> None:
    """Equal; floats to 1e-3 relative. Sums over parts (and Polars' own parallel group-by) add in
    another order (1e-13 apart), and the maximum-likelihood fits (L-BFGS-B, CLV) move by ~1e-5
    on such inputs (Gamma-Gamma's gamma 22.33697 against 22.33720 was seen); counts, labels and
    ids stay exact."""
    if isinstance(want, dict):
        assert isinstance(got, dict)
        assert sorted(got) == sorted(want), path
        for key in want:
            _assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list)
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-3, abs=1e-9), path
    else:
        assert got == want, path


def test_profiles_built_from_member_parts_equal_the_one_frame_build(shop: Path) -> None:
    interactions = pl.read_parquet(shop / "interactions.parquet")
    # Three parts that no member spans, in an order unrelated to the ids.
    part = pl.col("user_id").hash(seed=7) % 3
    parts = MemberEvents(tuple(interactions.filter(part == p).lazy() for p in (2, 0, 1)))
    whole_frame, whole_manifest = _build(shop, interactions)
    parts_frame, parts_manifest = _build(shop, parts)
    assert whole_manifest["churn"].get("trained")
    assert whole_manifest["clv"].get("trained")
    assert whole_manifest["segments"]["descriptions"][0]["top_item_attributes"]
    assert whole_manifest["anomaly"]["flagged"] > 0
    _assert_close(parts_manifest, whole_manifest)
    assert_frame_equal(parts_frame, whole_frame, check_exact=False, rel_tol=1e-3)


def test_a_prepared_directory_gives_member_parts_of_whole_shards(shop: Path, tmp_path: Path) -> None:
    prepare_shards(
        shop / "interactions.parquet",
        shop / "users.parquet",
        shop / "items.parquet",
        tmp_path / "p",
        DataConfig(),
        shards=5,
    )
    shards = open_prepared(tmp_path / "p")
    rows = shards.manifest["shard_rows"]
    # A budget of two shards' events: parts of consecutive whole shards, none over budget
    # unless one shard alone is.
    budget = max(rows) * 2
    events = shards.member_events(budget)
    sizes = [int(p.select(pl.len()).collect().item()) for p in events.parts]
    assert 1 < len(sizes) < 5
    assert sum(sizes) == shards.interactions
    assert all(size <= budget for size in sizes)
    members = [
        set(p.select("user_id").unique().collect().get_column("user_id").to_list()) for p in events.parts
    ]
    for i, first in enumerate(members):
        for second in members[i + 1 :]:
            assert first.isdisjoint(second)
    assert len(shards.member_events(1).parts) == 5
    assert len(shards.member_events(10**12).parts) == 1
