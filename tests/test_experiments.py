"""A/B experiments: deterministic assignment, config validation, routing over a real server,
reload without restart (a bad file keeps the running configuration)."""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import TrainedBundle

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.client import RecommenderClient, recommend_request
from serving.lifecycle.experiments import (
    BUCKETS,
    ExperimentConfigError,
    Variant,
    assign_variant,
    bucket_of,
    load_experiments,
    parse_experiments,
)
from serving.lifecycle.live_models import LiveModelOptions
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import Diversity

USERS_FOR_SHARES = 100_000


def config_text(model: Path | str, shares: tuple[float, ...] = (50, 30, 20), salt: str = "s1") -> str:
    names = ("control", "treatment", "popular")
    lines = [f'[experiments.home]\nsalt = "{salt}"\n']
    for name, share in zip(names, shares, strict=False):
        strategy = 'strategy = "popularity"\n' if name == "popular" else ""
        lines.append(f'[experiments.home.variants.{name}]\nmodel = "{model}"\nshare = {share}\n{strategy}')
    return "\n".join(lines)


def parse(text: str, source: Path = Path("/etc/recsys/experiments.toml")) -> dict[str, Variant]:
    experiments = parse_experiments(text.encode(), source)
    return {v.name: v for v in experiments.experiments["home"].variants}


# ------------------------------------------------------------------ assignment
def test_bucket_is_a_stable_hash_not_python_hash() -> None:
    # Pinned: these must never change, or every running experiment reshuffles its users.
    assert bucket_of("user-1", "salt") == bucket_of("user-1", "salt")
    assert [bucket_of(f"u{i}", "home-2026") for i in range(3)] == [
        bucket_of("u0", "home-2026"),
        bucket_of("u1", "home-2026"),
        bucket_of("u2", "home-2026"),
    ]
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"salt\x00user-1").digest()[:8], "big") % BUCKETS
    assert bucket_of("user-1", "salt") == expected
    assert bucket_of("ab", "c") != bucket_of("b", "ca") or bucket_of("a", "bc") != bucket_of("ab", "c")


def test_shares_over_100k_users_are_within_one_point_of_the_config() -> None:
    variants = tuple(parse(config_text("/models/b", (50, 30, 20))).values())
    counts = collections.Counter(
        assign_variant(f"user-{i}", "s1", variants).name for i in range(USERS_FOR_SHARES)
    )
    for variant in variants:
        observed = 100 * counts[variant.name] / USERS_FOR_SHARES
        assert abs(observed - variant.share_percent) < 1.0, (variant.name, observed)


def test_uneven_and_zero_shares() -> None:
    variants = tuple(parse(config_text("/models/b", (99.5, 0.5, 0))).values())
    counts = collections.Counter(assign_variant(str(i), "s1", variants).name for i in range(20_000))
    assert counts["popular"] == 0  # share 0: only reachable by force_variant
    assert 0.2 < 100 * counts["treatment"] / 20_000 < 0.8


def test_same_user_same_variant_across_calls_and_reloads_and_salt_reshuffles() -> None:
    first = tuple(parse(config_text("/models/b")).values())
    again = tuple(parse(config_text("/models/b")).values())  # a reload of the same file
    users = [f"member-{i}" for i in range(2000)]
    assigned = [assign_variant(u, "s1", first).name for u in users]
    assert assigned == [assign_variant(u, "s1", first).name for u in users]
    assert assigned == [assign_variant(u, "s1", again).name for u in users]
    reshuffled = [assign_variant(u, "s2", first).name for u in users]
    same = sum(a == b for a, b in zip(assigned, reshuffled, strict=True)) / len(users)
    # Independent assignments with shares .5/.3/.2 agree with probability .38.
    assert 0.33 < same < 0.43


def test_assignment_refuses_shares_not_adding_up() -> None:
    with pytest.raises(ValueError, match="basis points"):
        assign_variant("u", "s", [Variant("a", "/m", 5000)])


# ------------------------------------------------------------------ validation
def test_a_valid_file_parses_with_options_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text(
        """
[experiments.home]
salt = "x"
description = "model vs popularity"

[experiments.home.variants.control]
model = "bundles/v1"
share = 33.33

[experiments.home.variants.diverse]
model = "models:/recsys-two-tower@champion"
share = 66.67
diversity = { mmr_lambda = 0.7, max_per_category = 2, category_attribute = "category" }
""",
        encoding="utf-8",
    )
    experiments = load_experiments(path)
    control, diverse = experiments.experiments["home"].variants
    assert control.model == str(tmp_path / "bundles" / "v1")  # relative to the file's folder
    assert (control.share_bp, diverse.share_bp) == (3333, 6667)
    assert control.options.strategy == "model"
    assert diverse.options.diversity == Diversity(0.7, 2, "category")
    assert experiments.model_refs() == {str(tmp_path / "bundles" / "v1"), "models:/recsys-two-tower@champion"}
    assert len(experiments.digest) == 64


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            config_text("/m", (50, 30, 30)),
            "experiment 'home': variant shares must add up to 100 percent, got 110",
        ),
        (config_text("/m", (50, 30)), "must add up to 100 percent, got 80"),
        ("[experiments.home\nsalt = 1", "invalid TOML"),
        ('[experiments.home]\nsalt = "s"\ncolour = 1\n', "experiment 'home': unknown key 'colour'"),
        ("[other]\nx = 1\n", "unknown key 'other'"),
        (
            config_text("/m").replace("share = 50\n", "share = 50\nweight = 2\n"),
            "experiment 'home', variant 'control': unknown key 'weight'",
        ),
        (
            config_text("/m").replace("share = 50\n", 'share = 50\nstrategy = "random"\n'),
            "variant 'control': strategy: must be one of 'model', 'popularity'",
        ),
        (config_text("/m").replace('salt = "s1"', ""), "experiment 'home': salt: required"),
        (config_text("/m", (50.005, 29.995, 20)), "variant 'control': share: at most 2 decimals"),
        (config_text("/m", (150, -30, -20)), "variant 'control': share: must be in 0..100"),
        (
            config_text("models:/no-alias-or-version"),
            "variant 'control': model: 'models:/no-alias-or-version'",
        ),
        (config_text("s3://bucket/x"), "variant 'control': model: 's3://bucket/x' is neither"),
        ('[experiments.home]\nsalt = "s"\n', "experiment 'home': variants: required"),
        (
            config_text("/m").replace("share = 50\n", "share = 50\ndiversity = { mmr_lambda = 2 }\n"),
            "variant 'control': diversity: mmr_lambda: must be 0 (off) or in (0, 1]",
        ),
        ('[experiments."bad name"]\nsalt = "s"\n', "experiment 'bad name': name must be"),
        ("", "empty file"),
        (" \n\t\n", "empty file"),
    ],
)
def test_bad_files_are_rejected_naming_file_experiment_variant_and_problem(text: str, problem: str) -> None:
    with pytest.raises(ExperimentConfigError) as raised:
        parse_experiments(text.encode(), Path("/etc/recsys/experiments.toml"))
    message = str(raised.value)
    assert message.startswith("/etc/recsys/experiments.toml: ")
    assert problem in message


@pytest.mark.parametrize("text", ["# no experiment running\n", "[experiments]\n"])
def test_a_file_that_says_so_runs_no_experiment(text: str) -> None:
    experiments = parse_experiments(text.encode(), Path("/etc/recsys/experiments.toml"))
    assert dict(experiments.experiments) == {}
    assert experiments.model_refs() == frozenset()


# ------------------------------------------------------------------ serving
@pytest.fixture(scope="module")
def served(
    trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BackgroundServer, Path]]:
    """A real server on the trained bundle with experiments ``home`` (control / treatment /
    popular, all on the one bundle; treatment with a default category cap of 1)."""
    path = tmp_path_factory.mktemp("experiments") / "experiments.toml"
    text = config_text(trained.bundle) + "\n"
    text = text.replace(
        "[experiments.home.variants.treatment]\n",
        "[experiments.home.variants.treatment]\ndiversity = { max_per_category = 1 }\n",
    )
    path.write_text(text, encoding="utf-8")
    source = LiveModelOptions(model=str(trained.bundle), experiments=path, experiments_poll_seconds=0.1)
    with BackgroundServer(ServerOptions(port=0, max_workers=2, grace_seconds=2), source) as server:
        yield server, path


@pytest.fixture(scope="module")
def client(served: tuple[BackgroundServer, Path]) -> Iterator[RecommenderClient]:
    with RecommenderClient(served[0].address) as connected:
        yield connected


def known_users(trained: TrainedBundle, n: int) -> list[str]:
    return trained.interactions.get_column("user_id").unique(maintain_order=True).head(n).to_list()


def test_response_names_variant_and_model_version(
    client: RecommenderClient, trained: TrainedBundle, served: tuple[BackgroundServer, Path]
) -> None:
    plain = client.recommend(known_users(trained, 1)[0], 5)
    assert plain.variant == ""  # no experiment named: the default model, no variant
    assert plain.model_version == trained.model_version
    home = load_experiments(served[1]).experiments["home"]
    answered = collections.Counter()
    for user in [*known_users(trained, 60), "never-seen-member"]:
        answer = client.recommend(user, 5, experiment="home")
        assert answer.variant == home.assign(user).name
        assert answer.model_version == trained.model_version
        again = client.recommend(user, 5, experiment="home")
        assert (again.variant, list(again.items)) == (answer.variant, list(answer.items))
        answered[answer.variant] += 1
    assert set(answered) == {"control", "treatment", "popular"}


def test_forced_variants_answer_with_their_options(
    client: RecommenderClient, trained: TrainedBundle, engine: TwoTowerEngine
) -> None:
    user = known_users(trained, 1)[0]
    seen = set(trained.interactions.filter(trained.interactions["user_id"] == user)["item_id"].to_list())
    model = client.recommend(user, 10, experiment="home", force_variant="control")
    popular = client.recommend(user, 10, experiment="home", force_variant="popular")
    capped = client.recommend(user, 10, experiment="home", force_variant="treatment")
    assert (model.variant, popular.variant, capped.variant) == ("control", "popular", "treatment")
    assert model.items == client.recommend(user, 10).items  # control = the default model, same options
    # Popularity: the bundle's most popular items, seen ones left out, not flagged as fallback.
    order = np.argsort(-engine.bundle.popularity, kind="stable")
    ids = engine.bundle.item_ids.to_list()
    expected = [ids[r] for r in order if ids[r] not in seen][:10]
    assert [i.item_id for i in popular.items] == expected
    assert not popular.fallback
    # The treatment's default diversity (one item per category) applies when the request sets none.
    categories = dict(zip(ids, engine.bundle.items.get_column("category").to_list(), strict=True))
    shown = [categories[i.item_id] for i in capped.items]
    assert len(shown) == len(set(shown))


def test_bad_experiment_or_variant_is_invalid_argument_naming_the_field(client: RecommenderClient) -> None:
    cases = [
        ({"experiment": "nope"}, "experiment: unknown experiment 'nope' (known: home)"),
        (
            {"experiment": "home", "force_variant": "nope"},
            "force_variant: experiment 'home' has no variant 'nope'",
        ),
        ({"force_variant": "control"}, "force_variant: needs an experiment"),
    ]
    for fields, message in cases:
        with pytest.raises(grpc.RpcError) as raised:
            client.recommend("u1", 5, **fields)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(raised.value.details())


def test_batch_mixes_experiments_and_variants_each_equal_to_recommend(
    client: RecommenderClient, trained: TrainedBundle
) -> None:
    users = known_users(trained, 6)
    requests = [
        recommend_request(users[0], 5),
        recommend_request(users[1], 5, experiment="home"),
        recommend_request(users[2], 5, experiment="home", force_variant="popular"),
        recommend_request(users[3], 5, experiment="home", force_variant="treatment"),
        recommend_request("unknown-member", 5, experiment="home", force_variant="control"),
        recommend_request(users[5], 5, experiment="home", force_variant="popular"),
    ]
    batch = client.batch_recommend(requests).responses
    singles = [client.stub.Recommend(r, timeout=5) for r in requests]

    def summary(response: pb2.RecommendResponse) -> tuple[object, ...]:
        # Scores of one batched tower pass differ from single passes in the last float bits.
        items = [(i.item_id, i.explanation_item_id, round(i.score, 4)) for i in response.items]
        return response.variant, response.model_version, response.fallback, items

    assert [summary(b) for b in batch] == [summary(s) for s in singles]
    assert batch[2].variant == "popular"
    assert batch[0].variant == ""
    bad = [*requests[:3], recommend_request(users[0], 5, experiment="home", force_variant="ghost")]
    with pytest.raises(grpc.RpcError) as raised:
        client.batch_recommend(bad)
    assert "requests[3].force_variant" in str(raised.value.details())
    bad = [*requests[:3], recommend_request(users[0], 0, experiment="home", force_variant="popular")]
    with pytest.raises(grpc.RpcError) as raised:
        client.batch_recommend(bad)
    assert "requests[3].k" in str(raised.value.details())


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _replace(path: Path, text: str) -> None:
    """Rename a complete copy into place, as operators are told to: the server polls the file
    every 0.1 s here and could read an in-place rewrite half-written (empty: no experiments)."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text, encoding="utf-8")
    staged.replace(path)


def test_reload_without_restart_refuses_bad_files_and_keeps_the_running_config(
    served: tuple[BackgroundServer, Path], client: RecommenderClient, trained: TrainedBundle
) -> None:
    server, path = served
    models = server.models
    assert models is not None
    original = path.read_text(encoding="utf-8")
    users = known_users(trained, 30)
    before = [client.recommend(u, 5, experiment="home").variant for u in users]

    def refused(problem: str) -> None:
        wait_for(lambda: problem in models.last_reload_error)
        assert [client.recommend(u, 5, experiment="home").variant for u in users] == before

    try:
        # Rewritten in place: truncated first, the poll may read it empty; experiments go on,
        # and the refusal is logged and counted like any other.
        assert models.last_reload_error == ""
        path.write_bytes(b"")
        refused("empty file")
        _replace(path, original.replace("share = 30", "share = 40"))
        refused("variant shares must add up to 100 percent, got 110")
        _replace(path, original + "\n[experiments.broken\n")
        refused("invalid TOML")

        missing = path.parent / "no-such-bundle"
        _replace(path, original + config_text(missing).replace("home", "search"))
        refused(f"experiment 'search', variant 'control': model {missing}: ")
        with pytest.raises(grpc.RpcError):
            client.recommend(users[0], 5, experiment="search")

        # A valid new file applies without a restart; "home" users keep their variants.
        _replace(
            path,
            original + config_text(trained.bundle, (0, 100), salt="q").replace("home", "search"),
        )
        wait_for(lambda: "search" in models.router.table.experiments.experiments)
        assert models.last_reload_error == ""
        assert client.recommend(users[0], 5, experiment="search").variant == "treatment"
        assert [client.recommend(u, 5, experiment="home").variant for u in users] == before
    finally:
        _replace(path, original)
        wait_for(lambda: "search" not in models.router.table.experiments.experiments)


def test_start_fails_on_a_bad_experiments_file(trained: TrainedBundle, tmp_path: Path) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text(config_text(trained.bundle, (60, 60)), encoding="utf-8")
    source = LiveModelOptions(model=str(trained.bundle), experiments=path)
    server = BackgroundServer(ServerOptions(port=0, max_workers=1, grace_seconds=1), source)
    with pytest.raises(Exception, match="must add up to 100 percent") as raised, server:
        pass
    assert "experiments.toml" in str(raised.value)


def test_experiments_command_checks_a_file_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli.main import main as recsys

    path = tmp_path / "experiments.toml"
    path.write_text(config_text("models:/recsys-two-tower@champion"), encoding="utf-8")
    assert recsys(["experiments", str(path), "--users", "20000"]) == 0
    out = capsys.readouterr().out
    assert "home                 control                     50.00" in out
    deviation = float(out.rsplit("largest deviation over 20000 users: ", 1)[1].split()[0])
    assert deviation < 1.0
    path.write_text(config_text("/m", (50, 50, 50)), encoding="utf-8")
    assert recsys(["experiments", str(path)]) == 2
    assert "must add up to 100 percent, got 150" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:/recsys-two-tower@champion", ("recsys-two-tower", None, "champion")),
        ("models:/my model/12", ("my model", "12", None)),
        ("models:/a@b@challenger", ("a@b", None, "challenger")),
    ],
)
def test_model_references(text: str, expected: tuple[str, str | None, str | None]) -> None:
    from serving.lifecycle.model_ref import parse_model_ref

    ref = parse_model_ref(text)
    assert (ref.name, ref.version, ref.alias) == expected
    assert ref.text == text
    assert ref.registered
    assert ref.watched == (ref.alias is not None)
    local = parse_model_ref("bundles/../v1", Path("/srv"))
    assert (local.path, local.text, local.registered) == (Path("/srv/v1"), "/srv/v1", False)
    for bad, problem in [
        ("", "must not be empty"),
        ("models:/x", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
        ("models:/x/0", "version '0' must be a positive integer"),
        ("models:/x@", "alias '' must be letters"),
        ("models://1", "model name '' must be non-empty"),
        ("http://host/model", "is neither a bundle directory nor"),
    ]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            parse_model_ref(bad)
