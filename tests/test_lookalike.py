"""Lookalike audiences: the engine contract, the stored user index, the CLI and the real gRPC service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest
from conftest import TrainedBundle
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto.recsys.v1 import audiences_pb2 as pb2
from serving._proto.recsys.v1 import audiences_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import AUDIENCES_SERVICE, ServerOptions
from serving.audiences.search import (
    MAX_SIZE,
    SeedScoring,
    SimilarUsersQuery,
    UserAudiences,
    build_user_index,
)
from serving.bundle.format import MANIFEST, USER_INDEX, load_bundle
from serving.bundle.index import IVF_FLAT_INNER_PRODUCT
from serving.bundle.index_options import IndexOptions
from serving.errors import FeatureUnavailableError, InvalidArgumentError
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery
from training.cli.main import main

pytestmark = pytest.mark.slow


def _active_users(trained: TrainedBundle, n: int) -> list[str]:
    counts = trained.interactions.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    return counts.get_column("user_id").head(n).to_list()


def _all_embeddings(engine: TwoTowerEngine) -> np.ndarray:
    return engine.embed_rows(np.arange(engine.bundle.users.height, dtype=np.int64))


def _brute_force(engine: TwoTowerEngine, seeds: list[str], size: int, scoring: SeedScoring) -> list[str]:
    vectors = _all_embeddings(engine)
    rows = [engine.user_row(s) for s in seeds]
    seed_rows = np.array([r for r in rows if r is not None])
    if scoring is SeedScoring.CENTROID:
        centroid = vectors[seed_rows].mean(axis=0)
        scores = vectors @ (centroid / np.linalg.norm(centroid))
    elif scoring is SeedScoring.CONTRAST:
        direction = vectors[seed_rows].mean(axis=0) - vectors.mean(axis=0)
        scores = vectors @ (direction / np.linalg.norm(direction))
    else:
        scores = (vectors @ vectors[seed_rows].T).max(axis=1)
    scores[seed_rows] = -np.inf
    order = np.argsort(-scores, kind="stable")[:size]
    ids = engine.bundle.users.get_column("user_id")
    return ids.gather(order).to_list()


# ------------------------------------------------------------------ engine


def test_bundle_stores_a_checksummed_user_index(trained: TrainedBundle, engine: TwoTowerEngine) -> None:
    assert USER_INDEX in trained.manifest["files"]
    assert trained.manifest["user_index"]["ntotal"] == engine.bundle.users.height
    index = engine.bundle.user_index
    assert index is not None
    assert index.ntotal == engine.bundle.users.height
    # The stored vectors are the user tower's output for the stored users (what serving embeds).
    stored = index.reconstruct_n(0, index.ntotal)
    np.testing.assert_allclose(stored, _all_embeddings(engine), atol=1e-5)
    mean = trained.manifest["user_index"]["mean_embedding"]
    np.testing.assert_allclose(mean, stored.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("scoring", list(SeedScoring))
def test_lookalikes_match_brute_force_and_exclude_seeds(
    trained: TrainedBundle, engine: TwoTowerEngine, scoring: SeedScoring
) -> None:
    seeds = _active_users(trained, 8)
    audience = engine.similar_users(SimilarUsersQuery(tuple(seeds), 25, scoring))
    ids = [u.user_id for u in audience.users]
    scores = [u.score for u in audience.users]
    assert len(ids) == 25
    assert len(set(ids)) == 25
    assert not set(ids) & set(seeds)
    assert scores == sorted(scores, reverse=True)
    assert ids == _brute_force(engine, seeds, 25, scoring)
    assert audience.unknown_seeds == 0
    assert audience.known_seeds == 8
    assert audience.model_version == trained.model_version


def test_unknown_and_duplicate_seeds_are_counted_and_ignored(
    trained: TrainedBundle, engine: TwoTowerEngine
) -> None:
    seeds = _active_users(trained, 3)
    audience = engine.similar_users(SimilarUsersQuery((*seeds, seeds[0], "ghost-1", "ghost-2", ""), 10))
    assert (audience.known_seeds, audience.unknown_seeds) == (3, 2)
    assert [u.user_id for u in audience.users] == _brute_force(engine, seeds, 10, SeedScoring.CONTRAST)


def test_size_larger_than_the_user_base_returns_every_other_user(engine: TwoTowerEngine) -> None:
    users = engine.bundle.users.get_column("user_id").to_list()
    audience = engine.similar_users(SimilarUsersQuery((users[0], users[1]), MAX_SIZE))
    assert sorted(u.user_id for u in audience.users) == sorted(users[2:])


@pytest.mark.parametrize(
    ("seeds", "size", "field", "problem"),
    [
        (("ghost-1", "ghost-2"), 10, "seed_user_ids", "none of the 2 seed users is known"),
        ((), 10, "seed_user_ids", "at least one"),
        (("",), 10, "seed_user_ids", "at least one"),
        (("u1",), 0, "size", "1..100000"),
        (("u1",), MAX_SIZE + 1, "size", "1..100000"),
    ],
)
def test_invalid_requests_name_the_field(
    engine: TwoTowerEngine, seeds: tuple[str, ...], size: int, field: str, problem: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        engine.similar_users(SimilarUsersQuery(seeds, size))
    assert info.value.field == field
    assert problem in info.value.problem


def test_nearest_seed_bounds_seeds_times_size(engine: TwoTowerEngine) -> None:
    seeds = tuple(f"s{i}" for i in range(200))
    with pytest.raises(InvalidArgumentError) as info:
        engine.similar_users(SimilarUsersQuery(seeds, MAX_SIZE, SeedScoring.NEAREST_SEED))
    assert info.value.field == "scoring"
    assert "200 x 100000" in info.value.problem


@pytest.mark.parametrize("size", [100, 1000])
def test_approximate_user_index_answers_like_exact_search(size: int) -> None:
    """An IVF user index (as above the exact threshold): seeds stay excluded and the probed
    lists grow with the audience size, so recall against exact search stays high."""
    rng = np.random.default_rng(0)
    n = 20_000
    centres = rng.standard_normal((200, 16)).astype(np.float32)
    vectors = centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    built = build_user_index(vectors, IndexOptions(kind="ivf", sample_queries=200))
    assert built.built.spec.type == IVF_FLAT_INNER_PRODUCT
    ids = pl.Series("user_id", [f"u{i}" for i in range(n)])
    audiences = UserAudiences(
        built.built.index,
        ids,
        lambda user_id: int(user_id[1:]) if user_id.startswith("u") else None,
        lambda rows: vectors[rows],
        "v1",
        built.mean,
    )
    seeds = tuple(f"u{i}" for i in range(0, n, 400))
    found = [u.user_id for u in audiences.expand(SimilarUsersQuery(seeds, size)).users]
    assert len(found) == size
    assert not set(found) & set(seeds)
    direction = vectors[[int(s[1:]) for s in seeds]].mean(axis=0) - vectors.mean(axis=0)
    scores = vectors @ direction
    scores[[int(s[1:]) for s in seeds]] = -np.inf
    truth = {f"u{i}" for i in np.argsort(-scores)[:size]}
    assert len(truth & set(found)) / size >= 0.95


@pytest.fixture(scope="module")
def bundle_without_user_index(trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared bundle as written before lookalikes existed: no users.faiss, no manifest entry."""
    copy = tmp_path_factory.mktemp("old") / "bundle"
    shutil.copytree(trained.bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text(encoding="utf-8"))
    del manifest["files"][USER_INDEX], manifest["user_index"]
    (copy / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    (copy / USER_INDEX).unlink()
    return copy


def test_bundle_without_user_index_loads_and_refuses_lookalikes(
    trained: TrainedBundle, bundle_without_user_index: Path
) -> None:
    old = TwoTowerEngine(load_bundle(bundle_without_user_index))
    assert old.bundle.user_index is None
    user = _active_users(trained, 1)[0]
    assert old.recommend(RecommendQuery(user, 5)).items  # everything else still works
    with pytest.raises(FeatureUnavailableError, match="no user index"):
        old.similar_users(SimilarUsersQuery((user,), 5))


# ------------------------------------------------------------------ CLI


def test_cli_writes_the_audience(
    trained: TrainedBundle, engine: TwoTowerEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = _active_users(trained, 5)
    seed_file = tmp_path / "seeds.txt"
    seed_file.write_text("\n".join([*seeds, "ghost-1", ""]) + "\n", encoding="utf-8")
    out = tmp_path / "audience.csv"
    args = ["lookalike", "--bundle", str(trained.bundle), "--seed-users", str(seed_file), "--size", "12"]
    assert main([*args, "--out", str(out)]) == 0
    assert "12 lookalike users of 5 seed users (1 unknown" in capsys.readouterr().out
    frame = pl.read_csv(out, schema_overrides={"user_id": pl.Utf8})
    assert frame.columns == ["user_id", "rank", "score"]
    assert frame.get_column("rank").to_list() == list(range(1, 13))
    assert frame.get_column("user_id").to_list() == _brute_force(engine, seeds, 12, SeedScoring.CONTRAST)

    parquet_seeds = tmp_path / "seeds.parquet"
    pl.DataFrame({"user_id": seeds}).write_parquet(parquet_seeds)
    out_parquet = tmp_path / "audience.parquet"
    args[4] = str(parquet_seeds)
    assert main([*args, "--scoring", "nearest_seed", "--out", str(out_parquet)]) == 0
    expected = _brute_force(engine, seeds, 12, SeedScoring.NEAREST_SEED)
    assert pl.read_parquet(out_parquet).get_column("user_id").to_list() == expected


def test_cli_rejects_a_bad_size(
    trained: TrainedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_file = tmp_path / "seeds.txt"
    seed_file.write_text(_active_users(trained, 1)[0], encoding="utf-8")
    out = tmp_path / "audience.csv"
    args = ["lookalike", "--bundle", str(trained.bundle), "--seed-users", str(seed_file), "--size", "0"]
    assert main([*args, "--out", str(out)]) == 2
    assert "size: must be in 1..100000" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ gRPC


@pytest.fixture(scope="module")
def channel(served_channel: grpc.Channel) -> grpc.Channel:
    return served_channel


def test_find_similar_users_over_grpc(
    trained: TrainedBundle, engine: TwoTowerEngine, channel: grpc.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=AUDIENCES_SERVICE), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    seeds = _active_users(trained, 6)
    stub = pb2_grpc.AudiencesStub(channel)
    response = stub.FindSimilarUsers(
        pb2.FindSimilarUsersRequest(seed_user_ids=[*seeds, "ghost-1"], size=20), timeout=10
    )
    expected = engine.similar_users(SimilarUsersQuery(tuple(seeds), 20))
    assert [u.user_id for u in response.users] == [u.user_id for u in expected.users]
    assert [u.score for u in response.users] == pytest.approx([u.score for u in expected.users], abs=1e-5)
    assert (response.known_seed_count, response.unknown_seed_count) == (6, 1)
    assert response.model_version == trained.model_version

    centroid = stub.FindSimilarUsers(
        pb2.FindSimilarUsersRequest(seed_user_ids=seeds, size=20, scoring=pb2.SEED_SCORING_CENTROID),
        timeout=10,
    )
    expected_centroid = _brute_force(engine, seeds, 20, SeedScoring.CENTROID)
    assert [u.user_id for u in centroid.users] == expected_centroid


@pytest.mark.parametrize(
    ("seeds", "size", "message"),
    [
        (["ghost-1"], 5, "seed_user_ids: none of the 1 seed users is known"),
        ([], 5, "seed_user_ids: must hold at least one"),
        (["x"], 0, "size: must be in 1..100000"),
        (["x"], 100_001, "size: must be in 1..100000"),
        ([f"s{i}" for i in range(101)], 100_000, "scoring: nearest_seed searches size results per seed"),
    ],
)
def test_find_similar_users_invalid_argument(
    channel: grpc.Channel, seeds: list[str], size: int, message: str
) -> None:
    stub = pb2_grpc.AudiencesStub(channel)
    request = pb2.FindSimilarUsersRequest(
        seed_user_ids=seeds, size=size, scoring=pb2.SEED_SCORING_NEAREST_SEED
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.FindSimilarUsers(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


def test_find_similar_users_without_user_index_is_failed_precondition(
    trained: TrainedBundle, bundle_without_user_index: Path
) -> None:
    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=1)
    with (
        BackgroundServer(
            options, lambda: TwoTowerEngine.load(bundle_without_user_index), start_timeout=30
        ) as s,
        grpc.insecure_channel(s.address) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        pb2_grpc.AudiencesStub(channel).FindSimilarUsers(
            pb2.FindSimilarUsersRequest(seed_user_ids=_active_users(trained, 1), size=5), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no user index" in (info.value.details() or "")


def test_lift_seed_pools_and_share_ranking() -> None:
    from benchmarks.lookalike_lift import _FAN_MIN_RATINGS, _by_genre_share, _genre_shares, _seed_pool

    n = _FAN_MIN_RATINGS
    rows = (
        [("fan", True)] * n  # share 1.0
        + [("half", True)] * n
        + [("half", False)] * n  # share 0.5
        + [("few", True)]  # share 1.0 but fewer than _FAN_MIN_RATINGS ratings
        + [("none", False)] * n  # share 0
        + [("stranger", True)] * n  # not known to the model
    )
    train_g = pl.DataFrame({"user_id": [u for u, _ in rows], "in_genre": [g for _, g in rows]})
    shares = _genre_shares(train_g)
    known = {"fan", "half", "few", "none"}
    assert _seed_pool(shares, "raters", known) == ["fan", "few", "half"]
    assert _seed_pool(shares, "fans", known) == ["fan"]  # top quarter of the active users' shares
    assert _by_genre_share(shares, known) == ["fan", "few", "half", "none"]
