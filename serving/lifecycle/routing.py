"""Which engine answers a Recommend request: the default model, or an experiment's variant.

A :class:`Router` holds the server's default :class:`~serving.lifecycle.engine_holder.EngineHolder` and a
:class:`RoutingTable` (the experiments in force and one engine holder per model
reference they name). The table is replaced as a whole when the experiments file reloads
(:meth:`Router.install`): a request reads it once, then its variant's holder once, and
uses the engine it got for the whole call, so neither a reload nor a hot swap ever mixes
two configurations or two models within one answer.

Popularity variants are answered by a :class:`PopularityView` of the variant's engine:
one view object per engine, so the micro-batcher (which groups requests by engine
object, never mixing two in one batch) batches them together.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from serving.errors import InvalidArgumentError, NotReadyError
from serving.lifecycle.engine_holder import EngineHolder
from serving.lifecycle.experiments import NO_EXPERIMENTS, ExperimentSet, Variant
from serving.recommend.types import (
    NO_DIVERSITY,
    Diversity,
    Recommendation,
    RecommenderEngine,
    RecommendQuery,
    ScoredItem,
    SimilarItemsQuery,
)

_POSITION = re.compile(r"requests\[(\d+)\]\.(.+)", re.DOTALL)


@runtime_checkable
class PopularitySource(Protocol):
    """An engine that can answer with its popularity list (``TwoTowerEngine`` can)."""

    def recommend_popular(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]: ...


class PopularityView:
    """The ``popularity`` strategy of an engine, as a :class:`RecommenderEngine`.

    Recommend calls answer with the engine's most popular eligible items
    (``recommend_popular``); the other methods are the engine's own.
    """

    def __init__(self, engine: RecommenderEngine) -> None:
        if not isinstance(engine, PopularitySource):
            raise TypeError(f"{type(engine).__name__} has no popularity strategy (recommend_popular)")
        self._engine = engine
        self._popular: PopularitySource = engine

    @property
    def engine(self) -> RecommenderEngine:
        """The engine this view answers with."""
        return self._engine

    @property
    def model_version(self) -> str:
        return self._engine.model_version

    def recommend(self, query: RecommendQuery) -> Recommendation:
        return self._popular.recommend_popular([query])[0]

    def recommend_many(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        return self._popular.recommend_popular(queries)

    def similar_items(self, query: SimilarItemsQuery) -> list[ScoredItem]:
        return self._engine.similar_items(query)

    def user_embedding(self, user_id: str) -> npt.NDArray[np.float32]:
        return self._engine.user_embedding(user_id)


def _no_holders() -> Mapping[str, EngineHolder]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The experiments in force and an engine holder for every model reference they name."""

    experiments: ExperimentSet = NO_EXPERIMENTS
    holders: Mapping[str, EngineHolder] = field(default_factory=_no_holders)


@dataclass(frozen=True, slots=True)
class Route:
    """The answer to "who answers this request": an engine plus the variant's options.

    ``experiment`` / ``variant``: empty when the request named no experiment.
    ``diversity``: the variant's default re-ranking, used when the request sets none.
    """

    engine: RecommenderEngine
    experiment: str = ""
    variant: str = ""
    diversity: Diversity = NO_DIVERSITY

    def query(self, query: RecommendQuery) -> RecommendQuery:
        """``query`` with the variant's default diversity when it asks for none itself."""
        if self.diversity.active and not query.diversity.active:
            return replace(query, diversity=self.diversity)
        return query


class Router:
    """Routes requests to engines; see the module docstring. Thread-safe."""

    def __init__(self, default: EngineHolder, table: RoutingTable | None = None) -> None:
        self.default = default
        self._table = table if table is not None else RoutingTable()
        # One view per holder, for the engine the holder had when it was made: a stable object,
        # so concurrent popularity calls batch together, and replaced (so the swapped-out engine
        # can be freed once its in-flight calls end) when the holder's engine changes.
        # Keyed weakly by holder: a holder dropped by an experiments reload takes its view along.
        self._views: weakref.WeakKeyDictionary[EngineHolder, PopularityView] = weakref.WeakKeyDictionary()
        self._views_lock = threading.Lock()
        # The route of requests without experiment, kept while the default engine stays the same.
        self._default_route: Route | None = None

    @property
    def table(self) -> RoutingTable:
        return self._table

    def install(self, table: RoutingTable) -> RoutingTable:
        """Route subsequent requests with ``table``; returns the previous one.

        One attribute assignment: a request sees either table whole, never a mix.
        """
        previous, self._table = self._table, table
        return previous

    def route(self, user_id: str, experiment: str = "", force_variant: str = "", prefix: str = "") -> Route:
        """The route of one request (``prefix`` starts the field names in errors).

        Raises :class:`InvalidArgumentError` for an unknown experiment, an unknown forced
        variant or a forced variant without experiment; :class:`NotReadyError` when the
        engine is not loaded yet.
        """
        return self._route(self._table, {}, user_id, experiment, force_variant, prefix)

    def routes(self, requests: Sequence[tuple[str, str, str]]) -> list[Route]:
        """Routes of ``(user_id, experiment, force_variant)`` requests (one BatchRecommend
        call): one table read, and each holder read once, so a hot swap in the middle never
        splits the call between two versions of a model. Errors name ``requests[i].<field>``."""
        table = self._table
        engines: dict[int, RecommenderEngine] = {}
        return [
            self._route(table, engines, user_id, experiment, force, f"requests[{i}].")
            for i, (user_id, experiment, force) in enumerate(requests)
        ]

    def _route(
        self,
        table: RoutingTable,
        engines: dict[int, RecommenderEngine],
        user_id: str,
        experiment: str,
        force_variant: str,
        prefix: str,
    ) -> Route:
        if not experiment:
            if force_variant:
                raise InvalidArgumentError(f"{prefix}force_variant", "needs an experiment")
            return self._default_route_of(_read(self.default, engines))
        found = table.experiments.experiments.get(experiment)
        if found is None:
            known = ", ".join(sorted(table.experiments.experiments)) or "none configured"
            raise InvalidArgumentError(
                f"{prefix}experiment", f"unknown experiment {experiment!r} (known: {known})"
            )
        variant: Variant | None
        if force_variant:
            variant = found.variant(force_variant)
            if variant is None:
                known = ", ".join(v.name for v in found.variants)
                raise InvalidArgumentError(
                    f"{prefix}force_variant",
                    f"experiment {experiment!r} has no variant {force_variant!r} (known: {known})",
                )
        else:
            variant = found.assign(user_id)
        holder = table.holders.get(variant.model)
        if holder is None:  # a table is installed only with every holder loaded
            raise NotReadyError(f"model {variant.model} of variant {variant.name!r} is not loaded")
        engine = _read(holder, engines)
        if variant.options.strategy == "popularity":
            engine = self.popularity_view(holder, engine)
        return Route(engine, experiment, variant.name, variant.options.diversity)

    def _default_route_of(self, engine: RecommenderEngine) -> Route:
        """The route of requests without experiment: one object per default engine, not one
        per request (most requests name no experiment)."""
        route = self._default_route
        if route is None or route.engine is not engine:
            route = self._default_route = Route(engine)
        return route

    def popularity_view(self, holder: EngineHolder, engine: RecommenderEngine) -> PopularityView:
        """The one :class:`PopularityView` of ``holder``'s current ``engine`` (made on first use)."""
        with self._views_lock:
            view = self._views.get(holder)
            if view is None or view.engine is not engine:
                view = self._views[holder] = PopularityView(engine)
            return view


def _read(holder: EngineHolder, engines: dict[int, RecommenderEngine]) -> RecommenderEngine:
    """``holder``'s engine, read once per ``engines`` cache (one call)."""
    engine = engines.get(id(holder))
    if engine is None:
        engine = engines[id(holder)] = holder.get()
    return engine


def recommend_routed(routes: Sequence[Route], queries: Sequence[RecommendQuery]) -> list[Recommendation]:
    """Answers in order, one ``recommend_many`` per distinct engine (a BatchRecommend call).

    Queries already carry their route's options (:meth:`Route.query`). An invalid query
    raises :class:`InvalidArgumentError` naming ``requests[i].<field>`` with ``i`` its
    position in ``queries``. CPU-bound: call it off the event loop.
    """
    groups: dict[int, list[int]] = {}
    for i, route in enumerate(routes):
        groups.setdefault(id(route.engine), []).append(i)
    answers: list[Recommendation | None] = [None] * len(queries)
    for members in groups.values():
        engine = routes[members[0]].engine
        try:
            found = engine.recommend_many([queries[i] for i in members])
        except InvalidArgumentError as exc:
            raise _renumbered(exc, members) from exc.__cause__
        for i, answer in zip(members, found, strict=True):
            answers[i] = answer
    return [a for a in answers if a is not None]


def _renumbered(exc: InvalidArgumentError, members: Sequence[int]) -> InvalidArgumentError:
    """``exc`` with ``requests[j]`` (position within a group) renamed ``requests[members[j]]``."""
    match = _POSITION.fullmatch(exc.field)
    if match is None or int(match.group(1)) >= len(members):
        return exc
    return InvalidArgumentError(f"requests[{members[int(match.group(1))]}].{match.group(2)}", exc.problem)
