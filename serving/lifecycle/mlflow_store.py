"""MLflow: the one module of the project that talks to it (tracking, registry, artifacts).

Training logs runs through :func:`open_run` / :class:`MlflowTracker` (wrapped by
:mod:`training.tracking`, which keeps its own public API); serving resolves
``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` and downloads bundles through
:class:`ModelRegistry`; ``recsys promote`` / ``rollback`` move aliases with it.

MLflow is an optional dependency: this module imports it only inside functions, so
``serving`` imports and serves bundle directories without it. Using the registry
without MLflow installed raises :class:`RegistryError` saying how to install it.

The embedded default store is SQLite under the checkout's ``mlflow/`` folder with
artifacts beside it (:func:`resolve_tracking_uri`); ``MLFLOW_TRACKING_URI`` (or an
explicit URI) points at a real tracking server instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import RecsysError
from serving.lifecycle.model_ref import is_version

log = logging.getLogger(__name__)

_MLFLOW_PARAM_LIMIT = 6000  # characters per param value accepted by MLflow stores
PARENT_RUN_TAG = "mlflow.parentRunId"
"""The tag by which MLflow nests a run under another one (UI and ``search_runs``)."""
ALIAS_HISTORY_TAG = "recsys.alias_history"
"""Registered-model tag: JSON ``{alias: [versions that held it before, oldest first]}``."""
_HISTORY_LIMIT = 50  # entries kept per alias (tag values are limited in size)
_INSTALL_HINT = "pip install 'mlflow>=3,<4' (or the project's 'train' extra)"


class RegistryError(RecsysError):
    """The model registry cannot answer: MLflow missing, unknown model, version or alias."""


class RegistryGarbageError(RegistryError):
    """The model registry answered something that cannot be right (a version that is not a number)."""


def default_store_dir() -> Path:
    """``mlflow/`` of the source checkout when there is one, else ``./mlflow``."""
    checkout = Path(__file__).resolve().parents[1] / "mlflow"
    return checkout if checkout.is_dir() else Path.cwd() / "mlflow"


def resolve_tracking_uri(explicit: str = "") -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments or None for the server's default).

    ``explicit`` first, then ``$MLFLOW_TRACKING_URI``, else the embedded SQLite store
    (created if missing) with artifacts in ``mlflow/artifacts``. A local SQLite store named
    either way keeps its artifacts in ``artifacts/`` beside its database file: MLflow's own
    default for one is ``./mlruns`` of whatever directory the run starts in.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri, _artifacts_beside(uri)
    store = default_store_dir()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()


def _artifacts_beside(uri: str) -> str | None:
    """``artifacts/`` beside a ``sqlite:///`` store's file; None for anything else (a server)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix or ":memory:" in uri:
        return None
    database = Path(uri[len(prefix) :])
    return (database.resolve().parent / "artifacts").as_uri()


HTTP_RETRY_DEFAULTS: Mapping[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # MLflow parses it as an integer
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
"""Serving's bounds on MLflow's HTTP client (MLflow's own defaults: 7 retries with backoff
factor 2 and a 120 s timeout, minutes per call while a tracking server is down)."""


def bound_http_retries() -> None:
    """Make MLflow's HTTP calls to a tracking server give up within seconds (serving polls).

    MLflow reads these settings from the environment at each request; values already set
    (by an operator) are kept. With these a call to a stopped server fails after a few
    seconds (connection refused, two retries), and a poll then simply tries again later.
    """
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def redact(uri: str) -> str:
    """Hide credentials in a tracking URI before logging it."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


_NOT_IN_METRIC_NAMES = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(key: str) -> str:
    """The MLflow name of a metric. MLflow allows letters, digits and ``_ - . space /``:
    ``@`` becomes ``_at_`` (``ndcg@10`` -> ``ndcg_at_10``), any other character ``_``
    (variant names of an A/B report, for example)."""
    return _NOT_IN_METRIC_NAMES.sub("_", key.replace("@", "_at_"))


def _client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` on ``tracking_uri`` (registry too); RegistryError without MLflow."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise RegistryError(f"MLflow is not installed; {_INSTALL_HINT}") from exc
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _is_missing(exc: Exception) -> bool:
    code = str(getattr(exc, "error_code", ""))
    return "RESOURCE_DOES_NOT_EXIST" in code or "INVALID_PARAMETER_VALUE" in code


# ------------------------------------------------------------------- tracking
@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    tracking_uri: str


class MlflowTracker:
    """One MLflow run (implements ``training.tracking.Tracker``). Create with :func:`open_run`."""

    def __init__(self, client: Any, run: Any, tracking_uri: str) -> None:
        self._client = client
        self._run = run
        self.info: RunInfo | None = RunInfo(run.info.run_id, run.info.experiment_id, tracking_uri)

    @property
    def _run_id(self) -> str:
        return str(self._run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:_MLFLOW_PARAM_LIMIT]) for k, v in params.items()]
        for start in range(0, len(batch), 100):  # MLflow accepts at most 100 params per batch
            self._client.log_batch(self._run_id, params=batch[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), now, step or 0) for k, v in metrics.items() if _finite(v)]
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


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


@contextlib.contextmanager
def open_run(
    tracking_uri: str,
    artifact_location: str | None,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
) -> Iterator[MlflowTracker]:
    """A tracker for one run of ``experiment`` (created if missing, with ``artifact_location``);
    the run is marked FINISHED, or FAILED if the block raises."""
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found is not None
        else client.create_experiment(experiment, artifact_location=artifact_location)
    )
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    tracker = MlflowTracker(client, run, tracking_uri)
    log.info("MLflow run %s in experiment %r at %s", run.info.run_id, experiment, redact(tracking_uri))
    try:
        yield tracker
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


# ------------------------------------------------------------------- registry
@dataclass(frozen=True)
class VersionEvaluation:
    """What a registered version's run says about its offline evaluation.

    ``metrics``: the run's final values by MLflow key (``ndcg_at_10``); ``protocol`` /
    ``k``: the run's ``eval.protocol`` / ``eval.k`` params (None when not logged).
    """

    name: str
    version: str
    run_id: str | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    protocol: str | None = None
    k: int | None = None
    model_version: str = ""

    def metric(self, name: str) -> float | None:
        """The value of metric ``name`` (``ndcg@10`` or its MLflow key), None if not logged."""
        return self.metrics.get(metric_key(name))


class ModelRegistry:
    """The MLflow model registry at ``tracking_uri``: versions, aliases, bundle downloads.

    Every method does blocking I/O: call it off the event loop. Raises
    :class:`RegistryError` for a missing MLflow, model, version or alias.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client = _client(tracking_uri)

    def version_of_alias(self, name: str, alias: str) -> str:
        """The version ``models:/name@alias`` points at now."""
        found = self.alias_version(name, alias)
        if found is None:
            raise RegistryError(f"models:/{name}@{alias}: no such registered model or alias")
        return found

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at, or None when the alias (or model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            version = str(self._client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if _is_missing(exc):
                return None
            raise
        if not is_version(version):
            # Used as a folder name of the bundle cache: never trust it to be a number.
            raise RegistryGarbageError(
                f"models:/{name}@{alias}: the registry answered version {version[:40]!r}, "
                "not a positive integer"
            )
        return version

    def check_version(self, name: str, version: str) -> None:
        """Raise :class:`RegistryError` unless ``models:/name/version`` exists."""
        self._version(name, version)

    def _version(self, name: str, version: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_model_version(name, version)
        except MlflowException as exc:
            if _is_missing(exc):
                raise RegistryError(f"models:/{name}/{version}: no such registered model version") from exc
            raise

    def evaluation(self, name: str, version: str) -> VersionEvaluation:
        """The offline evaluation logged with the run that produced ``models:/name/version``."""
        found = self._version(name, version)
        run_id = found.run_id or None
        tags = dict(found.tags or {})
        if run_id is None:
            return VersionEvaluation(name, version, None, model_version=tags.get("model_version", ""))
        data = self._client.get_run(run_id).data
        k = data.params.get("eval.k")
        return VersionEvaluation(
            name,
            version,
            run_id,
            metrics=dict(data.metrics),
            protocol=data.params.get("eval.protocol"),
            k=int(k) if k is not None and k.isdigit() else None,
            model_version=tags.get("model_version", ""),
        )

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(name, alias, version)

    def alias_history(self, name: str, alias: str) -> list[str]:
        """Versions that held ``alias`` before its current holder, oldest first."""
        return list(self._histories(name).get(alias, []))

    def set_alias_history(self, name: str, alias: str, versions: list[str]) -> None:
        """Replace ``alias``'s history (the last :data:`_HISTORY_LIMIT` entries are kept)."""
        histories = self._histories(name)
        histories[alias] = versions[-_HISTORY_LIMIT:]
        self._client.set_registered_model_tag(name, ALIAS_HISTORY_TAG, json.dumps(histories))

    def _histories(self, name: str) -> dict[str, list[str]]:
        from mlflow.exceptions import MlflowException

        try:
            model = self._client.get_registered_model(name)
        except MlflowException as exc:
            if _is_missing(exc):
                raise RegistryError(f"models:/{name}: no such registered model") from exc
            raise
        text = (model.tags or {}).get(ALIAS_HISTORY_TAG, "")
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            log.warning(
                "registered model %r: unreadable %s tag; starting a new history", name, ALIAS_HISTORY_TAG
            )
            return {}
        return {str(k): [str(v) for v in vs] for k, vs in data.items()} if isinstance(data, dict) else {}

    def download_bundle(self, name: str, version: str, destination: Path) -> Path:
        """Download the bundle directory of ``models:/name/version`` under ``destination``
        (an empty folder); returns the bundle's path."""
        import mlflow.artifacts

        source = self._version(name, version).source
        # The progress bar would write to stderr from a background thread of a server.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=source,
            dst_path=str(destination),
            tracking_uri=self.tracking_uri,
            registry_uri=self.tracking_uri,
        )
        return Path(path)

    def register_bundle(
        self,
        bundle: Path,
        name: str,
        *,
        experiment: str = "recsys-two-tower",
        artifact_location: str | None = None,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Log ``bundle`` (a directory) as the artifact of a new run and register it as a new
        version of ``name``; returns the version. Training does the same through its run;
        this is for bundles built elsewhere (and for tests)."""
        with open_run(self.tracking_uri, artifact_location, experiment, f"register-{bundle.name}") as run:
            if params:
                run.log_params(params)
            if metrics:
                run.log_metrics(metrics)
            run.log_directory(bundle, "bundle")
            version = run.register_model(name, "bundle", dict(tags or {}))
        assert version is not None
        return version
