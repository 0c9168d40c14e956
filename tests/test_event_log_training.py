"""The loop closes: events logged through the LogEvents RPC train a model (``recsys train
--interactions EVENT_LOG_DIR``), impressions excluded."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import grpc
import polars as pl
import pytest
from conftest import tiny_config

from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.events.schema import EVENT_TYPE_BY_NAME
from serving.lifecycle.live_models import load_bundle_engine
from training.data.io import InputError, load_interactions

pytestmark = pytest.mark.slow

# The synthetic funnel's "view" is what the event log calls an impression.
_WIRE_TYPE = {**EVENT_TYPE_BY_NAME, "view": EVENT_TYPE_BY_NAME["impression"]}


def _log_through_the_rpc(address: str, interactions: pl.DataFrame) -> int:
    events = [
        events_pb2.Event(
            user_id=row["user_id"],
            item_id=row["item_id"],
            event_type=_WIRE_TYPE[row["event_type"]],
            timestamp_ms=row["timestamp"] * 1000,
            value=row["value"] or 0.0,
        )
        for row in interactions.iter_rows(named=True)
    ]
    accepted = 0
    with grpc.insecure_channel(address) as channel:
        stub = events_pb2_grpc.EventCollectorStub(channel)
        for start in range(0, len(events), 1000):
            request = events_pb2.LogEventsRequest(events=events[start : start + 1000])
            accepted += stub.LogEvents(request, timeout=30).accepted
    return accepted


def test_a_model_trains_on_the_event_log_written_through_the_rpc(trained: object, tmp_path: Path) -> None:
    from training.pipeline import train

    interactions: pl.DataFrame = trained.interactions  # type: ignore[attr-defined]
    events_dir = tmp_path / "events"
    options = ServerOptions(port=0, grace_seconds=1.0, events_dir=events_dir)
    with BackgroundServer(options, functools.partial(load_bundle_engine, trained.bundle)) as server:  # type: ignore[attr-defined]
        assert _log_through_the_rpc(server.address, interactions) == interactions.height
    # Leaving the block stopped the server, which compacted the whole WAL into Parquet.

    positives = interactions.filter(pl.col("event_type") != "view")
    frame, _ = load_interactions(events_dir)
    assert frame.columns == ["user_id", "item_id", "timestamp", "event_type", "value"]
    assert set(frame["event_type"]) == {"click", "add_to_cart", "purchase"}  # impressions dropped
    assert frame.height == positives.unique().height
    assert frame["timestamp"].sort().to_list() == positives.unique()["timestamp"].sort().to_list()

    config = tiny_config("tracking.enabled=false", "eval.protocol=none")
    summary = train(config, events_dir, None, None, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert summary.model_version == manifest["model_version"]
    assert manifest["counts"]["interactions"] == frame.height


def test_a_directory_without_an_event_log_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an event log"):
        load_interactions(tmp_path)
