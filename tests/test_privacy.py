"""Personal data and pseudonymous user ids, end to end on one real training run.

The run trains on the synthetic data with extra personal columns that only value
patterns reveal (e-mail addresses under ``contact``, phone numbers under ``tel``) and
with ``privacy.pseudonymise_user_ids`` on, logging to a real MLflow store in tmp and
capturing every log record. Then: no personal value and no raw user id in any bundle
file, MLflow param or log line; serving with the key answers raw ids; serving without the
key (or with another key) refuses to start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import polars as pl
import pytest
from conftest import tiny_config
from mlflow.tracking import MlflowClient

from serving._proto.recsys.v1 import events_pb2
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions, ServerStartupError
from serving.audiences.search import SimilarUsersQuery
from serving.bundle.format import MANIFEST, load_bundle
from serving.events.log import EventLog, EventLogOptions, opened_event_log
from serving.events.reader import read_events
from serving.pseudonym import SCHEME, Pseudonymiser, PseudonymKeyError, is_pseudonym
from serving.recommend.batch import recommend_batch
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery
from training.cli.main import main
from training.data.synth import SynthSummary
from training.pipeline import train

pytestmark = pytest.mark.slow

KEY_ENV = "RECSYS_TEST_ID_KEY"
KEY = "test-key-0123456789-abcdef"
OTHER_KEY = "another-key-0123456789-xyz"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass(frozen=True)
class PrivateRun:
    bundle: Path
    users_in: pl.DataFrame
    raw_ids: list[str]
    personal_values: list[str]
    log_lines: list[str]
    tracking_uri: str
    run_id: str


@pytest.fixture(scope="module")
def private_run(tmp_path_factory: pytest.TempPathFactory, synth_data: SynthSummary) -> PrivateRun:
    workdir = tmp_path_factory.mktemp("private")
    users = pl.read_parquet(synth_data.users_path).with_columns(
        pl.col("email").alias("contact"), pl.col("phone").alias("tel")
    )
    users_path = workdir / "users.parquet"
    users.write_parquet(users_path)
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    config = tiny_config(
        f'tracking.tracking_uri="{tracking_uri}"',
        "eval.protocol=none",
        "privacy.pseudonymise_user_ids=true",
        f'privacy.key_env="{KEY_ENV}"',
    )
    records = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(workdir)
            patch.setenv(KEY_ENV, KEY)
            summary = train(
                config, synth_data.interactions_path, users_path, synth_data.items_path, workdir / "bundle"
            )
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    interactions = pl.read_parquet(synth_data.interactions_path)
    personal = [
        value
        for column in ("name", "email", "phone")
        for value in users.get_column(column).drop_nulls().head(40).to_list()
    ]
    assert summary.run_id is not None
    return PrivateRun(
        bundle=workdir / "bundle",
        users_in=users,
        raw_ids=interactions.get_column("user_id").unique().sort().to_list(),
        personal_values=personal,
        log_lines=records.lines,
        tracking_uri=tracking_uri,
        run_id=summary.run_id,
    )


def _bundle_strings(bundle: Path) -> tuple[set[str], str]:
    """(every string value of every Parquet column, every other file's bytes as Latin-1 text)."""
    values: set[str] = set()
    raw = []
    for file in sorted(bundle.iterdir()):
        if file.suffix == ".parquet":
            frame = pl.read_parquet(file)
            for column, dtype in frame.schema.items():
                series = frame.get_column(column)
                if dtype == pl.List(pl.Utf8):
                    series = series.explode()
                if series.dtype == pl.Utf8:
                    values.update(series.drop_nulls().to_list())
        raw.append(file.read_bytes().decode("latin-1"))
    return values, "\n".join(raw)


@pytest.fixture
def with_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(KEY_ENV, KEY)
    return


# ------------------------------------------------------------------ what is stored and logged


def test_personal_data_never_reaches_bundle_mlflow_or_logs(private_run: PrivateRun) -> None:
    values, raw = _bundle_strings(private_run.bundle)
    manifest = json.loads((private_run.bundle / MANIFEST).read_text(encoding="utf-8"))
    dropped = manifest["features"]["user"]["dropped_columns"]
    assert {"name", "email", "phone", "contact", "tel"} <= set(dropped)
    assert "e-mail" in dropped["contact"]
    assert "phone" in dropped["tel"]

    run = MlflowClient(tracking_uri=private_run.tracking_uri).get_run(private_run.run_id)
    mlflow_text = json.dumps([run.data.params, run.data.tags, run.data.metrics])
    logged = "\n".join(private_run.log_lines)
    assert private_run.log_lines  # the capture worked
    for value in private_run.personal_values:
        assert value not in values
        assert value not in raw
        assert value not in mlflow_text
        assert value not in logged


def test_only_pseudonyms_are_stored(private_run: PrivateRun) -> None:
    values, raw = _bundle_strings(private_run.bundle)
    stored_ids = pl.read_parquet(private_run.bundle / "users.parquet").get_column("user_id").to_list()
    pseudonymise = Pseudonymiser(KEY.encode())
    assert sorted(stored_ids) == sorted(pseudonymise(u) for u in private_run.raw_ids)
    assert all(is_pseudonym(u) for u in stored_ids)
    profiles = private_run.bundle / "profiles.parquet"  # member profiles, built downstream of ingest
    if profiles.exists():
        assert set(pl.read_parquet(profiles).get_column("user_id").to_list()) <= set(stored_ids)
    for user_id in private_run.raw_ids:
        assert user_id not in values
        assert f'"{user_id}"' not in raw  # not in the manifest or any other file as a JSON string
    manifest = json.loads((private_run.bundle / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["privacy"]["user_ids"] == SCHEME
    assert manifest["privacy"]["key_env"] == KEY_ENV
    assert KEY not in raw
    assert KEY not in "\n".join(private_run.log_lines)
    run = MlflowClient(tracking_uri=private_run.tracking_uri).get_run(private_run.run_id)
    assert KEY not in json.dumps(run.data.params)


# ------------------------------------------------------------------ serving


@pytest.mark.usefixtures("with_key")
def test_serving_hashes_raw_request_ids(private_run: PrivateRun) -> None:
    engine = TwoTowerEngine.load(private_run.bundle)
    user = private_run.raw_ids[0]
    assert engine.user_row(user) is not None
    answer = engine.recommend(RecommendQuery(user, 5))
    assert not answer.fallback
    assert len(answer.items) == 5
    assert engine.user_embedding(user).shape == (16,)
    # Ids that came back from the service (pseudonyms) are accepted as they are, never hashed twice.
    pseudonym = Pseudonymiser(KEY.encode())(user)
    assert engine.user_row(pseudonym) == engine.user_row(user)
    assert engine.recommend(RecommendQuery(pseudonym, 5)).items == answer.items

    lists = recommend_batch(engine, pl.Series("user_id", private_run.raw_ids[:4]), 3)
    assert lists.get_column("user_id").unique().sort().to_list() == private_run.raw_ids[:4]
    assert not lists.get_column("fallback").any()

    audience = engine.similar_users(SimilarUsersQuery(tuple(private_run.raw_ids[:5]), 10))
    assert audience.known_seeds == 5
    assert len(audience.users) == 10
    pseudonyms = {Pseudonymiser(KEY.encode())(u) for u in private_run.raw_ids}
    assert {u.user_id for u in audience.users} <= pseudonyms  # never a raw id


@pytest.mark.usefixtures("with_key")
def test_grpc_recommend_with_a_raw_id(private_run: PrivateRun) -> None:
    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=1)
    with (
        BackgroundServer(
            options, lambda: TwoTowerEngine.load(private_run.bundle), start_timeout=30
        ) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        response = pb2_grpc.RecommenderStub(channel).Recommend(
            pb2.RecommendRequest(user_id=private_run.raw_ids[1], k=4), timeout=10
        )
    assert not response.fallback
    assert len(response.items) == 4


def test_missing_or_wrong_key_refuses_to_load(
    private_run: PrivateRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_bundle(private_run.bundle)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PseudonymKeyError, match=f"\\${KEY_ENV} is not set"):
        TwoTowerEngine(bundle)
    monkeypatch.setenv(KEY_ENV, OTHER_KEY)
    with pytest.raises(PseudonymKeyError, match="different key"):
        TwoTowerEngine(bundle)
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(PseudonymKeyError, match="at least 16 bytes"):
        TwoTowerEngine(bundle)


def test_server_refuses_to_start_without_the_key(
    private_run: PrivateRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=1)
    with (
        pytest.raises(ServerStartupError, match=KEY_ENV),
        BackgroundServer(options, lambda: TwoTowerEngine.load(private_run.bundle), start_timeout=30),
    ):
        pass


def test_server_refuses_a_raw_event_log_next_to_a_pseudonymised_model(
    private_run: PrivateRun, with_key: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def start(**events: object) -> None:
        options = ServerOptions(
            host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=1, events_dir=tmp_path / "ev", **events
        )
        with BackgroundServer(options, lambda: TwoTowerEngine.load(private_run.bundle), start_timeout=30):
            pass

    with pytest.raises(ServerStartupError, match="events_key_env: the model's user ids are pseudonymised"):
        start()
    monkeypatch.setenv("OTHER_KEY", "another-key-of-enough-length-0123456789")
    with pytest.raises(ServerStartupError, match="key fingerprints differ"):
        start(events_key_env="OTHER_KEY")
    start(events_key_env=KEY_ENV)  # the model's own key: starts


def test_training_without_the_key_fails_naming_the_variable(
    synth_data: SynthSummary,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    code = main(
        [
            "train",
            "--interactions",
            str(synth_data.interactions_path),
            "--out",
            str(tmp_path / "bundle"),
            "--set",
            "privacy.pseudonymise_user_ids=true",
            "--set",
            f'privacy.key_env="{KEY_ENV}"',
            "--set",
            "tracking.enabled=false",
        ]
    )
    assert code == 2
    assert f"${KEY_ENV} is not set" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


# ------------------------------------------------------------------ event log


def _events(users: list[str]) -> list[events_pb2.Event]:
    now_ms = int(time.time() * 1000)
    return [
        events_pb2.Event(
            user_id=user,
            item_id=f"i{n}",
            event_type=events_pb2.EVENT_TYPE_CLICK,
            timestamp_ms=now_ms - 1000 * (10 * i + n),
            event_id=f"e{i}-{n}",
        )
        for i, user in enumerate(users)
        for n in range(3)
    ]


@pytest.mark.usefixtures("with_key")
def test_event_log_stores_only_pseudonyms_and_trains_without_hashing_twice(
    private_run: PrivateRun, tmp_path: Path
) -> None:
    raw = private_run.raw_ids[:4]
    pseudonymise = Pseudonymiser(KEY.encode())
    sent = _events([*raw, pseudonymise(raw[0])])  # a client may also send a pseudonym it was given
    options = EventLogOptions(compact_interval_s=3600, user_id_key_env=KEY_ENV)
    with opened_event_log(tmp_path / "events", options) as event_log:
        event_log.submit(sent).result(timeout=10)
    assert [e.user_id for e in sent[:3]] == [raw[0]] * 3  # the caller's messages are untouched
    stored = read_events(tmp_path / "events").get_column("user_id").unique().to_list()
    assert sorted(stored) == sorted(pseudonymise(u) for u in raw)

    # The retrain loop with pseudonymisation on: the log's pseudonyms are not hashed again.
    config = tiny_config(
        "eval.protocol=none",
        "tracking.enabled=false",
        "privacy.pseudonymise_user_ids=true",
        f'privacy.key_env="{KEY_ENV}"',
    )
    train(config, tmp_path / "events", None, None, tmp_path / "bundle")
    in_bundle = pl.read_parquet(tmp_path / "bundle" / "users.parquet").get_column("user_id").to_list()
    assert sorted(in_bundle) == sorted(stored)


def test_event_log_without_the_key_refuses_to_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PseudonymKeyError, match=KEY_ENV):
        EventLog.open(tmp_path / "events", EventLogOptions(user_id_key_env=KEY_ENV))
    assert not (tmp_path / "events").exists()
