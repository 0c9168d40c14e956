"""The full refit in a child process beside the evaluation fit (training.fit.refit)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import tiny_config

from training.data.synth import SynthSummary
from training.fit.auto import CandidateResult, Selection
from training.fit.refit import BackgroundFit, FitInputs, concurrent_refit_threads, main_module_is_spawn_safe

QUIET = ("tracking.enabled=false", "profiles.enabled=false")


def _train(synth_data: SynthSummary, out: Path, mode: str) -> dict[str, object]:
    from training.pipeline import train

    config = tiny_config(*QUIET, f"train.concurrent_refit={mode}")
    summary = train(config, synth_data.interactions_path, synth_data.users_path, synth_data.items_path, out)
    manifest: dict[str, object] = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["summary_version"] = summary.model_version
    manifest["summary_metrics"] = summary.metrics
    return manifest


def test_the_refit_in_a_child_process_is_the_model_a_sequential_run_trains(
    synth_data: SynthSummary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed, same data, same configuration: the bundle's model (its weights' hash), losses and
    held-out figures do not depend on where the refit ran. Two cores assumed, one thread each side,
    whatever this machine has, so that the float sums are the same."""
    monkeypatch.setattr("training.fit.refit.available_cores", lambda: 2)
    sequential = _train(synth_data, tmp_path / "sequential", "off")
    concurrent = _train(synth_data, tmp_path / "concurrent", "on")
    # "<UTC time>-<hash of the weights>": the same weights.
    assert (
        str(concurrent["summary_version"]).split("-")[1] == str(sequential["summary_version"]).split("-")[1]
    )
    assert concurrent["summary_metrics"] == sequential["summary_metrics"]
    info_c, info_s = concurrent["info"], sequential["info"]
    assert isinstance(info_c, dict)
    assert isinstance(info_s, dict)
    assert info_c["epoch_losses"] == info_s["epoch_losses"]
    assert len(info_c["epoch_losses"]) == 2


def test_a_failing_refit_child_raises_its_error_in_the_parent(synth_data: SynthSummary) -> None:
    config = tiny_config(*QUIET)
    selection = Selection(config=config, name="interaction", schedule=None)
    broken = pl.read_parquet(synth_data.interactions_path).drop("item_id")
    with (
        BackgroundFit(FitInputs(broken, None, None, config.data, selection), threads=1) as refit,
        pytest.raises(RuntimeError, match=r"refit's child process failed: .*item_id"),
    ):
        refit.result()


def test_auto_runs_the_refit_beside_only_fits_worth_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("training.fit.refit.available_cores", lambda: 4)

    def selection(seconds_per_epoch: float, mode: str = "auto") -> Selection:
        config = tiny_config(f"train.concurrent_refit={mode}")
        measured = CandidateResult("interaction", 0.1, 10, 12, 12 * seconds_per_epoch, seconds_per_epoch)
        return Selection(config=config, name="interaction", schedule=[1e-3] * 10, candidates=[measured])

    slow = selection(7.0)  # 10 epochs x 7 s: 70 s
    assert concurrent_refit_threads(slow.config, slow, 100_000) == 2
    assert concurrent_refit_threads(slow.config, slow, 30_000_000) == 0  # the child's copy of the data
    quick = selection(0.5)
    assert concurrent_refit_threads(quick.config, quick, 100_000) == 0
    forced = selection(0.5, "on")
    assert concurrent_refit_threads(forced.config, forced, 30_000_000) == 2
    off = selection(7.0, "off")
    assert concurrent_refit_threads(off.config, off, 100_000) == 0
    monkeypatch.setattr("training.fit.refit.available_cores", lambda: 1)
    assert concurrent_refit_threads(forced.config, forced, 100_000) == 0


def test_auto_keeps_the_fits_sequential_under_an_unguarded_main_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spawn imports the main module again in the child: a script without the guard would run its
    whole job a second time there."""
    import sys
    import types

    def main_from(source: str | None) -> None:
        module = types.ModuleType("__main__")
        module.__spec__ = None
        if source is not None:
            path = tmp_path / "job.py"
            path.write_text(source, encoding="utf-8")
            module.__file__ = str(path)
        monkeypatch.setitem(sys.modules, "__main__", module)

    main_from("from training.pipeline import train\ntrain(config, 'events.parquet', None, None, 'out')\n")
    assert not main_module_is_spawn_safe()
    main_from("def main():\n    ...\n\nif __name__ == '__main__':\n    main()\n")
    assert main_module_is_spawn_safe()
    main_from(None)  # an interactive session or a notebook
    assert main_module_is_spawn_safe()
    monkeypatch.setattr("training.fit.refit.available_cores", lambda: 2)
    main_from("train(config, 'events.parquet', None, None, 'out')\n")
    config = tiny_config()
    measured = CandidateResult("interaction", 0.1, 10, 12, 84.0, 7.0)
    slow = Selection(config=config, name="interaction", schedule=[1e-3] * 10, candidates=[measured])
    assert concurrent_refit_threads(config, slow, 100_000) == 0
