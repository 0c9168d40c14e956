"""Member profiles end to end: the trained bundle, GetUserProfile over a real gRPC server,
``recsys profile``, ``recsys segments-report`` (and a headless-Chromium screenshot when
Chromium is installed), and old bundles without profiles."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest
from conftest import TrainedBundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from plotly_page import assert_self_contained, figures

from serving._proto.recsys.v1 import profiles_pb2 as pb2
from serving._proto.recsys.v1 import profiles_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.profiles import ProfileStores
from serving.api.server import PROFILES_SERVICE, ServerOptions
from serving.bundle.format import MANIFEST, PROFILES, load_bundle
from serving.errors import FeatureUnavailableError
from serving.profiles.lifecycle import STAGES
from serving.profiles.rfm import SEGMENTS
from serving.profiles.store import read_profiles
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery
from training.cli.main import main
from training.reports import report_check

pytestmark = pytest.mark.slow


def _profiles(trained: TrainedBundle) -> pl.DataFrame:
    return pl.read_parquet(trained.bundle / PROFILES)


def _busiest_user(trained: TrainedBundle) -> str:
    counts = trained.interactions.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    return str(counts.item(0, "user_id"))


@pytest.fixture(scope="module")
def old_bundle(trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared bundle as written before profiles existed."""
    copy = tmp_path_factory.mktemp("no-profiles") / "bundle"
    shutil.copytree(trained.bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text(encoding="utf-8"))
    del manifest["files"][PROFILES], manifest["profiles"]
    (copy / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    (copy / PROFILES).unlink()
    return copy


# ------------------------------------------------------------------ the bundle


def test_bundle_stores_checksummed_profiles_of_every_user(trained: TrainedBundle) -> None:
    manifest = trained.manifest
    assert PROFILES in manifest["files"]
    section = manifest["profiles"]
    profiles = _profiles(trained)
    interactions = trained.interactions
    assert section["clock"] == interactions.get_column("timestamp").max()
    assert profiles.height == section["users"] == interactions.get_column("user_id").n_unique()
    assert sum(section["lifecycle"]["counts"].values()) == profiles.height
    assert sum(section["rfm"]["counts"].values()) == profiles.height
    assert sum(d["size"] for d in section["segments"]["descriptions"]) == profiles.height
    assert section["segments"]["k"] == profiles.get_column("segment").n_unique()
    assert section["churn"]["trained"]
    assert 0.0 <= section["churn"]["auc"] <= 1.0
    risk = profiles.get_column("churn_risk")
    assert risk.null_count() == 0
    assert risk.min() >= 0.0
    assert risk.max() <= 1.0
    # Behaviour matches the raw interactions.
    user = _busiest_user(trained)
    row = profiles.filter(pl.col("user_id") == user).row(0, named=True)
    mine = interactions.filter(pl.col("user_id") == user)
    assert row["events_total"] == mine.height
    for event_type, n in mine.group_by("event_type").len().iter_rows():
        assert row[f"events.{event_type}"] == n
    assert row["last_activity"] == mine.get_column("timestamp").max()


def test_profiles_hold_no_personal_data(trained: TrainedBundle) -> None:
    profiles = _profiles(trained)
    names = {c.lower() for c in profiles.columns}
    for personal in ("name", "email", "phone", "attr.name", "attr.email", "attr.phone"):
        assert personal not in names
    text = profiles.select(pl.col(pl.Utf8)).write_csv()
    assert "@" not in text
    assert not re.search(r"\+\d-\d{3}-555", text)


# ------------------------------------------------------------------ gRPC


@pytest.fixture(scope="module")
def channel(served_channel: grpc.Channel) -> grpc.Channel:
    return served_channel


def test_get_user_profile_over_grpc(
    trained: TrainedBundle, engine: TwoTowerEngine, channel: grpc.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=PROFILES_SERVICE), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    user = _busiest_user(trained)
    stub = pb2_grpc.MemberProfilesStub(channel)
    profile = stub.GetUserProfile(pb2.GetUserProfileRequest(user_id=user), timeout=10)
    row = _profiles(trained).filter(pl.col("user_id") == user).row(0, named=True)
    section = trained.manifest["profiles"]
    assert (profile.user_id, profile.model_version, profile.clock) == (
        user,
        trained.model_version,
        section["clock"],
    )
    assert profile.behaviour.total_events == row["events_total"]
    assert sum(profile.behaviour.event_counts.values()) == row["events_total"]
    assert profile.rfm.segment == row["rfm_segment"]
    assert profile.rfm.r_score == row["r_score"]
    assert profile.rfm.monetary_source == section["monetary_source"] == "monetary"
    assert pb2.LifecycleStage.Name(profile.lifecycle.stage) == f"LIFECYCLE_STAGE_{row['lifecycle'].upper()}"
    assert profile.segment.segment_id == row["segment"]
    assert profile.segment.label
    assert profile.segment.top_item_attributes
    assert profile.churn.available
    assert profile.churn.probability == pytest.approx(row["churn_risk"])
    assert profile.churn.model_auc == pytest.approx(section["churn"]["auc"])
    assert {"gender", "region", "tier"} <= set(profile.attributes)
    assert not {"name", "email", "phone"} & set(profile.attributes)
    assert {p.attribute for p in profile.behaviour.preferences} >= {"category"}
    assert profile.behaviour.has_average_value
    assert profile.behaviour.average_value > 0
    assert len(profile.embedding) == 0

    with_embedding = stub.GetUserProfile(
        pb2.GetUserProfileRequest(user_id=user, include_embedding=True), timeout=10
    )
    np.testing.assert_allclose(with_embedding.embedding, engine.user_embedding(user), atol=1e-5)


@pytest.mark.parametrize(
    ("user_id", "code", "message"),
    [
        ("ghost-user", grpc.StatusCode.NOT_FOUND, "unknown user: 'ghost-user'"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "user_id: must not be empty"),
    ],
)
def test_get_user_profile_errors(
    channel: grpc.Channel, user_id: str, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        pb2_grpc.MemberProfilesStub(channel).GetUserProfile(
            pb2.GetUserProfileRequest(user_id=user_id), timeout=10
        )
    assert info.value.code() == code
    assert message in (info.value.details() or "")


def test_reflection_lists_member_profiles(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert PROFILES_SERVICE in names


def test_bundle_without_profiles_loads_and_answers_failed_precondition(
    trained: TrainedBundle, old_bundle: Path
) -> None:
    old = TwoTowerEngine(load_bundle(old_bundle))
    assert old.recommend(RecommendQuery(_busiest_user(trained), 5)).items  # everything else still works
    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=1)
    with (
        BackgroundServer(options, lambda: old, start_timeout=30) as s,
        grpc.insecure_channel(s.address) as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        pb2_grpc.MemberProfilesStub(channel).GetUserProfile(
            pb2.GetUserProfileRequest(user_id=_busiest_user(trained)), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no member profiles" in (info.value.details() or "")


def test_profiles_follow_the_engine_across_a_swap(
    trained: TrainedBundle, engine: TwoTowerEngine, old_bundle: Path
) -> None:
    """Each engine serves its own bundle's profiles (opened once, then cached)."""
    stores = ProfileStores()
    first = stores.of(engine)
    assert stores.of(engine) is first
    assert len(first) == trained.manifest["profiles"]["users"]
    with pytest.raises(FeatureUnavailableError, match="no member profiles"):
        stores.of(TwoTowerEngine(load_bundle(old_bundle)))  # swapped to a bundle without profiles


# ------------------------------------------------------------------ CLI and report


def test_profile_cli_prints_json(
    trained: TrainedBundle, old_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = _busiest_user(trained)
    assert main(["profile", "--bundle", str(trained.bundle), "--user", user]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["user_id"] == user
    assert data["rfm"]["segment"]
    assert data["lifecycle"]["stage"]
    assert main(["profile", "--bundle", str(trained.bundle), "--user", "ghost-user"]) == 2
    assert "unknown user: 'ghost-user'" in capsys.readouterr().err
    assert main(["profile", "--bundle", str(old_bundle), "--user", user]) == 2
    assert "no member profiles" in capsys.readouterr().err


def test_profile_cli_hashes_only_the_profiles_file(
    trained: TrainedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained.bundle, bundle)
    user = _busiest_user(trained)
    # A damaged index is not read by `recsys profile`, so it is not hashed either (the server refuses it).
    with (bundle / "index.faiss").open("ab") as index:
        index.write(b"x")
    assert main(["profile", "--bundle", str(bundle), "--user", user]) == 0
    capsys.readouterr()
    with (bundle / "profiles.parquet").open("ab") as profiles:
        profiles.write(b"x")
    assert main(["profile", "--bundle", str(bundle), "--user", user]) == 2
    assert "profiles.parquet: checksum mismatch" in capsys.readouterr().err


@pytest.fixture(scope="module")
def report(trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "segments.html"
    assert main(["segments-report", "--bundle", str(trained.bundle), "--out", str(out)]) == 0
    return out


def test_segments_report_is_self_contained_with_every_chart(trained: TrainedBundle, report: Path) -> None:
    html = report.read_text(encoding="utf-8")
    section = trained.manifest["profiles"]
    for heading in ("Embedding segments", "RFM: recency × frequency", "Lifecycle", "Churn risk"):
        assert heading in html
    assert f"{section['churn']['auc']:.3f}" in html
    for description in section["segments"]["descriptions"]:
        assert f"Segment {description['segment']}</b>" in html
    assert_self_contained(html)

    # Each chart draws the manifest's (or the profiles') numbers.
    charts = figures(html)
    (sizes,) = charts["Members per embedding segment"]["data"]
    assert sizes["x"] == [d["size"] for d in section["segments"]["descriptions"]]
    (cells,) = charts["Members per R × F cell (and its named segment)"]["data"]
    grid = {(str(c["r_score"]), str(c["f_score"])): c["users"] for c in section["rfm"]["grid"]}
    drawn = {
        (r, f): z
        for r, row in zip(cells["y"], cells["z"], strict=True)
        for f, z in zip(cells["x"], row, strict=True)
    }
    assert {key: drawn[key] for key in grid} == grid
    assert sum(drawn.values()) == sum(grid.values())
    (stages,) = charts["Members per lifecycle stage"]["data"]
    counts = section["lifecycle"]["counts"]
    assert stages["x"] == [counts.get(stage, 0) for stage in STAGES]
    (named,) = charts["Members per named RFM segment"]["data"]
    assert named["x"] == [section["rfm"]["counts"].get(name, 0) for name in SEGMENTS]
    (risk,) = charts["Members per churn-risk band"]["data"]
    profiles = read_profiles(trained.bundle, trained.manifest)
    assert sum(risk["y"]) == profiles.get_column("churn_risk").drop_nulls().len()
    if section["segments"].get("silhouettes"):
        (curve,) = charts["Choice of k (silhouette; red: chosen)"]["data"]
        assert curve["y"] == pytest.approx(
            [v for _, v in sorted((int(k), v) for k, v in section["segments"]["silhouettes"].items())]
        )


def test_segments_report_refuses_bundles_without_profiles(
    old_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    assert main(["segments-report", "--bundle", str(old_bundle), "--out", str(out)]) == 2
    assert "no member profiles" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(report_check.find_browser() is None, reason="no Chromium installed")
def test_segments_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    png = report_check.screenshot(report, tmp_path / "report.png", 1400, 2000)
    assert png.stat().st_size > 20_000
    assert report_check.distinct_colours(png) > 20  # charts, not a blank or error page
    # Every chart of the page drawn by plotly.js in the browser.
    assert report_check.drawn_charts(report.resolve().as_uri()) == report.read_text(encoding="utf-8").count(
        "Plotly.newPlot"
    )
