"""Experiment tracking for training jobs, on top of :mod:`serving.lifecycle.mlflow_store`.

:mod:`serving.lifecycle.mlflow_store` is the one module that talks to MLflow (serving needs the
registry too, and ``serving`` never imports ``training``); this module keeps the
training-side API: :func:`start_run` from the typed :class:`TrackingConfig`, the
:class:`Tracker` protocol, :class:`NullTracker` when tracking is off, :func:`flatten`.

The embedded default is a SQLite store under the repository's ``mlflow/`` folder with
artifacts beside it, so everything works without a server. ``MLFLOW_TRACKING_URI`` (or
``tracking.tracking_uri`` in the config) points at a real tracking server instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from serving.lifecycle import mlflow_store
from serving.lifecycle.mlflow_store import PARENT_RUN_TAG, MlflowTracker, RunInfo, default_store_dir
from training.config import TrackingConfig

__all__ = [
    "PARENT_RUN_TAG",
    "MlflowTracker",
    "NullTracker",
    "RunInfo",
    "Tracker",
    "default_store_dir",
    "flatten",
    "resolve_tracking_uri",
    "start_run",
]

log = logging.getLogger(__name__)


def resolve_tracking_uri(config: TrackingConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments or None for the server's default)."""
    return mlflow_store.resolve_tracking_uri(config.tracking_uri)


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_dict(self, data: Mapping[str, Any], name: str) -> None: ...
    def log_directory(self, path: Path, artifact_path: str) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def register_model(self, name: str, artifact_path: str, tags: Mapping[str, str]) -> str | None: ...
    @property
    def info(self) -> RunInfo | None: ...


class NullTracker:
    """Tracking disabled: every call is a no-op."""

    info: RunInfo | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_dict(self, data: Mapping[str, Any], name: str) -> None: ...
    def log_directory(self, path: Path, artifact_path: str) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def register_model(self, name: str, artifact_path: str, tags: Mapping[str, str]) -> str | None:
        return None


@contextlib.contextmanager
def start_run(
    config: TrackingConfig,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Tracker]:
    """A tracker for one run; the run is marked FINISHED, or FAILED if the block raises.

    With ``parent_run_id`` the run is a child of that run (same experiment expected).
    """
    if not config.enabled:
        yield NullTracker()
        return
    if parent_run_id is not None:
        tags = {**(tags or {}), PARENT_RUN_TAG: parent_run_id}
    uri, artifact_location = resolve_tracking_uri(config)
    with mlflow_store.open_run(uri, artifact_location, config.experiment, run_name, tags) as tracker:
        yield tracker


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
