"""Attacks on a real server: TLS, mutual TLS, bearer tokens, scopes, rates, reloads, start-up checks.

Everything is real: certificates made here with ``cryptography`` (serving.security.selfsigned),
a real server on loopback serving the session's trained bundle, real channels. Each attack
must get exactly its status, and a legitimate client must keep getting answers in between.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import TrainedBundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving._proto.recsys.v1 import audiences_pb2, audiences_pb2_grpc
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions, ServerStartupError
from serving.client import ClientTLS, RecommenderClient, open_channel, token_from_env
from serving.lifecycle.live_models import load_bundle_engine
from serving.security import selfsigned
from serving.security.access import AccessOptions, is_loopback
from serving.security.rate_limit import ClientRates, TokenBucket
from serving.security.tls import TlsError, TlsFiles, load_tls
from serving.security.tokens import TokenFileError, hash_token, parse_tokens
from serving.storage import atomic_write_bytes, atomic_write_text

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent

WEB_TOKEN = "web-3c1f8a2e9b7d4f60a5e1c2b3d4e5f6a7"
MARKETING_TOKEN = "mkt-0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d"
LIMITED_TOKEN = "lim-11223344556677889900aabbccddeeff"
ALL_TOKENS = (WEB_TOKEN, MARKETING_TOKEN, LIMITED_TOKEN)
LIMITED_RATE = 2


def _tokens_toml(*clients: tuple[str, str, list[str], float | None]) -> str:
    blocks = []
    for name, token, scopes, rate in clients:
        lines = [
            "[[client]]",
            f'name = "{name}"',
            f'token_sha256 = "{hash_token(token)}"',
            "scopes = [" + ", ".join(f'"{s}"' for s in scopes) + "]",
        ]
        if rate is not None:
            lines.append(f"requests_per_s = {rate}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


BASE_CLIENTS = (
    ("web-frontend", WEB_TOKEN, ["recommender"], None),
    ("marketing", MARKETING_TOKEN, ["audiences", "profiles"], None),
    ("limited", LIMITED_TOKEN, ["recommender"], LIMITED_RATE),
)


@dataclass(frozen=True)
class Pki:
    """Files of one test PKI: the server's CA, the server, a good client, and bad clients."""

    root: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    foreign_cert: Path  # signed by another CA
    foreign_key: Path
    expired_cert: Path  # signed by the right CA, expired yesterday
    expired_key: Path
    authority: selfsigned.Issued

    def client_tls(self) -> ClientTLS:
        return ClientTLS(self.ca, self.client_cert, self.client_key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = selfsigned.make_ca("recsys test CA")
    other = selfsigned.make_ca("some other CA")
    atomic_write_bytes(root / "ca.pem", ca.cert_pem)
    selfsigned.write_pair(
        selfsigned.issue(ca, "localhost", server=True), root / "server.pem", root / "server.key"
    )
    selfsigned.write_pair(selfsigned.issue(ca, "web", server=False), root / "client.pem", root / "client.key")
    selfsigned.write_pair(
        selfsigned.issue(other, "intruder", server=False), root / "foreign.pem", root / "foreign.key"
    )
    now = dt.datetime.now(dt.UTC)
    expired = selfsigned.issue(
        ca, "old", server=False, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    selfsigned.write_pair(expired, root / "expired.pem", root / "expired.key")
    return Pki(
        root,
        root / "ca.pem",
        root / "server.pem",
        root / "server.key",
        root / "client.pem",
        root / "client.key",
        root / "foreign.pem",
        root / "foreign.key",
        root / "expired.pem",
        root / "expired.key",
        ca,
    )


@dataclass
class Secured:
    server: BackgroundServer
    tokens_file: Path

    @property
    def address(self) -> str:
        return self.server.address


@pytest.fixture(scope="module")
def secured(trained: TrainedBundle, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """Mutual TLS + tokens, files polled every 0.1 s (reload tests rewrite them)."""
    tokens_file = tmp_path_factory.mktemp("tokens") / "tokens.toml"
    atomic_write_text(tokens_file, _tokens_toml(*BASE_CLIENTS))
    options = ServerOptions(
        host="127.0.0.1",
        port=0,
        grace_seconds=0.5,
        max_workers=2,
        access=AccessOptions(
            tls=TlsFiles(pki.server_cert, pki.server_key, pki.ca), auth_tokens=tokens_file, poll_seconds=0.1
        ),
    )
    with BackgroundServer(options, lambda: load_bundle_engine(trained.bundle), start_timeout=60) as server:
        yield Secured(server, tokens_file)


def _user(trained: TrainedBundle) -> str:
    return str(trained.interactions.get_column("user_id")[0])


def _recommend(channel: grpc.Channel, user: str) -> pb2.RecommendResponse:
    response: pb2.RecommendResponse = pb2_grpc.RecommenderStub(channel).Recommend(
        pb2.RecommendRequest(user_id=user, k=5), timeout=10
    )
    return response


def _code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


@pytest.fixture(scope="module")
def legit(secured: Secured, pki: Pki) -> Iterator[grpc.Channel]:
    with open_channel(secured.address, tls=pki.client_tls(), token=WEB_TOKEN) as channel:
        yield channel


def _assert_legit_answers(legit: grpc.Channel, user: str) -> None:
    assert len(_recommend(legit, user).items) == 5


# ---------------------------------------------------------------- transport attacks


@pytest.mark.parametrize(
    "client",
    ["plaintext", "no client certificate", "certificate from another CA", "expired certificate"],
)
def test_transport_attacks_fail_the_handshake(
    client: str, secured: Secured, pki: Pki, legit: grpc.Channel, trained: TrainedBundle
) -> None:
    tls = {
        "plaintext": None,
        "no client certificate": ClientTLS(pki.ca),
        "certificate from another CA": ClientTLS(pki.ca, pki.foreign_cert, pki.foreign_key),
        "expired certificate": ClientTLS(pki.ca, pki.expired_cert, pki.expired_key),
    }[client]
    with open_channel(secured.address, tls=tls, token=WEB_TOKEN) as channel:
        code, _ = _code(lambda: _recommend(channel, _user(trained)))
    # A refused handshake never reaches a handler: the client sees the connection fail.
    assert code is grpc.StatusCode.UNAVAILABLE
    _assert_legit_answers(legit, _user(trained))


# ---------------------------------------------------------------- token attacks


def _one_off(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("0" if last != "0" else "1")


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("not-a-token-we-know", grpc.StatusCode.UNAUTHENTICATED),
        (_one_off(WEB_TOKEN), grpc.StatusCode.UNAUTHENTICATED),
        (WEB_TOKEN[:-1], grpc.StatusCode.UNAUTHENTICATED),
        (MARKETING_TOKEN, grpc.StatusCode.PERMISSION_DENIED),
    ],
    ids=["missing", "wrong", "one character off", "one character short", "wrong scope"],
)
def test_token_attacks_get_their_status(
    token: str | None,
    expected: grpc.StatusCode,
    secured: Secured,
    pki: Pki,
    legit: grpc.Channel,
    trained: TrainedBundle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.DEBUG),
        open_channel(secured.address, tls=pki.client_tls(), token=token) as ch,
    ):
        code, details = _code(lambda: _recommend(ch, _user(trained)))
        _assert_legit_answers(legit, _user(trained))
    assert code is expected
    for secret in ALL_TOKENS + ((token,) if token else ()):
        assert secret not in details
        assert not any(secret in record.getMessage() for record in caplog.records)


def test_a_malformed_authorization_header_is_unauthenticated(
    secured: Secured, pki: Pki, trained: TrainedBundle
) -> None:
    with open_channel(secured.address, tls=pki.client_tls()) as channel:
        stub = pb2_grpc.RecommenderStub(channel)
        request = pb2.RecommendRequest(user_id=_user(trained), k=3)
        for header in (WEB_TOKEN, f"Basic {WEB_TOKEN}", "Bearer ", "Bearer"):
            code, _ = _code(
                lambda h=header: stub.Recommend(request, metadata=(("authorization", h),), timeout=5)
            )
            assert code is grpc.StatusCode.UNAUTHENTICATED, header


def test_scopes_map_one_to_one_to_services(secured: Secured, pki: Pki, trained: TrainedBundle) -> None:
    seeds = [str(u) for u in trained.interactions.get_column("user_id").unique().head(5)]
    request = audiences_pb2.FindSimilarUsersRequest(seed_user_ids=seeds, size=5)
    with open_channel(secured.address, tls=pki.client_tls(), token=MARKETING_TOKEN) as channel:
        answer = audiences_pb2_grpc.AudiencesStub(channel).FindSimilarUsers(request, timeout=10)
        assert len(answer.users) == 5
    with open_channel(secured.address, tls=pki.client_tls(), token=WEB_TOKEN) as channel:
        code, details = _code(
            lambda: audiences_pb2_grpc.AudiencesStub(channel).FindSimilarUsers(request, timeout=5)
        )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "'audiences' scope" in details


def test_a_client_over_its_rate_is_resource_exhausted(
    secured: Secured, pki: Pki, legit: grpc.Channel, trained: TrainedBundle
) -> None:
    user = _user(trained)
    codes = []
    with open_channel(secured.address, tls=pki.client_tls(), token=LIMITED_TOKEN) as channel:
        for _ in range(LIMITED_RATE * 3):
            try:
                _recommend(channel, user)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
            _assert_legit_answers(legit, user)  # other clients are not limited by it
        # A burst of at most one second's worth passes, the rest is refused.
        assert codes.count(grpc.StatusCode.OK) <= LIMITED_RATE + 1
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        time.sleep(1.0 / LIMITED_RATE + 0.1)  # the bucket refills
        assert len(_recommend(channel, user).items) == 5


def test_health_is_open_and_reflection_needs_any_valid_token(secured: Secured, pki: Pki) -> None:
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    with open_channel(secured.address, tls=pki.client_tls()) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        code, _ = _code(
            lambda: list(
                reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([listing]))
            )
        )
        assert code is grpc.StatusCode.UNAUTHENTICATED
    with open_channel(secured.address, tls=pki.client_tls(), token=MARKETING_TOKEN) as channel:
        (reply,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([listing]), timeout=5
        )
        assert "recsys.v1.Recommender" in {s.name for s in reply.list_services_response.service}


def test_the_python_client_and_healthcheck_speak_mutual_tls(
    secured: Secured, pki: Pki, trained: TrainedBundle
) -> None:
    with RecommenderClient(secured.address, tls=pki.client_tls(), token=WEB_TOKEN) as client:
        assert client.health() == "SERVING"
        assert len(client.recommend(_user(trained), 3).items) == 3
    probe = [sys.executable, "-m", "serving.api.healthcheck", "--address", secured.address]
    tls_args = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    assert subprocess.run([*probe, *tls_args], cwd=REPO_ROOT, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run(probe, cwd=REPO_ROOT, capture_output=True, timeout=30).returncode == 1


# ---------------------------------------------------------------- reloads


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _answers(address: str, tls: ClientTLS, token: str, user: str) -> bool:
    with open_channel(address, tls=tls, token=token) as channel:
        try:
            _recommend(channel, user)
        except grpc.RpcError:
            return False
        return True


def test_the_tokens_file_reloads_and_a_bad_one_is_refused(
    secured: Secured, pki: Pki, trained: TrainedBundle
) -> None:
    user, tls = _user(trained), pki.client_tls()
    new_token = "new-5f4e3d2c1b0a99887766554433221100"
    try:
        atomic_write_text(
            secured.tokens_file, _tokens_toml(*BASE_CLIENTS, ("ab-harness", new_token, ["recommender"], None))
        )
        assert _wait_for(lambda: _answers(secured.address, tls, new_token, user))
        # A broken file (unknown scope) is refused: the running table stays.
        atomic_write_text(
            secured.tokens_file, _tokens_toml(("web-frontend", WEB_TOKEN, ["everything"], None))
        )
        time.sleep(0.5)
        assert _answers(secured.address, tls, new_token, user)
        assert _answers(secured.address, tls, WEB_TOKEN, user)
        # Revoking a client takes effect on its next call.
        atomic_write_text(secured.tokens_file, _tokens_toml(*BASE_CLIENTS))
        assert _wait_for(lambda: not _answers(secured.address, tls, new_token, user))
    finally:
        atomic_write_text(secured.tokens_file, _tokens_toml(*BASE_CLIENTS))


def _served_certificate(address: str, pki: Pki) -> bytes:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_certificates_rotate_without_a_restart(
    secured: Secured, pki: Pki, legit: grpc.Channel, trained: TrainedBundle
) -> None:
    before = _served_certificate(secured.address, pki)
    original = (pki.server_cert.read_bytes(), pki.server_key.read_bytes())
    rotated = selfsigned.issue(pki.authority, "localhost", server=True)
    try:
        # The key first would briefly pair a new key with the old certificate: load_tls refuses
        # such a pair, and the next poll picks up the complete one.
        selfsigned.write_pair(rotated, pki.server_cert, pki.server_key)
        assert _wait_for(lambda: _served_certificate(secured.address, pki) != before)
        assert _served_certificate(secured.address, pki) == rotated.certificate.public_bytes(
            selfsigned.serialization.Encoding.DER
        )
        # New connections use the new certificate, the open one keeps working.
        assert _answers(secured.address, pki.client_tls(), WEB_TOKEN, _user(trained))
        _assert_legit_answers(legit, _user(trained))
        # A bad replacement is refused; the rotated certificate keeps serving.
        atomic_write_bytes(pki.server_key, b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
        time.sleep(0.4)
        assert _answers(secured.address, pki.client_tls(), WEB_TOKEN, _user(trained))
    finally:
        atomic_write_bytes(pki.server_cert, original[0])
        atomic_write_bytes(pki.server_key, original[1])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sighup_reloads_tokens_in_a_real_serve_process(
    trained: TrainedBundle, pki: Pki, tmp_path: Path
) -> None:
    tokens_file = tmp_path / "tokens.toml"
    atomic_write_text(tokens_file, _tokens_toml(*BASE_CLIENTS))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "serving", "--bundle", str(trained.bundle), "--port", str(port),
        "--threads", "1", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        "--tls-client-ca", str(pki.ca), "--auth-tokens", str(tokens_file),
        "--security-poll-s", "3600",  # only SIGHUP can make it re-read the file in time
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        tls = pki.client_tls()
        assert _wait_for(lambda: _answers(address, tls, WEB_TOKEN, _user(trained)), timeout=60)
        new_token = "hup-00112233445566778899aabbccddeeff"
        atomic_write_text(tokens_file, _tokens_toml(*BASE_CLIENTS, ("hup", new_token, ["recommender"], None)))
        assert not _answers(address, tls, new_token, _user(trained))
        process.send_signal(signal.SIGHUP)
        assert _wait_for(lambda: _answers(address, tls, new_token, _user(trained)), timeout=10)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    text = stderr.decode()
    assert "auth tokens reloaded" in text
    assert not any(token in text for token in (*ALL_TOKENS, new_token))


# ---------------------------------------------------------------- start-up checks


def test_a_non_loopback_host_needs_tls_and_tokens_or_insecure(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--tls-cert/--tls-key and --auth-tokens") as info:
        ServerOptions(host="0.0.0.0", port=0)
    assert "--insecure" in str(info.value)
    tls = TlsFiles(pki.server_cert, pki.server_key)
    with pytest.raises(ValueError, match=r"without --auth-tokens"):
        ServerOptions(host="0.0.0.0", access=AccessOptions(tls=tls))
    ServerOptions(host="0.0.0.0", access=AccessOptions(insecure=True))
    ServerOptions(host="0.0.0.0", access=AccessOptions(tls=tls, auth_tokens=tmp_path / "t.toml"))
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("example.com")


def test_serve_refuses_an_exposed_plaintext_port_naming_the_flags(trained: TrainedBundle) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "--bundle",
            str(trained.bundle),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--tls-cert/--tls-key and --auth-tokens" in result.stderr
    assert "--insecure" in result.stderr


def test_bad_tls_files_are_refused_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"hello")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(selfsigned.issue(pki.authority, "x", server=True).key_pem)
    expired_server = tmp_path / "expired-server.pem"
    expired_server.write_bytes(pki.expired_cert.read_bytes())
    cases = [
        (TlsFiles(tmp_path / "missing.pem", pki.server_key), "--tls-cert", "missing.pem"),
        (TlsFiles(garbage, pki.server_key), "not a PEM X.509 certificate", "garbage.pem"),
        (TlsFiles(pki.server_cert, garbage), "not an unencrypted PEM private key", "garbage.pem"),
        (TlsFiles(pki.server_cert, other_key), "does not match the certificate", "other.key"),
        (TlsFiles(expired_server, pki.expired_key), "expired on", "expired-server.pem"),
        (TlsFiles(pki.server_cert, pki.server_key, garbage), "--tls-client-ca", "garbage.pem"),
    ]
    for files, problem, name in cases:
        with pytest.raises(TlsError) as info:
            load_tls(files)
        assert problem in str(info.value)
        assert name in str(info.value)
        assert "PRIVATE KEY" not in str(info.value)
    assert load_tls(TlsFiles(pki.server_cert, pki.server_key, pki.ca)).client_ca is not None


def test_a_bad_file_at_start_up_fails_the_start_naming_it(
    trained: TrainedBundle, pki: Pki, tmp_path: Path
) -> None:
    bad_tokens = tmp_path / "tokens.toml"
    bad_tokens.write_text('[[client]]\nname = "x"\ntoken_sha256 = "abc"\nscopes = ["recommender"]\n')
    options = ServerOptions(host="127.0.0.1", port=0, access=AccessOptions(auth_tokens=bad_tokens))
    with (
        pytest.raises(ServerStartupError, match=r"tokens.toml: client 'x': token_sha256 must be"),
        BackgroundServer(options, lambda: load_bundle_engine(trained.bundle)),
    ):
        pass


# ---------------------------------------------------------------- units


def test_tokens_file_validation_names_the_client_and_problem() -> None:
    source = Path("tokens.toml")
    good = _tokens_toml(("a", "t1", ["recommender", "events"], 10))
    table = parse_tokens(good.encode(), source)
    assert table.authenticate("t1") is not None
    assert table.authenticate("t2") is None
    assert table.authenticate("t1").scopes == {"recommender", "events"}  # type: ignore[union-attr]
    digest = hash_token("t1")
    bad = {
        "": "no [[client]] entries",
        "[[client]]\nname='a'\n": "token_sha256 must be",
        f"[[client]]\nname='a b'\ntoken_sha256='{digest}'\nscopes=['events']\n": "name must be",
        f"[[client]]\nname='a'\ntoken_sha256='{digest}'\nscopes=[]\n": "scopes must be a non-empty list",
        f"[[client]]\nname='a'\ntoken_sha256='{digest}'\nscopes=['admin']\n": "unknown scope 'admin'",
        f"[[client]]\nname='a'\ntoken_sha256='{digest}'\nscopes=['events']\nrequests_per_s=0\n": "positive",
        f"[[client]]\nname='a'\ntoken_sha256='{digest}'\nscopes=['events']\ncolour='red'\n": "unknown key",
        good + good.replace('"a"', '"b"'): "share one token",
        good + good: "listed twice",
        "[client\n": "not a valid TOML file",
        "[server]\n": "unknown top-level key",
    }
    for text, problem in bad.items():
        with pytest.raises(TokenFileError) as info:
            parse_tokens(text.encode(), source)
        assert problem in str(info.value)
        assert str(info.value).startswith("tokens.toml")
        assert digest not in str(info.value)


def test_token_bucket_allows_a_one_second_burst_then_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(5, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.2  # one token's worth
    assert bucket.try_take()
    assert not bucket.try_take()
    slow = TokenBucket(0.5, clock=lambda: now[0])
    assert slow.try_take()
    assert not slow.try_take()


def test_client_rates_survive_a_reload_unless_the_rate_changed() -> None:
    now = [0.0]
    rates = ClientRates(clock=lambda: now[0])
    table = parse_tokens(
        _tokens_toml(("a", "t", ["events"], 1), ("b", "u", ["events"], None)).encode(), Path("t")
    )
    rates.update(table.by_name())
    assert rates.allow("a")
    assert not rates.allow("a")
    assert all(rates.allow("b") for _ in range(100))  # no rate: never limited
    rates.update(table.by_name())
    assert not rates.allow("a")  # same rate: the empty bucket was kept
    faster = parse_tokens(_tokens_toml(("a", "t", ["events"], 3)).encode(), Path("t"))
    rates.update(faster.by_name())
    assert rates.allow("a")


def test_tokens_come_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_TEST_TOKEN", WEB_TOKEN)
    assert token_from_env("RECSYS_TEST_TOKEN") == WEB_TOKEN
    monkeypatch.delenv("RECSYS_TEST_TOKEN")
    with pytest.raises(ValueError, match="RECSYS_TEST_TOKEN"):
        token_from_env("RECSYS_TEST_TOKEN")
    assert "--token" not in {a for a in _query_flags() if a != "--token-env"}
    assert os.environ.get("RECSYS_TEST_TOKEN") is None


def _query_flags() -> set[str]:
    from training.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    query = commands.choices["query"]  # type: ignore[index]
    return {flag for action in query._actions for flag in action.option_strings}


def test_made_up_methods_are_refused_without_a_token_and_unimplemented_with_one(
    secured: Secured, pki: Pki, legit: grpc.Channel, trained: TrainedBundle
) -> None:
    with open_channel(secured.address, tls=pki.client_tls()) as channel:
        for i in range(300):  # more names than the interceptors cache: none of them is kept
            code, _ = _code(lambda i=i: channel.unary_unary(f"/recsys.v1.Nope/Made{i}")(b"", timeout=5))
            assert code is grpc.StatusCode.UNAUTHENTICATED
    code, _ = _code(lambda: legit.unary_unary("/recsys.v1.Recommender/Nope")(b"", timeout=5))
    assert code is grpc.StatusCode.UNIMPLEMENTED
    _assert_legit_answers(legit, _user(trained))


def test_recsys_query_speaks_mutual_tls_with_a_token_from_the_environment(
    secured: Secured, pki: Pki, trained: TrainedBundle
) -> None:
    command = [
        sys.executable, "-m", "training.cli.main", "query", "--address", secured.address,
        "--user", _user(trained), "--k", "3", "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
        "--tls-key", str(pki.client_key), "--token-env", "RECSYS_QUERY_TOKEN",
    ]  # fmt: skip
    env = {**os.environ, "RECSYS_QUERY_TOKEN": WEB_TOKEN}
    answered = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert answered.returncode == 0, answered.stderr
    assert "health: SERVING" in answered.stdout
    env.pop("RECSYS_QUERY_TOKEN")
    refused = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "RECSYS_QUERY_TOKEN" in refused.stderr
    assert WEB_TOKEN not in refused.stderr + answered.stderr + answered.stdout


def test_metrics_bind_loopback_even_when_the_service_port_does_not(trained: TrainedBundle) -> None:
    import psutil

    metrics_port = _free_port()
    options = ServerOptions(
        host="0.0.0.0",
        port=0,
        metrics_port=metrics_port,
        grace_seconds=0.2,
        access=AccessOptions(insecure=True),
    )
    with BackgroundServer(options, lambda: load_bundle_engine(trained.bundle)) as server:
        listening = {
            c.laddr.port: c.laddr.ip
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening[metrics_port] == "127.0.0.1"
        assert listening[server.port] in ("0.0.0.0", "::")
