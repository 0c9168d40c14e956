"""Experiment tracking. The only module that talks to MLflow.

The embedded default is a SQLite store under the repository's ``mlflow/`` folder with
artifacts beside it, so everything works without a server. ``MLFLOW_TRACKING_URI`` (or
``tracking.tracking_uri`` in the config) points at a real tracking server instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from training.config import TrackingConfig

log = logging.getLogger(__name__)

_MLFLOW_PARAM_LIMIT = 6000  # characters per param value accepted by MLflow stores


def default_store_dir() -> Path:
    """``mlflow/`` of the source checkout when there is one, else ``./mlflow``."""
    checkout = Path(__file__).resolve().parents[1] / "mlflow"
    return checkout if checkout.is_dir() else Path.cwd() / "mlflow"


def resolve_tracking_uri(config: TrackingConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments or None for the server's default)."""
    if config.tracking_uri:
        return config.tracking_uri, None
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if from_env:
        return from_env, None
    store = default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    tracking_uri: str


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


class MlflowTracker:
    """One MLflow run. Create with :func:`start_run`."""

    def __init__(self, client: Any, run: Any, tracking_uri: str) -> None:
        self._client = client
        self._run = run
        self.info = RunInfo(run.info.run_id, run.info.experiment_id, tracking_uri)

    @property
    def _run_id(self) -> str:
        return str(self._run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:_MLFLOW_PARAM_LIMIT]) for k, v in params.items()]
        for start in range(0, len(batch), 100):  # MLflow accepts at most 100 params per batch
            self._client.log_batch(self._run_id, params=batch[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_metric_key(k), float(v), now, step or 0) for k, v in metrics.items() if _finite(v)]
        if batch:
            self._client.log_batch(self._run_id, metrics=batch)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        self._client.log_text(self._run_id, json.dumps(data, indent=2, sort_keys=True, default=str), name)

    def log_directory(self, path: Path, artifact_path: str) -> None:
        self._client.log_artifacts(self._run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self._run_id, key, value)

    def register_model(self, name: str, artifact_path: str, tags: Mapping[str, str]) -> str | None:
        """Register the run's ``artifact_path`` as a new version of model ``name``."""
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        source = f"{self._run.info.artifact_uri}/{artifact_path}"
        version = self._client.create_model_version(
            name=name, source=source, run_id=self._run_id, tags=dict(tags)
        )
        return str(version.version)


def _metric_key(key: str) -> str:
    # MLflow metric names allow letters, digits, _ - . space / ; "@" is not among them.
    return key.replace("@", "_at_")


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


PARENT_RUN_TAG = "mlflow.parentRunId"
"""The tag by which MLflow nests a run under another one (UI and ``search_runs``)."""


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
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    uri, artifact_location = resolve_tracking_uri(config)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(config.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(config.experiment, artifact_location=artifact_location)
    )
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    tracker = MlflowTracker(client, run, uri)
    log.info("MLflow run %s in experiment %r at %s", run.info.run_id, config.experiment, _redact(uri))
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def _redact(uri: str) -> str:
    """Hide credentials in a tracking URI before logging it."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


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
