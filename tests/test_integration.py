"""End to end on the shared trained bundle: MLflow store, real gRPC server, batch lists and the CLI."""

from __future__ import annotations

import itertools
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest
from conftest import TrainedBundle
from mlflow.tracking import MlflowClient

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import RECOMMENDER_SERVICE, ServerOptions, ServerStartupError
from serving.bundle.format import MANIFEST
from serving.client import RecommenderClient
from serving.errors import InvalidArgumentError
from serving.recommend.batch import read_user_ids, recommend_batch
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery
from training.cli.main import main

pytestmark = pytest.mark.slow

UNKNOWN_USERS = ("ghost-1", "never-seen-user")


def _seen(trained: TrainedBundle) -> dict[str, set[str]]:
    grouped = trained.interactions.group_by("user_id").agg(pl.col("item_id").unique())
    return {user: set(items) for user, items in grouped.iter_rows()}


def _known_users(trained: TrainedBundle, n: int = 6) -> list[str]:
    """A spread of known users: the most and least active ones and some in between."""
    counts = trained.interactions.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    users = counts.get_column("user_id").to_list()
    picks = np.linspace(0, len(users) - 1, n).round().astype(int)
    return [users[i] for i in picks]


def _popular(trained: TrainedBundle, k: int) -> list[tuple[str, float]]:
    """Most interacted items (ties by item id, the index order) with their interaction shares."""
    counts = trained.interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    total = counts.get_column("len").sum()
    return [(item, n / total) for item, n in counts.head(k).iter_rows()]


# ------------------------------------------------------------------ MLflow


def test_mlflow_run_has_metrics_params_and_artifacts(trained: TrainedBundle) -> None:
    client = MlflowClient(tracking_uri=trained.tracking_uri)
    assert trained.run_id is not None
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["ndcg_at_10"] == pytest.approx(trained.metrics["ndcg@10"])
    assert metrics["recall_at_10"] == pytest.approx(trained.metrics["recall@10"])
    assert "train_loss" in metrics
    assert "eval_train_loss" in metrics
    assert [m.step for m in client.get_metric_history(trained.run_id, "train_loss")] == [0, 1]
    params = run.data.params
    assert params["train.epochs"] == "2"
    assert params["model.output_dim"] == "16"
    assert params["data.interactions"] == str(trained.interactions.height)
    assert run.data.tags["model_version"] == trained.model_version
    # Artifacts live beside the tmp store, never in the repository.
    assert run.info.artifact_uri.removeprefix("file://").startswith(str(trained.workdir))

    top = {a.path for a in client.list_artifacts(trained.run_id)}
    assert {"config.json", "bundle"} <= top
    files = {a.path for a in client.list_artifacts(trained.run_id, "bundle")}
    assert files == {f"bundle/{name}" for name in trained.manifest["files"]} | {f"bundle/{MANIFEST}"}
    local = Path(client.download_artifacts(trained.run_id, "config.json", str(trained.workdir / "dl")))
    assert json.loads(local.read_text(encoding="utf-8")) == trained.config.to_dict()
    manifest = Path(
        client.download_artifacts(trained.run_id, f"bundle/{MANIFEST}", str(trained.workdir / "dl"))
    )
    assert json.loads(manifest.read_text(encoding="utf-8")) == trained.manifest


def test_mlflow_registered_model_version(trained: TrainedBundle) -> None:
    client = MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)
    name = trained.config.tracking.registered_model
    assert trained.registered_version == "1"
    versions = client.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions] == [1]
    version = client.get_model_version(name, "1")
    assert version.run_id == trained.run_id
    assert version.tags["model_version"] == trained.model_version
    assert version.source.endswith("/bundle")


# ------------------------------------------------------------------ gRPC server


@pytest.fixture(scope="module")
def server(trained: TrainedBundle) -> Iterator[BackgroundServer]:
    bundle = trained.bundle
    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=2)
    with BackgroundServer(options, lambda: TwoTowerEngine.load(bundle), start_timeout=30) as running:
        yield running


@pytest.fixture
def client(server: BackgroundServer) -> Iterator[RecommenderClient]:
    with RecommenderClient(server.address, timeout=10.0) as connected:
        yield connected


def test_server_binds_a_free_port_and_reports_serving(
    server: BackgroundServer, client: RecommenderClient
) -> None:
    assert server.port > 0
    assert client.health() == "SERVING"
    assert client.health(RECOMMENDER_SERVICE) == "SERVING"
    with pytest.raises(grpc.RpcError) as info:
        client.health("no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(client: RecommenderClient) -> None:
    services = client.list_services()
    assert "recsys.v1.Recommender" in services
    assert "grpc.health.v1.Health" in services


def test_recommend_known_users(
    trained: TrainedBundle, client: RecommenderClient, engine: TwoTowerEngine
) -> None:
    seen = _seen(trained)
    catalogue = set(trained.interactions.get_column("item_id").unique().to_list())
    for user in _known_users(trained):
        response = client.recommend(user, 5)
        items = [item.item_id for item in response.items]
        scores = [item.score for item in response.items]
        assert len(items) == 5, user
        assert len(set(items)) == 5, user
        assert not set(items) & seen[user], user
        assert set(items) <= catalogue
        assert all(a >= b for a, b in itertools.pairwise(scores)), scores
        assert all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for s in scores)
        assert response.model_version == trained.manifest["model_version"]
        assert response.fallback is False
        assert response.fallback_reason == pb2.FALLBACK_REASON_UNSPECIFIED
        # The wire answer is the in-process answer.
        local = engine.recommend(RecommendQuery(user, 5))
        assert items == [i.item_id for i in local.items]
        np.testing.assert_allclose(scores, [i.score for i in local.items], atol=1e-6)


def test_recommend_returns_every_unseen_item_when_k_exceeds_them(
    trained: TrainedBundle, client: RecommenderClient
) -> None:
    seen = _seen(trained)
    n_items = trained.manifest["counts"]["items"]
    user = _known_users(trained)[0]  # the most active user
    response = client.recommend(user, 1000)
    items = [item.item_id for item in response.items]
    assert len(items) == len(set(items)) == n_items - len(seen[user])
    assert not set(items) & seen[user]


def test_recommend_unknown_user_falls_back_to_popular_items(
    trained: TrainedBundle, client: RecommenderClient
) -> None:
    for user in UNKNOWN_USERS:
        response = client.recommend(user, 7)
        assert response.fallback is True
        assert response.fallback_reason == pb2.FALLBACK_REASON_UNKNOWN_USER
        assert response.model_version == trained.model_version
        assert len(response.items) == 7
        expected = _popular(trained, 7)
        assert [i.item_id for i in response.items] == [item for item, _ in expected]
        np.testing.assert_allclose([i.score for i in response.items], [s for _, s in expected], rtol=1e-5)


@pytest.mark.parametrize(("user", "k"), [("u000001", 0), ("u000001", 1001), ("u000001", -1), ("", 5)])
def test_recommend_invalid_arguments(server: BackgroundServer, user: str, k: int) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(pb2.RecommendRequest(user_id=user, k=k), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("k:" if user else "user_id:") in info.value.details()


def test_recommend_bounds_are_inclusive(trained: TrainedBundle, client: RecommenderClient) -> None:
    user = _known_users(trained)[-1]
    assert len(client.recommend(user, 1).items) == 1
    assert len(client.recommend(UNKNOWN_USERS[0], 1000).items) == trained.manifest["counts"]["items"]


def test_user_embedding_known_user(
    trained: TrainedBundle, client: RecommenderClient, engine: TwoTowerEngine
) -> None:
    for user in _known_users(trained, 3):
        reply = client.user_embedding(user)
        values = np.array(reply.values, dtype=np.float32)
        assert reply.user_id == user
        assert reply.model_version == trained.model_version
        assert len(values) == trained.manifest["embedding_dim"]
        assert np.linalg.norm(values) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(values, engine.user_embedding(user), atol=1e-6)


def test_user_embedding_unknown_user_is_not_found(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.user_embedding(UNKNOWN_USERS[0])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as empty:
        client.user_embedding("")
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_server_refuses_to_start_on_a_bad_bundle(tmp_path: Path) -> None:
    missing = tmp_path / "no-bundle"
    options = ServerOptions(port=0, grace_seconds=0.1)
    with (
        pytest.raises(ServerStartupError, match="not a bundle"),
        BackgroundServer(options, lambda: TwoTowerEngine.load(missing), start_timeout=30),
    ):
        pytest.fail("a server without a model must not start")


# ------------------------------------------------------------------ batch lists


def test_recommend_batch_for_all_users(trained: TrainedBundle, engine: TwoTowerEngine) -> None:
    known = trained.interactions.get_column("user_id").unique(maintain_order=True)
    users = pl.concat([known, pl.Series("user_id", list(UNKNOWN_USERS))])
    k = 5
    frame = recommend_batch(engine, users, k)
    assert frame.columns == ["user_id", "rank", "item_id", "score", "fallback"]
    assert frame.schema["fallback"] == pl.Boolean
    assert frame.height == len(users) * k
    assert frame.get_column("user_id").unique(maintain_order=True).to_list() == users.to_list()
    per_user = frame.group_by("user_id", maintain_order=True).agg("rank", "item_id", "score", "fallback")
    seen = _seen(trained)
    for user, ranks, items, scores, fallback in per_user.iter_rows():
        assert ranks == list(range(1, k + 1))
        assert len(set(items)) == k
        assert all(a >= b for a, b in itertools.pairwise(scores))
        if user in UNKNOWN_USERS:
            assert all(fallback)
            assert items == [item for item, _ in _popular(trained, k)]
        else:
            assert not any(fallback)
            assert not set(items) & seen[user]
    # The batch path agrees with the online path.
    for user in _known_users(trained, 3):
        expected = [i.item_id for i in engine.recommend(RecommendQuery(user, k)).items]
        assert frame.filter(pl.col("user_id") == user).get_column("item_id").to_list() == expected


def test_recommend_batch_validates_k_and_handles_no_users(engine: TwoTowerEngine) -> None:
    with pytest.raises(InvalidArgumentError, match=r"k: must be in 1\.\.1000"):
        recommend_batch(engine, pl.Series("user_id", ["a"]), 0)
    empty = recommend_batch(engine, pl.Series("user_id", [], dtype=pl.Utf8), 3)
    assert empty.height == 0
    assert empty.columns == ["user_id", "rank", "item_id", "score", "fallback"]


def test_read_user_ids_formats(tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_text("b\n\n a \nb\n", encoding="utf-8")
    assert read_user_ids(tmp_path / "u.txt").to_list() == ["b", "a"]
    (tmp_path / "u.csv").write_text("user_id,other\n007,x\n8,y\n", encoding="utf-8")
    assert read_user_ids(tmp_path / "u.csv").to_list() == ["007", "8"]
    (tmp_path / "bad.csv").write_text("id\n1\n", encoding="utf-8")
    with pytest.raises(InvalidArgumentError, match="no user_id column"):
        read_user_ids(tmp_path / "bad.csv")
    with pytest.raises(InvalidArgumentError, match="file not found"):
        read_user_ids(tmp_path / "absent.csv")


# ------------------------------------------------------------------ CLI


def test_cli_recommend_writes_the_file(
    trained: TrainedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = [*_known_users(trained, 3), UNKNOWN_USERS[0]]
    users_csv = tmp_path / "users.csv"
    pl.DataFrame({"user_id": users}).write_csv(users_csv)
    out = tmp_path / "out" / "recs.csv"
    code = main(
        [
            "recommend",
            "--bundle",
            str(trained.bundle),
            "--users",
            str(users_csv),
            "--k",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "wrote 12 rows for 4 users (1 unknown" in capsys.readouterr().out
    written = pl.read_csv(out, schema_overrides={"user_id": pl.Utf8, "item_id": pl.Utf8})
    assert written.columns == ["user_id", "rank", "item_id", "score", "fallback"]
    assert written.height == 12
    assert written.get_column("rank").to_list() == [1, 2, 3] * 4
    assert written.filter(pl.col("fallback")).get_column("user_id").unique().to_list() == [UNKNOWN_USERS[0]]
    assert [p.name for p in out.parent.iterdir()] == ["recs.csv"]  # atomic write: no temp files left

    parquet = tmp_path / "recs.parquet"
    assert (
        main(["recommend", "--bundle", str(trained.bundle), "--users", str(users_csv), "--out", str(parquet)])
        == 0
    )
    assert pl.read_parquet(parquet).height == 4 * 10  # default k


def test_cli_recommend_with_bad_k_fails_cleanly(
    trained: TrainedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users_txt = tmp_path / "users.txt"
    users_txt.write_text("someone\n", encoding="utf-8")
    out = tmp_path / "recs.csv"
    args = [
        "recommend",
        "--bundle",
        str(trained.bundle),
        "--users",
        str(users_txt),
        "--k",
        "0",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    assert "k: must be in 1..1000" in capsys.readouterr().err
    assert not out.exists()


def test_cli_train_with_missing_input_returns_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            "--interactions",
            "missing.csv",
            "--out",
            str(tmp_path / "bundle"),
            "--set",
            f'tracking.tracking_uri="sqlite:///{tmp_path}/mlflow.db"',
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "error: missing.csv: file not found" in err
    assert not (tmp_path / "bundle").exists()
    assert list(tmp_path.iterdir()) == []  # nothing written, no MLflow run started


def test_cli_config_rejects_unknown_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "train.nope=1"]) == 2
    assert "error: train.nope: unknown key" in capsys.readouterr().err


def test_cli_config_prints_the_resolved_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "train.epochs=3", "--set", "model.hidden_dims=[8]"]) == 0
    text = capsys.readouterr().out
    resolved = tomllib.loads(text)
    assert resolved["train"]["epochs"] == 3
    assert resolved["model"]["hidden_dims"] == [8]
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["config", "--config", str(path)]) == 0
    assert capsys.readouterr().out == text
