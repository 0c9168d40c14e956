"""Model lifecycle on a real MLflow registry in tmp_path: promotion behind the evaluation
gate, rollback, and ``models:/NAME@ALIAS`` serving that hot-swaps under concurrent load with
zero failed calls (and refuses a corrupted version, the old model serving on)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import TrainedBundle, tiny_config

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.bundle.format import read_manifest
from serving.lifecycle.live_models import LiveModelOptions
from serving.lifecycle.mlflow_store import ModelRegistry, RegistryError, metric_key
from training.cli.main import main as recsys
from training.promotion import NothingToRollBackError, PromotionRefusedError, promote, rollback

pytestmark = pytest.mark.slow

MODEL = "swap-model"
CLIENTS = 8
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Store:
    """A tmp MLflow store with registered versions of :data:`MODEL`.

    ``v1``: the session's trained bundle; ``v2``: a second tiny model (other seed), better
    ndcg@10; ``bad``: v2 with a damaged weights file (checksum mismatch).
    """

    uri: str
    artifacts: str
    root: Path
    registry: ModelRegistry
    v1: str
    v2: str
    bad: str
    model_versions: dict[str, str]

    def register(self, bundle: Path, name: str, ndcg: float | None, protocol: str = "llo") -> str:
        return self.registry.register_bundle(
            bundle,
            name,
            artifact_location=self.artifacts,
            metrics={} if ndcg is None else {"ndcg@10": ndcg, "recall@10": ndcg * 2},
            params={"eval.protocol": protocol, "eval.k": 10},
            tags={"model_version": read_manifest(bundle)["model_version"]},
        )


@pytest.fixture(scope="module")
def store(trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Store:
    from training.pipeline import train

    root = tmp_path_factory.mktemp("registry")
    second = root / "bundle-v2"
    config = tiny_config("train.seed=7", "train.epochs=1", "eval.protocol=none", "tracking.enabled=false")
    data = trained.data
    train(config, data.interactions_path, data.users_path, data.items_path, second)
    damaged = root / "bundle-damaged"
    shutil.copytree(second, damaged)
    weights = damaged / "towers.pt"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))

    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry = ModelRegistry(uri)
    partial = Store(uri, (root / "artifacts").as_uri(), root, registry, "", "", "", {})
    v1 = partial.register(trained.bundle, MODEL, 0.20)
    v2 = partial.register(second, MODEL, 0.25)
    bad = partial.register(damaged, MODEL, 0.30)
    versions = {v1: trained.model_version, v2: read_manifest(second)["model_version"]}
    assert versions[v1] != versions[v2]
    return Store(uri, partial.artifacts, root, registry, v1, v2, bad, versions)


# ------------------------------------------------------------------ promotion
def test_promotion_gate_rollback_and_history(store: Store, trained: TrainedBundle) -> None:
    name = "gate-model"
    low = store.register(trained.bundle, name, 0.10)
    high = store.register(trained.bundle, name, 0.30)
    other_protocol = store.register(trained.bundle, name, 0.90, protocol="time")
    unmeasured = store.register(trained.bundle, name, None)
    registry = store.registry

    first = promote(registry, name, low, "champion")  # no holder yet: nothing to compare with
    assert (first.version, first.previous) == (low, None)
    up = promote(registry, name, high, "champion")
    assert (up.previous, up.value, up.previous_value) == (low, pytest.approx(0.30), pytest.approx(0.10))

    with pytest.raises(PromotionRefusedError) as refused:
        promote(registry, name, low, "champion")
    assert f"ndcg@10 0.1000 of version {low} is below 0.3000 of version {high}" in str(refused.value)
    with pytest.raises(PromotionRefusedError, match=r"not comparable: .* protocol time@10, .* llo@10"):
        promote(registry, name, other_protocol, "champion")
    with pytest.raises(PromotionRefusedError, match=f"version {unmeasured} has no logged ndcg@10"):
        promote(registry, name, unmeasured, "champion")
    assert registry.alias_version(name, "champion") == high  # every refusal left the alias alone
    # Another metric can be the gate; --force overrides a refusal.
    assert promote(registry, name, low, "challenger").previous is None
    forced = promote(registry, name, low, "champion", force=True)
    assert forced.forced
    assert "below" in forced.note
    assert registry.alias_history(name, "champion") == [low, high]

    back = rollback(registry, name, "champion")
    assert (back.version, back.previous) == (high, low)
    assert rollback(registry, name, "champion").version == low
    assert registry.alias_version(name, "champion") == low
    with pytest.raises(NothingToRollBackError, match="no earlier version to roll back to"):
        rollback(registry, name, "champion")
    assert registry.alias_version(name, "challenger") == low  # aliases have separate histories


def test_promote_and_rollback_commands(
    store: Store, trained: TrainedBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "cli-model"
    a = store.register(trained.bundle, name, 0.2)
    b = store.register(trained.bundle, name, 0.1)
    flags = ["--model", name, "--set", f'tracking.tracking_uri="{store.uri}"']
    assert recsys(["promote", "--version", a, "--alias", "champion", *flags]) == 0
    assert recsys(["promote", "--version", b, "--alias", "champion", *flags]) == 2
    err = capsys.readouterr().err
    assert "refused: ndcg@10 0.1000 of version 2 is below 0.2000 of version 1" in err
    assert "--force" in err
    assert recsys(["promote", "--version", b, "--alias", "champion", "--force", *flags]) == 0
    assert recsys(["rollback", "--alias", "champion", *flags]) == 0
    assert f"-> version {a} (was {b})" in capsys.readouterr().out
    assert recsys(["rollback", "--alias", "champion", *flags]) == 2
    assert recsys(["promote", "--version", "99", "--alias", "champion", *flags]) == 2
    assert "no such registered model version" in capsys.readouterr().err


# ------------------------------------------------------------------ hot swap
class Load:
    """``CLIENTS`` threads calling Recommend in a loop through one real channel each."""

    def __init__(self, address: str, users: list[str]) -> None:
        self.calls = 0
        self.failures: list[str] = []
        self.versions: Counter[str] = Counter()
        self.last_version = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(address, users, seed), daemon=True)
            for seed in range(CLIENTS)
        ]

    def _client(self, address: str, users: list[str], seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(address) as channel:
            stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
            while not self._stop.is_set():
                request = pb2.RecommendRequest(user_id=rng.choice(users), k=10)
                try:
                    response = stub.Recommend(request, timeout=10)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.calls += 1
                        self.failures.append(f"{exc.code()}: {exc.details()}")
                    continue
                with self._lock:
                    self.calls += 1
                    self.versions[response.model_version] += 1
                    self.last_version = response.model_version

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def wait(self, condition: Callable[[], bool], timeout: float = 60.0) -> float:
        """Seconds until ``condition`` held (load keeps running); fails after ``timeout``."""
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < timeout, "condition not met in time"
            time.sleep(0.02)
        return time.monotonic() - started


def test_alias_moves_are_hot_swapped_under_load_with_zero_failed_calls(
    store: Store, trained: TrainedBundle, tmp_path: Path
) -> None:
    registry = store.registry
    registry.set_alias(MODEL, "champion", store.v1)
    old, new = store.model_versions[store.v1], store.model_versions[store.v2]
    users = trained.interactions.get_column("user_id").unique().to_list()
    source = LiveModelOptions(
        model=f"models:/{MODEL}@champion",
        poll_seconds=0.2,
        cache_dir=tmp_path / "cache",
        tracking_uri=store.uri,
    )
    options = ServerOptions(port=0, max_workers=2, grace_seconds=2)
    with BackgroundServer(options, source) as server, Load(server.address, users) as load:
        models = server.models
        assert models is not None
        load.wait(lambda: load.calls >= 200)
        assert set(load.versions) == {old}

        moved = promote(registry, MODEL, store.v2, "champion")  # passes the gate: 0.25 >= 0.20
        assert moved.previous == store.v1
        seen_new_after = load.wait(lambda: load.last_version == new)
        calls_at_swap = load.calls
        load.wait(lambda: load.calls >= calls_at_swap + 200)
        assert load.last_version == new

        # A corrupted version is refused; the current model keeps serving.
        registry.set_alias(MODEL, "champion", store.bad)
        load.wait(lambda: any(s.outcome == "refused" for s in models.swaps))
        calls_at_refusal = load.calls
        load.wait(lambda: load.calls >= calls_at_refusal + 200)
        refused = next(s for s in models.swaps if s.outcome == "refused")
        assert "checksum mismatch" in refused.error
        assert "towers.pt" in refused.error
        assert load.last_version == new

        # Rollback (the alias history holds v1): the cached v1 comes back.
        registry.set_alias(MODEL, "champion", store.v2)
        assert rollback(registry, MODEL, "champion").version == store.v1
        load.wait(lambda: load.last_version == old)

    swapped = [s for s in models.swaps if s.outcome == "swapped"]
    assert [(s.old_version, s.new_version) for s in swapped] == [(store.v1, store.v2), (store.v2, store.v1)]
    assert load.failures == []
    assert load.calls >= 600  # what the waits above guarantee; the rest depends on machine speed
    assert set(load.versions) == {old, new}
    figures = {
        "calls": load.calls,
        "failed": len(load.failures),
        "by_model_version": dict(load.versions),
        "swap_seconds": [round(s.seconds, 3) for s in swapped],
        "refusal_seconds": round(refused.seconds, 3),
        "alias_move_to_first_new_answer_s": round(seen_new_after, 3),
        "clients": CLIENTS,
        "poll_seconds": source.poll_seconds,
    }
    print("hot-swap figures: " + json.dumps(figures))


def test_served_model_reference_errors(store: Store, tmp_path: Path) -> None:
    for model, problem in [
        (f"models:/{MODEL}@challenger", f"models:/{MODEL}@challenger: no such registered model or alias"),
        (f"models:/{MODEL}/999", f"models:/{MODEL}/999: no such registered model version"),
        (f"models:/{MODEL}/{store.bad}", "checksum mismatch"),
    ]:
        source = LiveModelOptions(model=model, cache_dir=tmp_path / "cache", tracking_uri=store.uri)
        server = BackgroundServer(ServerOptions(port=0, max_workers=1, grace_seconds=1), source)
        with pytest.raises(Exception, match="failed to load the model engine") as raised, server:
            pass
        assert problem in str(raised.value)


def test_a_pinned_version_is_served_from_the_cache(store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    source = LiveModelOptions(model=f"models:/{MODEL}/{store.v2}", cache_dir=cache, tracking_uri=store.uri)
    for _ in range(2):  # the second start finds the bundle cached
        server = BackgroundServer(ServerOptions(port=0, max_workers=1, grace_seconds=1), source)
        with server, grpc.insecure_channel(server.address) as channel:
            stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
            answer = stub.Recommend(pb2.RecommendRequest(user_id="u1", k=3), timeout=10)
        assert answer.model_version == store.model_versions[store.v2]
    (cached,) = [p for p in cache.rglob("manifest.json")]
    assert cached.parent.name == store.v2
    assert cached.parent.parent.name == MODEL


def test_serving_runs_without_mlflow_and_says_so_for_registry_references(trained: TrainedBundle) -> None:
    script = f"""
import sys
sys.modules["mlflow"] = None  # as in the serving image: not installed
from serving.lifecycle.live_models import ModelLoader
from serving.lifecycle.model_ref import parse_model_ref
from serving.lifecycle.mlflow_store import RegistryError
engine = ModelLoader().load(parse_model_ref({str(trained.bundle)!r}))
print("bundle", engine.model_version)
try:
    ModelLoader().version(parse_model_ref("models:/m@champion"))
except RegistryError as exc:
    print("error", exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert f"bundle {trained.model_version}" in done.stdout
    assert "error MLflow is not installed; pip install" in done.stdout
    assert RegistryError.__name__ == "RegistryError"


def test_experiment_variants_on_registry_aliases_swap_independently(
    store: Store, trained: TrainedBundle, tmp_path: Path
) -> None:
    """A path variant and an alias variant live side by side; moving the alias swaps only its
    variant's engine (the poll is driven by hand here: no timing involved)."""
    registry = store.registry
    registry.set_alias(MODEL, "challenger", store.v1)
    experiments = tmp_path / "experiments.toml"
    experiments.write_text(
        f"""[experiments.ab]
salt = "ab-1"
[experiments.ab.variants.fixed]
model = "{trained.bundle}"
share = 50
[experiments.ab.variants.latest]
model = "models:/{MODEL}@challenger"
share = 50
""",
        encoding="utf-8",
    )
    source = LiveModelOptions(
        model=str(trained.bundle),
        experiments=experiments,
        poll_seconds=3600,
        cache_dir=tmp_path / "cache",
        tracking_uri=store.uri,
    )
    server = BackgroundServer(ServerOptions(port=0, max_workers=1, grace_seconds=1), source)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]

        def version(variant: str) -> str:
            request = pb2.RecommendRequest(user_id="u1", k=3, experiment="ab", force_variant=variant)
            answer = stub.Recommend(request, timeout=10)
            assert answer.variant == variant
            return str(answer.model_version)

        assert server.models is not None
        fixed = trained.model_version
        assert (version("fixed"), version("latest")) == (fixed, store.model_versions[store.v1])
        registry.set_alias(MODEL, "challenger", store.v2)
        (swap,) = server.manage(server.models.check_aliases)
        assert (swap.outcome, swap.new_version) == ("swapped", store.v2)
        assert (version("fixed"), version("latest")) == (fixed, store.model_versions[store.v2])
        assert server.manage(server.models.check_aliases) == []  # nothing moved since


def test_metric_keys_are_names_mlflow_accepts() -> None:
    assert metric_key("ndcg@10") == "ndcg_at_10"
    assert metric_key("index_calibration.recall") == "index_calibration.recall"
    # A/B variant names are free text: whatever MLflow refuses becomes "_".
    assert metric_key("treat:new (v2)!.ctr") == "treat_new _v2__.ctr"


def test_a_named_sqlite_store_keeps_its_artifacts_beside_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's own default for a SQLite store is ./mlruns of the current directory: a run
    started from a checkout used to leave a run folder in the repository."""
    from training.config import TrackingConfig
    from training.tracking import start_run

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "store"
    store.mkdir()
    config = TrackingConfig(tracking_uri=f"sqlite:///{store / 'mlflow.db'}", experiment="beside")
    with start_run(config, "one") as tracker:
        tracker.log_dict({"a": 1}, "a.json")
    assert list((store / "artifacts").rglob("a.json"))
    assert not (elsewhere / "mlruns").exists()
