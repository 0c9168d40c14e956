"""The dashboard and the alert rules of ``deploy/observability/`` against a real Prometheus.

A real server (loopback, its ``/metrics`` endpoint, tokens, an event log, the session's tiny
bundle served as ``models:/NAME@champion`` from a temp MLflow registry) answers a few calls of
each kind; the Debian ``prometheus`` binary scrapes it every 0.5 s with the rules file loaded.
Every metric name the dashboard's and the rules' PromQL expressions read must then exist in
Prometheus, and every rule must evaluate without error: a renamed series, a typo in a panel
or a rule that no longer parses fails here, not on an operator's screen.

Without the ``prometheus`` binary the test skips, saying why; ``RECSYS_REQUIRE_PROMETHEUS=1``
(set by ``.ci/run``, which installs it) turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from conftest import TrainedBundle

from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.bundle.format import read_manifest
from serving.lifecycle.live_models import LiveModelOptions
from serving.lifecycle.mlflow_store import ModelRegistry
from serving.security.access import AccessOptions
from serving.security.tokens import hash_token

pytestmark = pytest.mark.slow

OBSERVABILITY = Path(__file__).resolve().parent.parent / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "recsys.json"
ALERTS = OBSERVABILITY / "alerts.yml"

MODEL = "observed-model"
TOKEN = "obs-5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d"
# Series the rules name before the server exports them: recsys_io_faults_total comes with the
# fault-status work of issue 25 (a rule on it stays silent until then). Drop a name here once
# serving/metrics.py exports it.
NOT_YET_EXPORTED = frozenset({"recsys_io_faults_total"})

# PromQL words that look like metric names but are not.
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (Grafana's ``$variables`` allowed).

    Label matchers, grouping clauses, range selectors and strings are removed first; what
    remains is functions (followed by ``(``), keywords, numbers and metric names.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name not in _KEYWORDS:
            names.add(name)
    return names


def test_metric_names_parses_what_the_files_use() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, method) (rate(recsys_rpc_duration_seconds_bucket{job=~"$job",'
        ' method=~".*/Recommend"}[$__rate_interval]))) > 0.010 and on (job) up{job="x"} == bool 1'
    )
    assert metric_names(expr) == {"recsys_rpc_duration_seconds_bucket", "up"}
    assert metric_names("time() - max by (instance) (recsys_registry_last_success_timestamp_seconds)") == {
        "recsys_registry_last_success_timestamp_seconds"
    }


def test_the_dashboard_is_well_formed_for_provisioning() -> None:
    """What Grafana needs to load the file unattended: a fixed uid (the provisioning YAML's
    folder keeps it), unique panel ids, panels inside the 24-column grid, every query on the
    dashboard's datasource variable (no datasource uid of one installation baked in)."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "recsys-serving"
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        targets = panel.get("targets", [])
        assert [t["refId"] for t in targets] == sorted({t["refId"] for t in targets}), panel["title"]
        for target in targets:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    provisioning = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/dashboards/recsys.yaml").read_text("utf-8")
    )
    assert provisioning["providers"][0]["options"]["path"].endswith("/recsys")


def dashboard_names() -> set[str]:
    """Metric names of every panel target and every ``label_values(METRIC, ...)`` variable."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names |= metric_names(target["expr"])
    for variable in dashboard["templating"]["list"]:
        definition = variable.get("definition", "")
        names |= set(re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", definition))
    return names


def rule_names() -> set[str]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {
        name for group in rules["groups"] for rule in group["rules"] for name in metric_names(rule["expr"])
    }


def _prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        reason = "the prometheus binary is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("RECSYS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"RECSYS_REQUIRE_PROMETHEUS=1 but {reason}")
        pytest.skip(reason)
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.loads(answer.read())
    except urllib.error.HTTPError as refused:  # a bad query: Prometheus says why in the body
        raise AssertionError(f"{path} {params}: {refused.read().decode(errors='replace')}") from refused
    assert body["status"] == "success", body
    return body["data"]


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


@pytest.fixture
def served(trained: TrainedBundle, tmp_path: Path) -> Iterator[BackgroundServer]:
    """The tiny bundle served as ``models:/MODEL@champion`` with tokens, an event log and /metrics."""
    registry_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = ModelRegistry(registry_uri)
    version = registry.register_bundle(
        trained.bundle,
        MODEL,
        artifact_location=(tmp_path / "artifacts").as_uri(),
        tags={"model_version": read_manifest(trained.bundle)["model_version"]},
    )
    registry.set_alias(MODEL, "champion", version)
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        "[[client]]\n"
        'name = "web-frontend"\n'
        f'token_sha256 = "{hash_token(TOKEN)}"\n'
        'scopes = ["recommender", "events"]\n',
        encoding="utf-8",
    )
    options = ServerOptions(
        port=0,
        max_workers=2,
        grace_seconds=0.5,
        metrics_port=_free_port(),
        events_dir=tmp_path / "events",
        events_compact_interval_s=3600,
        access=AccessOptions(auth_tokens=tokens),
    )
    source = LiveModelOptions(
        model=f"models:/{MODEL}@champion",
        poll_seconds=0.5,
        cache_dir=tmp_path / "cache",
        tracking_uri=registry_uri,
    )
    with BackgroundServer(options, source) as server:
        yield server


@pytest.fixture
def prometheus(served: BackgroundServer, tmp_path: Path) -> Iterator[int]:
    """A real Prometheus on loopback scraping ``served`` every 0.5 s, with alerts.yml loaded."""
    binary = _prometheus_binary()
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "recsys",
                        "static_configs": [{"targets": [f"127.0.0.1:{served.options.metrics_port}"]}],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        _wait_for(ready, "Prometheus to be ready")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _make_traffic(address: str, users: list[str]) -> None:
    """A few calls of each kind the dashboard shows: answers, a fallback, client errors, an
    auth refusal and an event-log write."""
    auth = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(address) as channel:
        stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        for user in users:
            stub.Recommend(pb2.RecommendRequest(user_id=user, k=3), timeout=10, metadata=auth)
        assert stub.Recommend(
            pb2.RecommendRequest(user_id="nobody-knows-me", k=3), timeout=10, metadata=auth
        ).fallback
        with pytest.raises(grpc.RpcError) as invalid:
            stub.Recommend(pb2.RecommendRequest(user_id="", k=3), timeout=10, metadata=auth)
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as refused:
            stub.Recommend(pb2.RecommendRequest(user_id=users[0], k=3), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        event = events_pb2.Event(
            user_id=users[0],
            item_id="i1",
            event_type=events_pb2.EVENT_TYPE_IMPRESSION,
            timestamp_ms=int(time.time() * 1000),
            event_id="observed-1",
        )
        logged = events_pb2_grpc.EventCollectorStub(channel).LogEvents(  # type: ignore[no-untyped-call]
            events_pb2.LogEventsRequest(events=[event]), timeout=10, metadata=auth
        )
        assert logged.accepted == 1


def test_every_series_of_the_dashboard_and_the_rules_exists_in_a_real_prometheus(
    trained: TrainedBundle, served: BackgroundServer, prometheus: int, tmp_path: Path
) -> None:
    wanted = dashboard_names() | rule_names()
    # Not vacuous: the parser found the families the dashboard is about.
    assert {
        "recsys_rpc_duration_seconds_bucket",
        "recsys_batch_size_bucket",
        "recsys_batch_queue_wait_seconds_bucket",
        "recsys_fallback_total",
        "recsys_model_info",
        "recsys_registry_up",
        "recsys_auth_refused_total",
        "recsys_client_calls_total",
    } <= wanted
    assert rule_names() - dashboard_names() >= NOT_YET_EXPORTED
    wanted -= NOT_YET_EXPORTED

    users = trained.interactions.get_column("user_id").unique().sort().head(5).to_list()
    _make_traffic(served.address, users)

    present: set[str] = set()

    def all_scraped() -> bool:
        present.update(_api(prometheus, "label/__name__/values"))
        return wanted <= present

    try:
        _wait_for(all_scraped, "every series to be scraped")
    except AssertionError as timed_out:
        raise AssertionError(
            f"series the dashboard or the rules read but Prometheus never saw: {sorted(wanted - present)}"
        ) from timed_out

    # Each name has a sample from this server now, not just a name in the index.
    for name in sorted(wanted - {"up"}):
        result = _api(prometheus, "query", query=f'count({name}{{job="recsys"}})')["result"]
        assert result, name
        assert float(result[0]["value"][1]) >= 1, name
    # Every panel query parses and evaluates in Prometheus (promtool checks the rules only), with
    # Grafana's variables as the dashboard's "All" would set them.
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "10s")
            expr = expr.replace("$job", ".*").replace("$instance", ".*")
            _api(prometheus, "query", query=expr)  # raises on a query Prometheus refuses
    version = _api(prometheus, "query", query="recsys_model_info")["result"]
    assert [r["metric"]["model_version"] for r in version] == [trained.model_version]
    assert _api(prometheus, "query", query="recsys_registry_up")["result"][0]["value"][1] == "1"

    # Every rule loaded and evaluates without error against real series.
    def evaluated() -> bool:
        groups = _api(prometheus, "rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return bool(rules) and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)

    _wait_for(evaluated, "every rule to be evaluated once")
    rules = [rule for group in _api(prometheus, "rules")["groups"] for rule in group["rules"]]
    assert len(rules) == len(yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"][0]["rules"])
    assert {rule["name"]: rule["health"] for rule in rules} == {rule["name"]: "ok" for rule in rules}
    # A healthy replica raises nothing: its INVALID_ARGUMENT and UNAUTHENTICATED answers are the
    # callers' errors, not the server's. (Recommend's p99 over 10 ms on a loaded box is timing,
    # not health: that rule may go pending here.)
    raised = {alert["labels"]["alertname"] for alert in _api(prometheus, "alerts")["alerts"]}
    assert raised <= {"RecsysRecommendP99High"}

    # The registry breaks (its database file overwritten): the replica serves on, and the
    # registry alert matches it at once (pending: it fires only after its `for`).
    with (tmp_path / "mlflow.db").open("r+b") as database:  # the `served` registry
        database.write(b"not a database" * 64)

    def registry_alert_pending() -> bool:
        alerts = _api(prometheus, "alerts")["alerts"]
        return any(a["labels"]["alertname"] == "RecsysRegistryDown" for a in alerts)

    _wait_for(registry_alert_pending, "RecsysRegistryDown to match the broken registry")
    failures = _api(prometheus, "query", query="recsys_registry_poll_failures_total")["result"]
    assert float(failures[0]["value"][1]) >= 1
