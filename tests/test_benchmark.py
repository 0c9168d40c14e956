"""End to end: ``run_benchmark`` on tiny synthetic data, its table, its MLflow runs and its CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import tiny_config
from mlflow.tracking import MlflowClient

from training.cli.benchmark import PROTOCOL_CHOICES, add_benchmark_parser
from training.data.synth import SynthSummary
from training.evaluation import PROTOCOLS
from training.evaluation.benchmark import MODELS, BenchmarkRow, format_table, run_benchmark


def test_run_benchmark_end_to_end(
    synth_data: SynthSummary,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow writes artifacts relative to the working directory
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = tiny_config(f'tracking.tracking_uri="{uri}"', "tracking.experiment=bench")

    result = run_benchmark(synth_data.interactions_path.parent, "rand", k=10, config=config)

    assert [row.model for row in result.rows] == list(MODELS)
    assert result.diversity_attribute == "category"  # first categorical item column of the synthetic data
    users = {row.metrics["users"] for row in result.rows}
    assert len(users) == 1
    assert users.pop() > 0
    for row in result.rows:
        for stem in ("ndcg", "recall", "hit_rate", "mrr", "coverage", "novelty", "diversity"):
            assert f"{stem}@10" in row.metrics, (row.model, stem)
        assert 0.0 <= row.metrics["ndcg@10"] <= 1.0
        assert row.fit_seconds >= 0.0
        assert row.eval_seconds >= 0.0
    by_model = {row.model: row for row in result.rows}
    assert by_model["ease"].metrics["ndcg@10"] > by_model["popularity"].metrics["ndcg@10"]

    printed = capsys.readouterr().out
    lines = result.table().splitlines()
    assert lines[0].split()[:3] == ["model", "ndcg@10", "recall@10"]
    assert [line.split()[0] for line in lines[2:]] == list(MODELS)
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned
    assert result.table() in printed

    client = MlflowClient(tracking_uri=uri)
    assert result.run_id is not None
    parent = client.get_run(result.run_id)
    assert parent.data.params["protocol"] == "rand"
    assert "ease.ndcg_at_10" in parent.data.metrics
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert sorted(run.data.tags["model"] for run in children) == sorted(MODELS)
    assert {run.info.run_id for run in children} == {row.run_id for row in result.rows}
    for run in children:
        assert run.info.status == "FINISHED"
        assert "ndcg_at_10" in run.data.metrics
        assert "fit_seconds" in run.data.metrics
    ease = next(run for run in children if run.data.tags["model"] == "ease")
    assert ease.data.params["l2"] == "500.0"


def test_run_benchmark_rejects_bad_arguments(synth_data: SynthSummary) -> None:
    config = tiny_config("tracking.enabled=false")
    with pytest.raises(ValueError, match="unknown or no model"):
        run_benchmark(synth_data.interactions_path.parent, "llo", config=config, models=["svd"])
    with pytest.raises(ValueError, match="unknown protocol"):
        run_benchmark(synth_data.interactions_path.parent, "loo", config=config, models=["popularity"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown protocol 'next'"):
        run_benchmark(
            synth_data.interactions_path.parent,
            "rand",
            config=config,
            models=["popularity"],
            validation_protocol="next",  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="not an item attribute"):
        run_benchmark(
            synth_data.interactions_path.parent,
            "llo",
            config=config,
            models=["popularity"],
            diversity_attribute="colour",
        )


def test_baselines_only_without_tracking_or_attributes(tmp_path: Path, synth_data: SynthSummary) -> None:
    # Interactions alone (no items file): no diversity column, nothing logged.
    data = tmp_path / "data"
    data.mkdir()
    (data / "interactions.parquet").write_bytes(synth_data.interactions_path.read_bytes())
    config = tiny_config("tracking.enabled=false")
    result = run_benchmark(data, "llo", k=5, config=config, models=["popularity", "ials"], show=False)
    assert [row.model for row in result.rows] == ["popularity", "ials"]
    assert result.diversity_attribute is None
    assert result.run_id is None
    assert "diversity@5" not in result.rows[0].metrics
    assert "diversity" not in result.table()
    assert "ndcg@5" in result.table()


def test_the_two_tower_model_can_validate_with_another_protocol_than_the_split(
    synth_data: SynthSummary,
) -> None:
    """A default bundle validates "what next" (eval.protocol = llo) whatever its future: scored on a
    random split, auto's validation split is carved leave-last-out."""
    config = tiny_config("tracking.enabled=false", "train.objective=linear", "train.linear_tower_rank=8")
    data = synth_data.interactions_path.parent
    mixed = run_benchmark(
        data, "rand", config=config, models=["two_tower"], validation_protocol="llo", show=False
    )
    same = run_benchmark(data, "rand", config=config, models=["two_tower"], show=False)
    assert mixed.rows[0].params["objective.validation_protocol"] == "llo"
    assert same.rows[0].params["objective.validation_protocol"] == "rand"
    assert mixed.rows[0].metrics["users"] == same.rows[0].metrics["users"]  # one test split


def test_format_table_aligns_and_marks_missing_values() -> None:
    rows = [
        BenchmarkRow("popularity", 10, {"ndcg@10": 0.1, "users": 3.0, "novelty@10": 2.0}, 0.01, 0.2),
        BenchmarkRow("ease", 10, {"ndcg@10": 0.25, "users": 3.0, "diversity@10": float("nan")}, 12.34, 0.5),
    ]
    lines = format_table(rows).splitlines()
    assert len({len(line.rstrip()) for line in lines[:2]}) == 1
    assert lines[2].split() == ["popularity", "0.1000", "-", "-", "-", "-", "2.000", "-", "3", "0.0", "0.2"]
    assert lines[3].split()[:2] == ["ease", "0.2500"]
    assert lines[3].split()[-2:] == ["12.3", "0.5"]
    assert format_table([]) == "(no models)"


def test_cli_parser_registers_benchmark() -> None:
    assert PROTOCOL_CHOICES == PROTOCOLS
    parser = argparse.ArgumentParser(prog="recsys")
    add_benchmark_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "benchmark",
            "--data",
            "d",
            "--protocol",
            "time",
            "--models",
            "ease, ials",
            "--set",
            "train.epochs=1",
        ]
    )
    assert (args.data, args.protocol, args.k, args.models) == (Path("d"), "time", 10, ["ease", "ials"])
    assert args.overrides == ["train.epochs=1"]
    assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark", "--data", "d", "--protocol", "loo"])
