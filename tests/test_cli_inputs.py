"""Every ``recsys`` command answers an input it cannot use with exit code 2 and one message that
names the file or flag (and, where it helps, what to pass instead), never a library traceback.

The commands run in process through ``training.cli.main.main(argv)`` on wrong paths, wrong
formats (a CSV with other columns, a text file named .parquet) and mixed directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TrainedBundle

from training.cli.main import main as recsys


@dataclass(frozen=True)
class Inputs:
    """A data directory written by ``recsys synth`` and files that are not what commands expect."""

    data: Path  # interactions.parquet, users.parquet, items.parquet
    fake_parquet: Path  # text named .parquet
    wrong_csv: Path  # a CSV without the expected columns
    mixed: Path  # interactions.parquet beside a CSV
    empty: Path  # an empty directory
    missing: Path  # nothing there
    a_file: Path  # a plain file where a directory is needed
    ids: Path  # a valid user-id list
    binary_ids: Path  # not text


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("cli-inputs")
    data = root / "D"
    assert recsys(["synth", "--out", str(data), "--users", "40", "--items", "20", "--events", "400"]) == 0
    fake = root / "events.parquet"
    fake.write_text("user_id,item_id,timestamp\nu1,i1,1\n")
    wrong = root / "wrong.csv"
    wrong.write_text("customer,product,when\nu1,i1,1\n")
    mixed = root / "mixed"
    mixed.mkdir()
    (mixed / "interactions.parquet").write_bytes((data / "interactions.parquet").read_bytes())
    (mixed / "more.csv").write_text("user_id,item_id,timestamp\nu1,i1,1\n")
    empty = root / "empty"
    empty.mkdir()
    a_file = root / "a-file"
    a_file.write_text("x")
    ids = root / "ids.txt"
    ids.write_text("u1\nu2\n")
    binary = root / "ids.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 16)
    return Inputs(data, fake, wrong, mixed, empty, root / "missing", a_file, ids, binary)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``recsys argv``; assert exit code 2 and one ``error:`` message; return the message."""
    code = recsys(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_prepare_on_a_synth_directory_names_the_file_and_the_flags_to_pass(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported case: ``recsys synth --out D`` then ``recsys prepare --interactions D``."""
    data = inputs.data
    message = _refused(["prepare", "--interactions", str(data), "--out", str(tmp_path / "p")], capsys)
    assert "is not an interactions file" in message
    assert str(data / "items.parquet") in message or str(data / "users.parquet") in message
    assert f"--interactions {data / 'interactions.parquet'}" in message
    assert f"--users {data / 'users.parquet'}" in message
    assert f"--items {data / 'items.parquet'}" in message
    # ... and the suggestion works.
    suggested = [
        "prepare",
        "--interactions",
        str(data / "interactions.parquet"),
        "--users",
        str(data / "users.parquet"),
        "--items",
        str(data / "items.parquet"),
        "--out",
        str(tmp_path / "p"),
    ]
    assert recsys(suggested) == 0


def test_train_on_a_synth_directory_says_what_to_pass(
    inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = _refused(["train", "--interactions", str(inputs.data), "--out", str(tmp_path / "b")], capsys)
    assert "not an event log" in message
    assert f"--interactions {inputs.data / 'interactions.parquet'}" in message


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        # prepare: wrong paths, wrong formats, mixed directories, a file where the output goes
        (["prepare", "--interactions", "{missing}", "--out", "{out}"], "{missing}"),
        (["prepare", "--interactions", "{fake_parquet}", "--out", "{out}"], "{fake_parquet}"),
        (["prepare", "--interactions", "{wrong_csv}", "--out", "{out}"], "{wrong_csv}"),
        (["prepare", "--interactions", "{mixed}", "--out", "{out}"], "{mixed}"),
        (["prepare", "--interactions", "{empty}", "--out", "{out}"], "{empty}"),
        (["prepare", "--interactions", "{data}/*.parquet", "--out", "{out}"], "{items}"),
        (["prepare", "--interactions", "{interactions}", "--users", "{items}", "--out", "{out}"], "{items}"),
        (
            ["prepare", "--interactions", "{interactions}", "--users", "{fake_parquet}", "--out", "{out}"],
            "{fake_parquet}",
        ),
        (["prepare", "--interactions", "{interactions}", "--out", "{a_file}/p"], "--out {a_file}/p"),
        # train
        (["train", "--interactions", "{fake_parquet}", "--out", "{out}"], "{fake_parquet}"),
        (["train", "--interactions", "{wrong_csv}", "--out", "{out}"], "{wrong_csv}"),
        (["train", "--interactions", "{users}", "--out", "{out}"], "{users}"),
        (["train", "--interactions", "{interactions}", "--items", "{users}", "--out", "{out}"], "{users}"),
        (["train", "--interactions", "{empty}", "--out", "{out}"], "{empty}"),
        (
            ["train", "--interactions", "{interactions}", "--config", "{fake_parquet}", "--out", "{out}"],
            "{fake_parquet}",
        ),
        (["train", "--interactions", "{interactions}", "--out", "{a_file}/b"], "--out {a_file}/b"),
        (
            [
                "train",
                "--nproc",
                "1",
                "--interactions",
                "{data}",
                "--set",
                "train.objective=interaction",
                "--out",
                "{out}",
            ],
            "--interactions {interactions}",
        ),
        # the other commands that read data or write files
        (["synth", "--out", "{a_file}/d", "--users", "10"], "--out {a_file}/d"),
        (["import", "movielens", "{empty}", "--out", "{out}"], "{empty}"),
        (["import", "movielens", "{a_file}", "--out", "{out}"], "{a_file}"),
        (["config", "--config", "{missing}"], "{missing}"),
        (["throughput", "--data", "{empty}"], "{empty}"),
        (["benchmark", "--data", "{missing}", "--protocol", "llo"], "{missing}"),
        (["tune", "--data", "{empty}", "--out", "{out}.toml"], "{empty}"),
        (["ab-report", "--events", "{data}", "--experiment", "x"], "--events {data}"),
        (["ab-report", "--events", "{missing}", "--experiment", "x"], "--events {missing}"),
        (["experiments", "{fake_parquet}"], "{fake_parquet}"),
        (["experiments", "{missing}"], "{missing}"),
        (["demo", "--out", "{a_file}/demo"], "--out {a_file}/demo"),
        # commands that need a bundle, given something else
        (["recommend", "--bundle", "{data}", "--users", "{ids}", "--out", "{out}.csv"], "{data}"),
        (
            [
                "lookalike",
                "--bundle",
                "{users}",
                "--seed-users",
                "{ids}",
                "--size",
                "3",
                "--out",
                "{out}.csv",
            ],
            "{users}",
        ),
        (["serve", "--bundle", "{data}", "--port", "0"], "{data}"),
        (["profile", "--bundle", "{empty}", "--user", "u1"], "{empty}"),
        (["segments-report", "--bundle", "{missing}", "--out", "{out}.html"], "{missing}"),
        (
            ["query", "--address", "no such host:1", "--user", "u1", "--timeout", "1"],
            "--address no such host:1",
        ),
    ],
)
def test_an_unusable_input_is_refused_naming_it(
    argv: list[str], named: str, inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {
        **{name: str(getattr(inputs, name)) for name in Inputs.__dataclass_fields__},
        "interactions": str(inputs.data / "interactions.parquet"),
        "users": str(inputs.data / "users.parquet"),
        "items": str(inputs.data / "items.parquet"),
        "out": str(tmp_path / "out"),
    }
    message = _refused([arg.format(**paths) for arg in argv], capsys)
    assert named.format(**paths) in message


@pytest.mark.parametrize(
    ("users", "problem"),
    [
        ("{fake_parquet}", "cannot be read as parquet"),
        ("{wrong_csv}", "no user_id column"),
        ("{binary_ids}", "not UTF-8 text"),
        ("{data}", "is a directory"),
        ("{items}", "no user_id column"),
    ],
)
def test_batch_commands_name_an_unusable_user_list(
    users: str,
    problem: str,
    inputs: Inputs,
    trained: TrainedBundle,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = users.format(
        fake_parquet=inputs.fake_parquet,
        wrong_csv=inputs.wrong_csv,
        binary_ids=inputs.binary_ids,
        data=inputs.data,
        items=inputs.data / "items.parquet",
    )
    bundle = str(trained.bundle)
    for argv in (
        ["recommend", "--bundle", bundle, "--users", path, "--out", str(tmp_path / "r.csv")],
        [
            "lookalike",
            "--bundle",
            bundle,
            "--seed-users",
            path,
            "--size",
            "3",
            "--out",
            str(tmp_path / "l.csv"),
        ],
    ):
        message = _refused(argv, capsys)
        assert path in message
        assert problem in message


def test_an_output_path_that_is_a_directory_names_the_flag(
    inputs: Inputs, trained: TrainedBundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "recommend",
        "--bundle",
        str(trained.bundle),
        "--users",
        str(inputs.ids),
        "--out",
        str(inputs.empty),
    ]
    message = _refused(argv, capsys)
    assert message == f"error: --out {inputs.empty}: is a directory: pass a file path"
