"""The models a server answers with, kept current while it serves.

What to serve (:data:`EngineSource`) is either a plain ``load_engine()`` callable (one
fixed engine, as before) or :class:`LiveModelOptions`: a default model reference (a
bundle directory, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``) plus an optional
experiments file (:mod:`serving.lifecycle.experiments`). :class:`LiveModels` then

* loads the default model and every model the experiments name before the server
  reports ``SERVING`` (a bad experiments file or an unknown model fails the start);
* **watches aliases**: every ``poll_seconds`` it asks the registry where each
  ``models:/NAME@ALIAS`` in use points; when the alias moved, the new version is
  downloaded into the bundle cache, verified (checksums, weights, index:
  :func:`serving.bundle.format.load_bundle`) and warmed up with a query, all off the event
  loop, and only then swapped in (:meth:`~serving.lifecycle.engine_holder.EngineHolder.swap`): calls
  already running finish on the old engine, new calls get the new one, none fails. A
  version that fails any step is refused (logged, ``recsys_model_swaps_total
  {outcome="refused"}``) and the old model keeps serving; it is not retried until the
  alias moves again;
* **reloads the experiments file** every ``experiments_poll_seconds`` (and on SIGHUP)
  when its content changed: the new file is parsed, the models it adds are loaded, each
  variant's options are checked against its engine, and only then is the new routing
  table installed (:meth:`serving.lifecycle.routing.Router.install`). A bad file (syntax, shares,
  unknown keys, a model that does not load) is logged and refused; the running
  configuration stays.
* **reports the registry connection**: a poll that cannot reach the registry (down, network,
  a failed download) leaves the served model as it is and is recorded in
  :class:`~serving.lifecycle.registry_health.RegistryHealth` (health entry
  ``recsys.registry``, ``recsys_registry_up``); the next poll that reaches it again catches
  up with wherever the alias points by then.

Faults have deliberate outcomes, the old model serving on through each: a registry that does
not answer or answers garbage (a version that is not a number, a store that is not a database)
fails the poll (``recsys_io_faults_total{component="registry"}``); a bundle directory removed
while a new version loads fails the swap, retried at the next poll
(:class:`~serving.errors.BundleVanishedError`, ``{component="model_swap", kind="missing"}``); a
bundle that fails verification is refused for good (``kind="garbage"``). Each is logged once per
episode (:class:`serving.observability.io_faults.FaultEpisodes`): its first failure and its recovery.

Model management runs on its own single thread ("recsys-models"), not on the engine
executor: a download or a bundle load that takes seconds must not take an engine thread
from requests, and one thread serialises swaps and reloads (no two ever race).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from serving.errors import BundleError, BundleVanishedError, InvalidArgumentError, RecsysError
from serving.lifecycle.bundle_cache import BundleCache
from serving.lifecycle.engine_holder import EngineHolder
from serving.lifecycle.experiments import (
    ExperimentConfigError,
    ExperimentSet,
    experiments_digest,
    load_experiments,
    parse_experiments,
)
from serving.lifecycle.mlflow_store import (
    ModelRegistry,
    RegistryGarbageError,
    bound_http_retries,
    default_store_dir,
    resolve_tracking_uri,
)
from serving.lifecycle.model_ref import ModelRef, parse_model_ref
from serving.lifecycle.registry_health import RegistryHealth
from serving.lifecycle.routing import PopularitySource, Router, RoutingTable
from serving.metrics import ServingMetrics
from serving.observability.io_faults import FaultEpisodes, FaultKind, fault_kind
from serving.recommend.types import Diversity, RecommenderEngine, RecommendQuery

logger = logging.getLogger("serving")

_SWAP_HISTORY = 1000  # hot-swap attempts kept in LiveModels.swaps

WARM_UP_USER = "__recsys_warm_up__"


@dataclass(frozen=True)
class LiveModelOptions:
    """What ``recsys serve`` serves beyond one fixed engine. Picklable (``--workers N``).

    ``model``: the default model reference (requests without an experiment).
    ``experiments``: the experiments file (None: no experiments). ``cache_dir``: where
    registered bundles are cached (None: ``mlflow/bundles-cache``). ``tracking_uri``:
    the MLflow registry (empty: ``$MLFLOW_TRACKING_URI``, else the embedded store).
    """

    model: str
    experiments: Path | None = None
    poll_seconds: float = 15.0
    experiments_poll_seconds: float = 2.0
    cache_dir: Path | None = None
    tracking_uri: str = ""

    def __post_init__(self) -> None:
        try:
            parse_model_ref(self.model)
        except ValueError as exc:
            raise ValueError(f"model: {exc}") from exc
        for name in ("poll_seconds", "experiments_poll_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")


EngineSource = Callable[[], RecommenderEngine] | LiveModelOptions
"""What a server serves: a fixed engine's loader, or live models (see the module docstring)."""


def warm_up(engine: RecommenderEngine) -> None:
    """Answer one query with ``engine`` (a known user when it has a bundle), so the first
    request after a swap does not pay for lazy initialisation, and a broken model fails
    here rather than in a request."""
    from serving.recommend.engine import TwoTowerEngine

    queries = [RecommendQuery(WARM_UP_USER, 10)]
    if isinstance(engine, TwoTowerEngine) and engine.bundle.users.height:
        user = str(engine.bundle.users.get_column("user_id")[0])
        queries.append(RecommendQuery(user, 10))
        if engine.bundle.items.height:
            # A recent item: builds the item id look-up (seconds at 10M items) and runs the
            # request-time tower path once, before any caller waits on either.
            item = str(engine.bundle.item_ids[0])
            queries.append(RecommendQuery(user, 10, recent_item_ids=(item,)))
    engine.recommend_many(queries)


def load_bundle_engine(path: Path) -> RecommenderEngine:
    """A :class:`~serving.recommend.engine.TwoTowerEngine` on the verified bundle at ``path`` (picklable
    as ``functools.partial(load_bundle_engine, path)`` for ``--workers``).

    Raises :class:`~serving.errors.BundleError` for a missing or bad bundle.
    """
    from serving.recommend.engine import TwoTowerEngine

    return TwoTowerEngine.load(path)


class ModelLoader:
    """Loads engines for model references (blocking; call it off the event loop).

    Bundle directories load directly; ``models:/`` references resolve through the MLflow
    registry (:class:`serving.lifecycle.mlflow_store.ModelRegistry`, created on first use, so
    serving needs MLflow only when it serves a registered model) and load from the
    :class:`~serving.lifecycle.bundle_cache.BundleCache`. Every loaded engine is warmed up.
    """

    def __init__(
        self,
        tracking_uri: str = "",
        cache_dir: Path | None = None,
        *,
        load_engine: Callable[[Path], RecommenderEngine] = load_bundle_engine,
    ) -> None:
        self._tracking_uri = tracking_uri
        self._cache_dir = cache_dir
        self._load_engine = load_engine
        self._registry: ModelRegistry | None = None
        self._cache: BundleCache | None = None
        self._lock = threading.Lock()

    def _store(self) -> tuple[ModelRegistry, BundleCache]:
        with self._lock:
            if self._registry is None or self._cache is None:
                uri, _ = resolve_tracking_uri(self._tracking_uri)
                # A poll must come back while the registry is down (the default HTTP retries
                # would hold the management thread for minutes): a few quick retries, then
                # the next poll tries again.
                bound_http_retries()
                self._registry = ModelRegistry(uri)
                root = (
                    self._cache_dir if self._cache_dir is not None else default_store_dir() / "bundles-cache"
                )
                self._cache = BundleCache(root, uri)
            return self._registry, self._cache

    def version(self, ref: ModelRef) -> str:
        """The registered version ``ref`` means now ("" for a bundle directory).

        Raises :class:`~serving.lifecycle.mlflow_store.RegistryError` for an unknown model, version
        or alias, or when MLflow is not installed.
        """
        if ref.name is None:
            return ""
        registry, _ = self._store()
        if ref.alias is not None:
            return registry.version_of_alias(ref.name, ref.alias)
        assert ref.version is not None
        registry.check_version(ref.name, ref.version)
        return ref.version

    def load(self, ref: ModelRef, version: str = "") -> RecommenderEngine:
        """Load, verify and warm up the engine of ``ref`` (``version``: of a registered
        model, default: the one it means now). Raises :class:`BundleError` for a bad
        bundle, :class:`~serving.errors.BundleVanishedError` when a verified bundle's directory
        was removed as it loaded (twice), :class:`~serving.lifecycle.mlflow_store.RegistryError`
        for a registry problem."""
        if ref.path is not None:
            engine = self._load_engine(ref.path)
        else:
            assert ref.name is not None
            name = ref.name
            version = version or self.version(ref)
            registry, cache = self._store()

            def fetch_and_load() -> RecommenderEngine:
                path = cache.fetch(
                    name, version, lambda folder: registry.download_bundle(name, version, folder)
                )
                try:
                    return self._load_engine(path)
                except (BundleError, OSError) as exc:
                    if path.is_dir():
                        raise
                    # Verified, then gone: a clean-up raced the load; not a bad bundle.
                    raise BundleVanishedError(
                        f"models:/{name}/{version}: the bundle directory was removed while it loaded"
                    ) from exc

            try:
                engine = fetch_and_load()
            except (BundleError, BundleVanishedError) as exc:
                # A cached copy damaged after it was verified (disk, a person), or removed while it
                # loaded (a cache clean-up): fetch it once more. A second failure is the answer.
                logger.warning(
                    "cached models:/%s/%s failed to load (%s); downloading again", name, version, exc
                )
                cache.evict(name, version)
                engine = fetch_and_load()
        try:
            warm_up(engine)
        except Exception as exc:  # a bundle that loads but cannot answer is a bad bundle
            raise BundleError(f"{ref.text}: the warm-up query failed: {exc}") from exc
        return engine


@dataclass(frozen=True)
class SwapRecord:
    """One hot-swap attempt: ``outcome`` is ``swapped``, ``refused`` (a bad bundle: not retried) or
    ``failed`` (registry or download trouble: retried at the next poll); ``seconds`` from the
    moment the move was noticed to the swap (download, verification, warm-up)."""

    ref: str
    old_version: str
    new_version: str
    outcome: str
    seconds: float
    error: str = ""


@dataclass
class _Versions:
    """Registered version loaded per model reference, and the last one refused."""

    loaded: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


class LiveModels:
    """The engines of one server (see the module docstring).

    ``holder`` is the server's default holder (``router.default``). With a plain
    callable as ``source`` nothing is watched: the callable's engine serves until the
    end. ``loader`` (default: from the options) loads model references.
    """

    def __init__(
        self,
        source: EngineSource,
        holder: EngineHolder,
        metrics: ServingMetrics | None = None,
        *,
        loader: ModelLoader | None = None,
    ) -> None:
        self.router = Router(holder)
        self._metrics = metrics
        self.options = source if isinstance(source, LiveModelOptions) else None
        self._fixed = None if isinstance(source, LiveModelOptions) else source
        self._default_ref = parse_model_ref(self.options.model) if self.options is not None else None
        self._loader = loader if loader is not None else self._default_loader()
        self._versions = _Versions()
        self._refused_digest = ""
        self._missing_logged = False
        self.swaps: deque[SwapRecord] = deque(maxlen=_SWAP_HISTORY)
        """The latest hot-swap attempts, oldest first (figures, tests); bounded, because a
        download that keeps failing adds one at every poll for as long as the server runs."""
        self.last_reload_error = ""
        """Why the last experiments file was refused ("" when the last reload applied)."""
        self.registry_health = RegistryHealth(metrics)
        """Whether the last alias poll reached the registry (health entry, metrics)."""
        self._registry_faults = FaultEpisodes("registry", logger, metrics)
        self._swap_faults = FaultEpisodes("model_swap", logger, metrics)
        self.management = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-models")
        """The one thread that loads models, swaps them and reloads experiments."""
        self._wake_reload: asyncio.Event | None = None

    def _default_loader(self) -> ModelLoader:
        options = self.options
        if options is None:
            return ModelLoader()
        return ModelLoader(options.tracking_uri, options.cache_dir)

    # ------------------------------------------------------------- start-up
    def load_initial(self) -> RecommenderEngine:
        """Load the default model and the experiments' models (blocking, off the loop).

        Returns the default engine; the caller installs it in the default holder. The
        experiments' routing table is installed here. Raises
        :class:`~serving.errors.RecsysError` subclasses (a bad bundle, registry or
        experiments file) or what a plain ``load_engine`` raises.
        """
        if self._fixed is not None:
            return self._fixed()
        assert self.options is not None
        assert self._default_ref is not None
        ref = self._default_ref
        version = self._loader.version(ref)
        engine = self._loader.load(ref, version)
        self._versions.loaded[ref.text] = version
        if self.options.experiments is not None:
            experiments = load_experiments(self.options.experiments)
            table, versions = self._prepare(experiments, {ref.text: engine})
            self._versions.loaded.update(versions)
            self.router.install(table)
            logger.info("experiments from %s: %s", experiments.source, _describe(experiments))
        return engine

    # ---------------------------------------------------------- experiments
    def _prepare(
        self, experiments: ExperimentSet, loaded: Mapping[str, RecommenderEngine]
    ) -> tuple[RoutingTable, dict[str, str]]:
        """A routing table for ``experiments``: holders of the models already served are
        reused, the others loaded; every variant is checked against its engine.

        ``loaded``: engines of references not (yet) in a holder. Returns the table and the
        registered versions of the newly loaded references. Raises
        :class:`ExperimentConfigError` naming the file, experiment, variant and problem.
        """
        current = dict(self.router.table.holders)
        holders: dict[str, EngineHolder] = {}
        versions: dict[str, str] = {}
        if self._default_ref is not None:
            holders[self._default_ref.text] = self.router.default
        for experiment in experiments.experiments.values():
            for variant in experiment.variants:
                where = f"{experiments.source}: experiment {experiment.name!r}, variant {variant.name!r}"
                holder = holders.get(variant.model) or current.get(variant.model)
                engine = loaded.get(variant.model)
                if engine is None:
                    if holder is not None:
                        engine = holder.get()
                    else:
                        engine, versions[variant.model] = self._load_for(variant.model, where)
                holders[variant.model] = holder if holder is not None else EngineHolder(engine)
                _check_variant(engine, variant.options.strategy, variant.options.diversity, where)
        return RoutingTable(experiments, MappingProxyType(holders)), versions

    def _load_for(self, text: str, where: str) -> tuple[RecommenderEngine, str]:
        try:
            ref = parse_model_ref(text)
            version = self._loader.version(ref)
            return self._loader.load(ref, version), version
        except (RecsysError, OSError, ValueError) as exc:
            raise ExperimentConfigError(f"{where}: model {text}: {exc}") from exc

    def reload_experiments(self) -> bool:
        """Re-read the experiments file; install it when its content changed and it is valid.

        Blocking (runs on the management thread). Returns True when a new configuration
        was installed. A bad file is logged and refused; the running configuration stays.
        """
        path = self.options.experiments if self.options is not None else None
        if path is None:
            return False
        try:
            data = path.read_bytes()
        except OSError as exc:
            if not self._missing_logged:
                logger.warning(
                    "experiments file %s unreadable (%s); the running configuration stays", path, exc
                )
                self._missing_logged = True
            return False
        self._missing_logged = False
        digest = experiments_digest(data)
        if digest in (self.router.table.experiments.digest, self._refused_digest):
            return False
        try:
            experiments = parse_experiments(data, path)
            table, versions = self._prepare(experiments, {})
        except ExperimentConfigError as exc:
            self._refused_digest = digest
            self.last_reload_error = str(exc)
            logger.error("experiments reload refused, the running configuration stays: %s", exc)
            self._count("reloads", "refused")
            return False
        self._refused_digest = ""
        self.last_reload_error = ""
        in_use = set(table.holders)
        self._versions.loaded = {r: v for r, v in self._versions.loaded.items() if r in in_use}
        self._versions.loaded.update(versions)
        self.router.install(table)
        _release_frozen_heap()
        logger.info("experiments reloaded from %s: %s", path, _describe(experiments))
        self._count("reloads", "applied")
        return True

    # -------------------------------------------------------------- aliases
    def watched(self) -> dict[str, EngineHolder]:
        """Holders of the ``models:/NAME@ALIAS`` references in use, by reference."""
        holders = dict(self.router.table.holders)
        if self._default_ref is not None:
            holders[self._default_ref.text] = self.router.default
        return {text: h for text, h in holders.items() if parse_model_ref(text).watched}

    def check_aliases(self) -> list[SwapRecord]:
        """Swap in the new version of every watched alias that moved (blocking).

        Returns the swap attempts made (swapped, refused or failed). A reference that cannot
        be resolved keeps its engine; the poll is then recorded as failed in
        :attr:`registry_health` (as is a failed download), else as a success.
        """
        attempts = []
        watched = self.watched()
        trouble = ""
        for text, holder in watched.items():
            ref = parse_model_ref(text)
            try:
                version = self._loader.version(ref)
            except Exception as exc:  # the registry is down: keep serving what we have
                serving = f"resolving {text} (version {self._loaded(text)} serves on)"
                self._registry_faults.failed(_registry_fault_kind(exc), serving, exc)
                trouble = trouble or f"{text}: {exc}"
                continue
            if version in (self._versions.loaded.get(text), self._versions.refused.get(text)):
                continue
            record = self._swap(ref, holder, version)
            if record.outcome == "failed":
                trouble = trouble or f"{text} version {version}: {record.error}"
            attempts.append(record)
        if watched:
            if trouble:
                self.registry_health.failed(trouble)
            else:
                self.registry_health.succeeded()
                self._registry_faults.succeeded()
        return attempts

    def _loaded(self, text: str) -> str:
        return self._versions.loaded.get(text, "?")

    def _swap(self, ref: ModelRef, holder: EngineHolder, version: str) -> SwapRecord:
        old = self._loaded(ref.text)
        started = time.perf_counter()
        logger.info("%s moved from version %s to %s; loading it", ref.text, old, version)
        try:
            engine = self._loader.load(ref, version)
        except Exception as exc:
            seconds = time.perf_counter() - started
            kind: FaultKind
            if isinstance(exc, BundleError):
                # The bundle itself is bad (checksums, schema, dimensions): never try it again.
                self._versions.refused[ref.text] = version
                outcome, kind = "refused", "garbage"
            else:
                # A registry or download failure, a directory removed while it loaded: may pass,
                # the next poll tries again.
                outcome = "failed"
                kind = "missing" if isinstance(exc, BundleVanishedError) else _registry_fault_kind(exc)
            retry = "refused for good" if outcome == "refused" else "failed, retried at the next poll"
            what = f"swapping in version {version} of {ref.text} ({retry}; version {old} keeps serving)"
            self._swap_faults.failed(kind, what, exc)
            self._count("swaps", outcome)
            record = SwapRecord(ref.text, old, version, outcome, seconds, str(exc))
        else:
            holder.swap(engine)
            _release_frozen_heap()
            seconds = time.perf_counter() - started
            self._versions.loaded[ref.text] = version
            self._versions.refused.pop(ref.text, None)
            if holder is self.router.default and self._metrics is not None:
                self._metrics.set_model_version(engine.model_version)
            logger.info(
                "%s: swapped version %s -> %s (model %s) in %.2f s",
                ref.text,
                old,
                version,
                engine.model_version,
                seconds,
            )
            self._count("swaps", "swapped")
            self._swap_faults.succeeded()
            record = SwapRecord(ref.text, old, version, "swapped", seconds)
        self.swaps.append(record)
        return record

    def _count(self, what: Literal["swaps", "reloads"], outcome: str) -> None:
        if self._metrics is not None:
            counter = self._metrics.model_swaps if what == "swaps" else self._metrics.experiments_reloads
            counter.labels(outcome).inc()

    # ---------------------------------------------------------- background
    async def run(
        self,
        *,
        handle_signals: bool = False,
        on_registry: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        """Watch aliases and the experiments file until cancelled (no-op for a fixed engine).

        ``handle_signals``: SIGHUP reloads the experiments file at once (main thread only).
        ``on_registry(reachable)`` is awaited on the event loop after an alias poll whose
        registry reachability differs from the previous poll's (first poll included).
        """
        options = self.options
        if options is None:
            return
        loop = asyncio.get_running_loop()
        self._wake_reload = asyncio.Event()
        hup = False
        if (
            handle_signals
            and options.experiments is not None
            and threading.current_thread() is threading.main_thread()
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, self._wake_reload.set)
                hup = True
        reported: list[bool | None] = [None]

        async def report_registry() -> None:
            reachable = self.registry_health.state.reachable
            if on_registry is not None and reachable is not None and reachable != reported[0]:
                reported[0] = reachable
                await on_registry(reachable)

        jobs = [self._every(options.poll_seconds, self.check_aliases, None, report_registry)]
        if options.experiments is not None:
            jobs.append(
                self._every(options.experiments_poll_seconds, self.reload_experiments, self._wake_reload)
            )
        try:
            await asyncio.gather(*jobs)
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)

    async def _every(
        self,
        seconds: float,
        work: Callable[[], object],
        wake: asyncio.Event | None,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if wake is None:
                await asyncio.sleep(seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), seconds)
                wake.clear()
            try:
                await loop.run_in_executor(self.management, work)
            except Exception:
                logger.exception("model management task failed; retrying in %.1f s", seconds)
            if after is not None:
                await after()

    def close(self) -> None:
        """Stop the management thread (a download in progress finishes in the background)."""
        self.management.shutdown(wait=False, cancel_futures=True)


def _check_variant(engine: RecommenderEngine, strategy: str, diversity: Diversity, where: str) -> None:
    """Raise :class:`ExperimentConfigError` when ``engine`` cannot serve the variant's options."""
    if strategy == "popularity" and not isinstance(engine, PopularitySource):
        raise ExperimentConfigError(f"{where}: strategy: this model has no popularity strategy")
    if diversity.active:
        try:
            engine.recommend(RecommendQuery(WARM_UP_USER, 1, diversity=diversity))
        except InvalidArgumentError as exc:  # e.g. a category attribute the bundle lacks
            raise ExperimentConfigError(f"{where}: {exc}") from exc


def _registry_fault_kind(exc: BaseException) -> FaultKind:
    """``garbage`` for an answer that cannot be right, an OSError's kind, else ``unreachable``."""
    if isinstance(exc, RegistryGarbageError) or _is_corrupt_store(exc):
        return "garbage"
    kind = fault_kind(exc)
    return "unreachable" if kind == "other" else kind


def _is_corrupt_store(exc: BaseException) -> bool:
    # An embedded (SQLite) registry whose file is not a database: sqlite3.DatabaseError somewhere
    # in the chain, or its text in the message of MLflow's wrapper.
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            return False
        text = str(current)
        if "file is not a database" in text or "database disk image is malformed" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _describe(experiments: ExperimentSet) -> str:
    if not experiments.experiments:
        return "none"
    return "; ".join(
        f"{e.name} (" + ", ".join(f"{v.name} {v.share_percent:g}%" for v in e.variants) + ")"
        for e in experiments.experiments.values()
    )


def _release_frozen_heap() -> None:
    """Let the garbage collector free models that were frozen at start-up.

    The server moves everything alive once the first model is loaded into the permanent
    generation (``gc.freeze``), which the collector never scans. A model swapped out later may
    sit in reference cycles, so it is freed only by a collection that can see it: unfreeze.
    Full collections then scan the whole heap again (the price of a swap, paid until restart).
    """
    if gc.get_freeze_count():
        gc.unfreeze()
