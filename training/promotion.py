"""Model lifecycle: move registry aliases (``champion``, ``challenger``) behind an evaluation gate.

:func:`promote` points ``models:/NAME@ALIAS`` at a registered version, but only when the
version's offline metric (logged by ``recsys train`` with its run: ``ndcg@10`` by
default) is at least the current holder's, measured under the same evaluation protocol
and cut-off. Otherwise it refuses with both values, unless forced. Servers serving
``models:/NAME@ALIAS`` pick the move up on their next poll and hot-swap
(:mod:`serving.lifecycle.live_models`).

Every promotion pushes the alias's previous holder onto the alias history (a JSON
registered-model tag, :data:`serving.lifecycle.mlflow_store.ALIAS_HISTORY_TAG`); :func:`rollback`
pops it and moves the alias back. The registry itself is reached only through
:class:`serving.lifecycle.mlflow_store.ModelRegistry` (the one MLflow module).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from serving.errors import RecsysError
from serving.lifecycle.mlflow_store import ModelRegistry, VersionEvaluation

log = logging.getLogger(__name__)

ALIASES: tuple[str, ...] = ("champion", "challenger")
DEFAULT_METRIC = "ndcg@{k}"
"""Gate metric when none is named: NDCG at the candidate run's ``eval.k``."""


class PromotionRefusedError(RecsysError):
    """The evaluation gate refused a promotion; the message names both metric values."""


class NothingToRollBackError(RecsysError):
    """The alias has no earlier holder to return to."""


@dataclass(frozen=True)
class AliasMove:
    """What :func:`promote` / :func:`rollback` did: ``alias`` of ``name`` moved from
    ``previous`` (None: it did not exist) to ``version``. ``metric``, ``value`` and
    ``previous_value``: the gate's comparison (None where not measured)."""

    name: str
    alias: str
    version: str
    previous: str | None
    metric: str = ""
    value: float | None = None
    previous_value: float | None = None
    forced: bool = False
    note: str = ""


def gate_problem(candidate: VersionEvaluation, holder: VersionEvaluation, metric: str) -> str | None:
    """Why ``candidate`` may not replace ``holder`` on ``metric`` (None: it may)."""
    value, held = candidate.metric(metric), holder.metric(metric)
    if value is None:
        logged = ", ".join(sorted(candidate.metrics)) or "none"
        return f"version {candidate.version} has no logged {metric} (logged metrics: {logged})"
    if held is None:
        return f"the current holder, version {holder.version}, has no logged {metric}: cannot compare"
    if (candidate.protocol, candidate.k) != (holder.protocol, holder.k):
        return (
            f"not comparable: version {candidate.version} was evaluated with protocol "
            f"{candidate.protocol}@{candidate.k}, version {holder.version} with {holder.protocol}@{holder.k}"
        )
    if value < held:
        return (
            f"{metric} {value:.4f} of version {candidate.version} is below {held:.4f} of version "
            f"{holder.version}, the current holder"
        )
    return None


def promote(
    registry: ModelRegistry,
    name: str,
    version: str,
    alias: str,
    *,
    metric: str = "",
    force: bool = False,
) -> AliasMove:
    """Point ``models:/name@alias`` at ``version`` if it passes the gate (see module docstring).

    ``metric``: the gate metric (default ``ndcg@K``, K = the candidate's ``eval.k``).
    ``force``: promote even when the gate refuses (the refusal is logged). Raises
    :class:`PromotionRefusedError`, or :class:`~serving.lifecycle.mlflow_store.RegistryError` for an
    unknown model or version.
    """
    candidate = registry.evaluation(name, version)
    metric = metric or DEFAULT_METRIC.format(k=candidate.k or 10)
    value = candidate.metric(metric)
    current = registry.alias_version(name, alias)
    if current == version:
        return AliasMove(name, alias, version, current, metric, value, value, note="already the holder")
    held: float | None = None
    note = ""
    if current is not None:
        holder = registry.evaluation(name, current)
        held = holder.metric(metric)
        problem = gate_problem(candidate, holder, metric)
        if problem is not None:
            if not force:
                raise PromotionRefusedError(
                    f"models:/{name}@{alias}: refused: {problem} (--force promotes anyway)"
                )
            log.warning("models:/%s@%s: gate overridden (--force): %s", name, alias, problem)
            note = f"forced past the gate: {problem}"
    history = registry.alias_history(name, alias)
    if current is not None:
        registry.set_alias_history(name, alias, [*history, current])
    try:
        registry.set_alias(name, alias, version)
    except Exception:
        registry.set_alias_history(name, alias, history)  # the alias did not move
        raise
    return AliasMove(name, alias, version, current, metric, value, held, force and bool(note), note)


def rollback(registry: ModelRegistry, name: str, alias: str) -> AliasMove:
    """Move ``models:/name@alias`` back to the version that held it before the last promotion.

    Raises :class:`NothingToRollBackError` when no earlier holder is recorded.
    """
    history = registry.alias_history(name, alias)
    current = registry.alias_version(name, alias)
    if not history:
        raise NothingToRollBackError(
            f"models:/{name}@{alias}: no earlier version to roll back to "
            f"(currently {'version ' + current if current else 'unset'})"
        )
    previous = history[-1]
    registry.set_alias(name, alias, previous)
    registry.set_alias_history(name, alias, history[:-1])
    return AliasMove(name, alias, previous, current, note="rolled back")
