"""Look-ahead profile figures end to end: a bundle trained on synthetic data with injected
fraud, GetUserProfile over a real gRPC server (fields 20-23), and the campaign lists of
``recsys recommend`` / ``recsys lookalike`` (flagged members left out by default, ordering
by purchase propensity)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pytest
from conftest import tiny_config

from serving._proto.recsys.v1 import profiles_pb2 as pb2
from serving._proto.recsys.v1 import profiles_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.bundle.format import PROFILES
from serving.recommend.engine import TwoTowerEngine
from training.cli.main import main
from training.data.synth import FRAUD_FILE, SynthConfig, synthesize

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class FraudBundle:
    bundle: Path
    profiles: pl.DataFrame
    section: dict[str, Any]
    fraud: pl.DataFrame


@pytest.fixture(scope="module")
def fraud_bundle(tmp_path_factory: pytest.TempPathFactory) -> FraudBundle:
    """A tiny bundle trained on 200 regular members plus 6 injected fraud members (kept in
    the model's training data, as by default, so that they are in the user index)."""
    from training.pipeline import train

    workdir = tmp_path_factory.mktemp("fraud-bundle")
    data = synthesize(SynthConfig(users=200, items=60, events=5000, fraud_users=6), workdir / "data")
    config = tiny_config(f'tracking.tracking_uri="sqlite:///{workdir}/mlflow.db"')
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        train(config, data.interactions_path, data.users_path, data.items_path, workdir / "bundle")
    manifest = json.loads((workdir / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    return FraudBundle(
        workdir / "bundle",
        pl.read_parquet(workdir / "bundle" / PROFILES),
        manifest["profiles"],
        pl.read_parquet(workdir / "data" / FRAUD_FILE),
    )


@pytest.fixture(scope="module")
def channel(fraud_bundle: FraudBundle) -> Iterator[grpc.Channel]:
    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=2)
    with (
        BackgroundServer(
            options, lambda: TwoTowerEngine.load(fraud_bundle.bundle), start_timeout=30
        ) as running,
        grpc.insecure_channel(running.address) as connected,
    ):
        yield connected


def _fraud_ids(fraud_bundle: FraudBundle) -> set[str]:
    return set(fraud_bundle.fraud.get_column("user_id").to_list())


def test_bundle_profiles_carry_the_lookahead_figures(fraud_bundle: FraudBundle) -> None:
    section, profiles = fraud_bundle.section, fraud_bundle.profiles
    for name in ("churn", "propensity", "activity", "clv"):
        assert section[name]["trained"], (name, section[name])
    for column in ("purchase_propensity", "expected_active_days", "clv_expected_purchases", "clv_value"):
        assert column in profiles.columns
    propensity = profiles.get_column("purchase_propensity")
    assert propensity.null_count() == 0
    assert 0 < propensity.min() < propensity.max() < 1
    flagged = set(profiles.filter(pl.col("anomaly_flagged")).get_column("user_id").to_list())
    assert _fraud_ids(fraud_bundle) <= flagged
    # Members who never bought have no lifetime-value figures: unset, not zero.
    never_bought = profiles.filter(pl.col("events.purchase") == 0)
    assert never_bought.height > 0
    assert never_bought.get_column("clv_expected_purchases").null_count() == never_bought.height


def test_get_user_profile_serves_propensity_activity_clv_and_flags(
    fraud_bundle: FraudBundle, channel: grpc.Channel
) -> None:
    stub = pb2_grpc.MemberProfilesStub(channel)
    profiles, section = fraud_bundle.profiles, fraud_bundle.section
    buyer = profiles.filter(pl.col("clv_expected_purchases").is_not_null() & ~pl.col("anomaly_flagged"))
    row = buyer.sort("clv_value", descending=True).row(0, named=True)
    profile = stub.GetUserProfile(pb2.GetUserProfileRequest(user_id=row["user_id"]), timeout=10)
    assert profile.propensity.available
    assert profile.propensity.probability == pytest.approx(row["purchase_propensity"])
    assert profile.propensity.model_auc == pytest.approx(section["propensity"]["auc"])
    assert profile.propensity.recency_rule_auc == pytest.approx(section["propensity"]["recency_rule_auc"])
    assert profile.propensity.horizon_days == 30
    assert profile.activity.available
    assert profile.activity.expected_active_days == pytest.approx(row["expected_active_days"])
    value = profile.lifetime_value
    assert value.available
    assert value.has_money
    assert value.reason == ""
    assert value.expected_purchases == pytest.approx(row["clv_expected_purchases"])
    assert value.value == pytest.approx(value.expected_purchases * value.expected_order_value)
    assert value.value > 0
    assert value.horizon_days == 365
    assert not profile.abnormal.flagged
    assert profile.abnormal.available
    assert list(profile.abnormal.reasons) == []

    bot = fraud_bundle.fraud.filter(pl.col("kind") == "bot").item(0, "user_id")
    flagged = stub.GetUserProfile(pb2.GetUserProfileRequest(user_id=bot), timeout=10)
    assert flagged.abnormal.flagged
    assert any(r.startswith("event burst") for r in flagged.abnormal.reasons)
    assert not flagged.lifetime_value.available
    assert flagged.lifetime_value.reason.startswith("no purchase yet")


def _write_ids(path: Path, ids: list[str]) -> Path:
    path.write_text("\n".join(ids) + "\n", encoding="utf-8")
    return path


def test_recommend_list_leaves_flagged_members_out_and_orders_by_propensity(
    fraud_bundle: FraudBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    everyone = fraud_bundle.profiles.get_column("user_id").to_list()
    users = _write_ids(tmp_path / "users.txt", everyone)
    flagged = set(fraud_bundle.profiles.filter(pl.col("anomaly_flagged")).get_column("user_id").to_list())
    base = ["recommend", "--bundle", str(fraud_bundle.bundle), "--users", str(users), "--k", "3"]

    assert main([*base, "--include-flagged", "--out", str(tmp_path / "all.csv")]) == 0
    everything = set(pl.read_csv(tmp_path / "all.csv", schema_overrides={"user_id": pl.Utf8})["user_id"])
    listed_flagged = everything & flagged  # a bot that saw every item has nothing left to list
    assert listed_flagged
    capsys.readouterr()

    assert main([*base, "--out", str(tmp_path / "default.csv")]) == 0
    assert f"{len(listed_flagged)} flagged members left out" in capsys.readouterr().out
    listed = pl.read_csv(tmp_path / "default.csv", schema_overrides={"user_id": pl.Utf8})
    assert set(listed.get_column("user_id").to_list()) == everything - flagged
    assert listed.columns == ["user_id", "rank", "item_id", "score", "fallback"]

    assert main([*base, "--order-by", "propensity", "--out", str(tmp_path / "ordered.parquet")]) == 0
    ordered = pl.read_parquet(tmp_path / "ordered.parquet")
    scores = ordered.get_column("purchase_propensity").to_list()
    assert scores == sorted(scores, reverse=True)
    first = ordered.get_column("user_id").item(0)
    assert ordered.filter(pl.col("user_id") == first).get_column("rank").to_list() == [1, 2, 3]
    assert not set(ordered.get_column("user_id").to_list()) & flagged


def test_lookalike_list_leaves_flagged_members_out_and_keeps_its_size(
    fraud_bundle: FraudBundle, tmp_path: Path
) -> None:
    # Seeded with the bots themselves: their nearest neighbours include the other fraud members.
    fraud = sorted(_fraud_ids(fraud_bundle))
    seeds = _write_ids(tmp_path / "seeds.txt", fraud[:2])
    base = ["lookalike", "--bundle", str(fraud_bundle.bundle), "--seed-users", str(seeds), "--size", "40"]
    assert main([*base, "--include-flagged", "--out", str(tmp_path / "all.csv")]) == 0
    everything = pl.read_csv(tmp_path / "all.csv", schema_overrides={"user_id": pl.Utf8})
    assert set(everything.get_column("user_id").to_list()) & set(fraud)

    assert main([*base, "--out", str(tmp_path / "clean.csv")]) == 0
    clean = pl.read_csv(tmp_path / "clean.csv", schema_overrides={"user_id": pl.Utf8})
    flagged = set(fraud_bundle.profiles.filter(pl.col("anomaly_flagged")).get_column("user_id").to_list())
    assert clean.height == 40
    assert not set(clean.get_column("user_id").to_list()) & flagged
    assert clean.get_column("rank").to_list() == list(range(1, 41))

    assert main([*base, "--order-by", "propensity", "--out", str(tmp_path / "ordered.csv")]) == 0
    ordered = pl.read_csv(tmp_path / "ordered.csv", schema_overrides={"user_id": pl.Utf8})
    assert ordered.columns == ["user_id", "rank", "score", "purchase_propensity"]
    scores = ordered.get_column("purchase_propensity").to_list()
    assert scores == sorted(scores, reverse=True)
    # The same 40 most similar members, only reordered.
    assert set(ordered.get_column("user_id").to_list()) == set(clean.get_column("user_id").to_list())


def test_lists_use_lifetime_value_as_a_criterion(fraud_bundle: FraudBundle, tmp_path: Path) -> None:
    """--order-by clv ranks members by predicted lifetime value; --min-clv keeps only those worth at
    least that much (members who never bought have no value and are left out)."""
    profiles = fraud_bundle.profiles
    assert fraud_bundle.section["clv"]["has_money"]
    valued = profiles.filter(pl.col("clv_value").is_not_null() & ~pl.col("anomaly_flagged"))
    threshold = float(valued.get_column("clv_value").median())
    worth = set(valued.filter(pl.col("clv_value") >= threshold).get_column("user_id").to_list())
    users = _write_ids(tmp_path / "users.txt", profiles.get_column("user_id").to_list())
    base = ["recommend", "--bundle", str(fraud_bundle.bundle), "--users", str(users), "--k", "2"]

    assert main([*base, "--order-by", "clv", "--out", str(tmp_path / "by_clv.csv")]) == 0
    by_clv = pl.read_csv(tmp_path / "by_clv.csv", schema_overrides={"user_id": pl.Utf8})
    assert by_clv.columns[-1] == "clv_value"
    values = by_clv.get_column("clv_value").drop_nulls().to_list()
    assert values == sorted(values, reverse=True)
    missing = by_clv.get_column("clv_value").is_null().to_list()
    assert missing == sorted(missing)  # members without a value (never bought) last
    first = by_clv.row(0, named=True)
    expected = profiles.filter(pl.col("user_id") == first["user_id"]).get_column("clv_value").item()
    assert first["clv_value"] == pytest.approx(expected)

    argv = [*base, "--min-clv", f"{threshold}", "--out", str(tmp_path / "worth.csv")]
    assert main(argv) == 0
    kept = pl.read_csv(tmp_path / "worth.csv", schema_overrides={"user_id": pl.Utf8})
    listed = set(kept.get_column("user_id").to_list())
    assert listed
    assert listed <= worth
    assert kept.get_column("clv_value").min() >= threshold

    # A lookalike audience keeps its size with only members worth at least the threshold.
    seeds = _write_ids(tmp_path / "seeds.txt", sorted(worth)[:3])
    lookalike = [
        "lookalike",
        "--bundle",
        str(fraud_bundle.bundle),
        "--seed-users",
        str(seeds),
        "--size",
        "20",
    ]
    assert (
        main([*lookalike, "--min-clv", f"{threshold}", "--order-by", "clv", "--out", str(tmp_path / "a.csv")])
        == 0
    )
    audience = pl.read_csv(tmp_path / "a.csv", schema_overrides={"user_id": pl.Utf8})
    assert len(worth) >= 23  # enough beyond the 3 seeds to fill the list
    assert audience.height == 20
    assert set(audience.get_column("user_id").to_list()) <= worth
    assert audience.get_column("clv_value").to_list() == sorted(
        audience.get_column("clv_value"), reverse=True
    )


def test_lifetime_value_criteria_refuse_what_the_bundle_cannot_answer() -> None:
    from serving.errors import FeatureUnavailableError, InvalidArgumentError
    from serving.profiles.campaign import ListRules, check_clv_available

    with pytest.raises(InvalidArgumentError, match="--min-clv: must be a finite number >= 0"):
        ListRules(min_clv=-1.0)
    with pytest.raises(InvalidArgumentError, match="--order-by: must be one of"):
        ListRules(order_by="age")
    no_money = {"profiles": {"clv": {"trained": True, "has_money": False}}}
    with pytest.raises(FeatureUnavailableError, match="--min-clv: the training data has no amounts"):
        check_clv_available(no_money, ListRules(min_clv=10.0))
    untrained = {"profiles": {"clv": {"trained": False, "reason": "fewer than 20 buyers"}}}
    with pytest.raises(FeatureUnavailableError, match="--order-by clv: fewer than 20 buyers"):
        check_clv_available(untrained, ListRules(order_by="clv"))
    check_clv_available(no_money, ListRules(order_by="propensity"))  # propensity needs no money


# ------------------------------------------------------------------ campaign measurement


def _log_events(root: Path, rows: list[tuple[str, str, int, float]]) -> None:
    """(user, event type, unix seconds, value) rows into a real event log."""
    from serving._proto.recsys.v1 import events_pb2
    from serving.events.log import EventLog
    from serving.events.schema import EVENT_TYPE_BY_NAME

    log = EventLog.open(root)
    log.submit(
        [
            events_pb2.Event(
                user_id=user,
                item_id="i000001",
                event_type=EVENT_TYPE_BY_NAME[kind],  # type: ignore[arg-type]
                timestamp_ms=at * 1000,
                value=value,
            )
            for user, kind, at, value in rows
        ]
    ).result(10)
    log.close()


def test_campaign_list_holds_out_a_control_group_and_the_report_measures_uplift(
    fraud_bundle: FraudBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    everyone = fraud_bundle.profiles.get_column("user_id").to_list()
    users = _write_ids(tmp_path / "users.txt", everyone)
    sent_at = int(time.time()) - 5 * 86_400
    out = tmp_path / "spring.csv"
    args = ["recommend", "--bundle", str(fraud_bundle.bundle), "--users", str(users), "--k", "2"]
    args += ["--campaign", "spring", "--control-share", "0.3", "--sent-at", str(sent_at), "--out", str(out)]
    assert main(args) == 0
    assert "campaign 'spring'" in capsys.readouterr().out
    campaign = json.loads((tmp_path / "spring.campaign.json").read_text(encoding="utf-8"))
    treated = sorted(set(pl.read_csv(out, schema_overrides={"user_id": pl.Utf8})["user_id"]))
    control = sorted(
        pl.read_csv(tmp_path / "spring.control.csv", schema_overrides={"user_id": pl.Utf8})["user_id"]
    )
    assert not set(treated) & set(control)
    assert (campaign["treatment_members"], campaign["control_members"]) == (len(treated), len(control))
    assert 0.15 < len(control) / (len(control) + len(treated)) < 0.45
    assert campaign["base_members"] == fraud_bundle.profiles.height
    for attribute in ("gender", "age_band"):
        shares = campaign["fairness"][attribute]
        assert sum(s["list"] for s in shares.values()) == pytest.approx(1.0, abs=1e-3)
        assert sum(s["base"] for s in shares.values()) == pytest.approx(1.0, abs=1e-3)
    # Rewriting the list keeps everyone in the same group (the assignment is a hash, not a draw).
    assert main([*args[:-1], str(tmp_path / "again.csv")]) == 0
    again = pl.read_csv(tmp_path / "again.control.csv", schema_overrides={"user_id": pl.Utf8})
    assert sorted(again["user_id"]) == control

    day = 86_400
    rows: list[tuple[str, str, int, float]] = []
    for i, user in enumerate(treated):  # every 2nd buys (10.0), every 4th only clicks
        if i % 2 == 0:
            rows += [(user, "click", sent_at + day, 0.0), (user, "purchase", sent_at + day + 60, 10.0)]
        elif i % 4 == 1:
            rows.append((user, "click", sent_at + 2 * day, 0.0))
    for i, user in enumerate(control):  # every 5th buys
        if i % 5 == 0:
            rows.append((user, "purchase", sent_at + day, 10.0))
    # Outside the 3-day window (before sending, after it) and impressions: never counted.
    rows += [(treated[1], "purchase", sent_at - day, 99.0), (control[1], "purchase", sent_at + 4 * day, 99.0)]
    rows.append((control[2], "impression", sent_at + day, 0.0))
    _log_events(tmp_path / "events", rows)

    report_path = tmp_path / "report.json"
    report_args = ["campaign-report", "--campaign", str(tmp_path / "spring.campaign.json")]
    report_args += ["--events", str(tmp_path / "events"), "--days", "3", "--cost-per-contact", "0.5"]
    assert main([*report_args, "--out", str(report_path)]) == 0
    printed = capsys.readouterr().out
    assert "uplift conversion_rate" in printed
    report = json.loads(report_path.read_text(encoding="utf-8"))
    buyers_t = len(range(0, len(treated), 2))
    responders_t = buyers_t + len(range(1, len(treated), 4))
    buyers_c = len(range(0, len(control), 5))
    groups = report["groups"]
    assert report["reach"] == len(treated)
    assert groups["treatment"]["conversion_rate"] == pytest.approx(buyers_t / len(treated), abs=1e-6)
    assert groups["treatment"]["response_rate"] == pytest.approx(responders_t / len(treated), abs=1e-6)
    assert groups["control"]["response_rate"] == pytest.approx(buyers_c / len(control), abs=1e-6)
    assert groups["treatment"]["revenue"] == pytest.approx(10.0 * buyers_t)
    assert groups["control"]["revenue"] == pytest.approx(10.0 * buyers_c)
    conversion = report["uplift"]["conversion_rate"]
    expected = buyers_t / len(treated) - buyers_c / len(control)
    assert conversion["difference"] == pytest.approx(expected, abs=1e-5)
    assert conversion["low"] < conversion["difference"] < conversion["high"]
    assert conversion["p_value"] < 0.05
    revenue = report["uplift"]["revenue_per_member"]["difference"]
    cost = 0.5 * len(treated)
    assert report["roi"]["cost"] == pytest.approx(cost)
    assert report["roi"]["roi"][0] == pytest.approx((revenue * len(treated) - cost) / cost, abs=1e-3)
    assert report["fairness"] == campaign["fairness"]


def test_campaign_report_names_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.campaign.json").write_text("{}", encoding="utf-8")
    args = ["campaign-report", "--campaign", str(tmp_path / "x.campaign.json"), "--events", str(tmp_path)]
    assert main(args) == 2
    assert "not an event log" in capsys.readouterr().err
    _log_events(tmp_path / "events", [("u1", "click", 1_700_000_000, 0.0)])
    args[-1] = str(tmp_path / "events")
    assert main(args) == 2
    assert "missing field 'campaign'" in capsys.readouterr().err
    assert main([*args, "--days", "0"]) == 2
    assert "--days: must be > 0" in capsys.readouterr().err
