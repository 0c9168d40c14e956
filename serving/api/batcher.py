"""Micro-batching and admission control in front of the engine (asyncio side).

:class:`MicroBatcher` is owned by one server and used from its event loop only.

Admission
    Every engine call (batched or not) takes one *pending* slot from the moment it is
    admitted until its work ends (or, if it never started, until it is dropped). With
    ``max_pending`` slots taken, a new call raises :class:`~serving.errors.OverloadedError`
    at once (``RESOURCE_EXHAUSTED`` through the interceptor): excess load is refused
    quickly instead of queueing without bound. A ``BatchRecommend`` call takes one slot
    whatever its size (its size is bounded by :data:`serving.api.wire.MAX_BATCH`).

Batching (:meth:`MicroBatcher.recommend`)
    Requests are queued. A batch of at most ``max_batch`` requests is dispatched to the
    executor at once when no batch is running; otherwise, as long as fewer than
    ``max_concurrent`` batches are running, when ``max_batch`` are queued or
    ``max_wait_ms`` after the oldest queued request arrived, whichever comes first. While
    all slots are busy the queue grows, so batches get larger under load and a lone
    request never waits for companions. One batch is one ``engine.recommend_many`` call:
    one user-tower pass and one index search per distinct filter list. A batch of one calls
    ``engine.recommend``.

    Each caller gets its own answer or its own error: an invalid query named by the
    engine (``requests[i].<field>``) is answered with that error and the rest of the batch
    is retried without it; any other failure of a batch makes each of its requests run
    alone, so one bad request never fails its neighbours.

Deadlines
    A request whose deadline passed before its batch is dispatched is answered with
    :class:`DeadlineExpired` and does no work; a caller whose deadline passes while it
    waits gets :class:`DeadlineExpired` (its result, if computed, is dropped), which the
    interceptor maps to ``DEADLINE_EXCEEDED``.

Requests queued behind a hot swap may name different engines; a batch is split by
engine, so no answer mixes two models.

Tracing (:mod:`serving.observability.tracing`, when on)
    A queued request keeps its caller's trace context; the batch runs in a
    ``recommend.batch`` span that is a child of its oldest request's span and linked to the
    others'. :meth:`MicroBatcher.run` runs its call in the caller's context. The engine's own
    spans (filters, user tower, index search, ...) nest under these on the engine thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from serving.errors import DeadlineExpired, InvalidArgumentError, OverloadedError
from serving.metrics import ServingMetrics
from serving.observability import tracing
from serving.recommend.types import Recommendation, RecommenderEngine, RecommendQuery

if TYPE_CHECKING:
    from opentelemetry.context import Context

_T = TypeVar("_T")
logger = logging.getLogger("serving")

_POSITION = re.compile(r"requests\[(\d+)\]\.(.+)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """Micro-batching and admission limits. Validated on construction."""

    # Requests answered by one engine call at most.
    max_batch: int = 64
    # How long the oldest queued request waits for company before its batch goes.
    max_wait_ms: float = 2.0
    # Engine calls admitted at once (queued + running); more get RESOURCE_EXHAUSTED.
    max_pending: int = 512
    # Batches running at once (normally the engine executor's thread count).
    max_concurrent: int = 4

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_pending", "max_concurrent"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms: must be in 0..1000, got {self.max_wait_ms}")


@dataclass(slots=True, eq=False)
class _Entry:
    engine: RecommenderEngine
    query: RecommendQuery
    future: asyncio.Future[Recommendation]
    deadline: float | None  # loop time
    enqueued: float  # loop time
    trace: Context | None  # the caller's trace context (None: tracing off)


_Outcome = Recommendation | BaseException


class MicroBatcher:
    """Queues Recommend requests into batches and admits every engine call; see the module docstring.

    ``executor`` runs the engine calls; the batcher does not own it. All methods must be
    called from the one event loop that serves the calls.
    """

    def __init__(
        self, executor: Executor | None, options: BatchOptions, metrics: ServingMetrics | None = None
    ) -> None:
        self._executor = executor
        self._options = options
        self._metrics = metrics
        self._max_wait_s = options.max_wait_ms / 1000.0
        self._queue: deque[_Entry] = deque()
        self._pending = 0
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def options(self) -> BatchOptions:
        return self._options

    @property
    def pending(self) -> int:
        """Admitted engine calls, queued or running."""
        return self._pending

    # ------------------------------------------------------------------ admission
    def _admit(self) -> None:
        if self._pending >= self._options.max_pending:
            if self._metrics is not None:
                self._metrics.rejected.inc()
            raise OverloadedError(f"server overloaded ({self._pending} calls pending); retry with backoff")
        self._pending += 1
        if self._metrics is not None:
            self._metrics.pending.inc()

    def _release(self, n: int = 1) -> None:
        self._pending -= n
        if self._metrics is not None:
            self._metrics.pending.dec(n)

    # ------------------------------------------------------------ public calls
    async def recommend(
        self, engine: RecommenderEngine, query: RecommendQuery, timeout: float | None
    ) -> Recommendation:
        """``engine``'s answer to ``query``, computed in a batch with other callers'.

        ``timeout``: seconds left until the caller's deadline (None: no deadline).
        Raises :class:`OverloadedError` when ``max_pending`` calls are pending,
        :class:`DeadlineExpired` when the deadline passes first, or the engine's error for
        this query.
        """
        if timeout is not None and timeout <= 0:
            raise DeadlineExpired("deadline expired before the request was queued")
        self._admit()
        loop = asyncio.get_running_loop()
        now = loop.time()
        future: asyncio.Future[Recommendation] = loop.create_future()
        deadline = None if timeout is None else now + timeout
        self._queue.append(_Entry(engine, query, future, deadline, now, tracing.current_context()))
        self._maybe_dispatch(loop)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # wait_for cancelled the future: a queued entry is dropped at dispatch, a
            # running one has its answer discarded.
            if not future.cancelled():
                raise  # a TimeoutError raised by the engine itself
            raise DeadlineExpired("deadline exceeded") from None

    async def run(self, call: Callable[[], _T], timeout: float | None) -> _T:
        """Run ``call`` on the executor (no batching) under admission control and the deadline.

        Raises :class:`OverloadedError`, :class:`DeadlineExpired` (no work is started when
        the deadline has already passed), or what ``call`` raises. A call that outlives
        its deadline keeps running in its thread (threads cannot be interrupted) but
        stops counting as pending.
        """
        if timeout is not None and timeout <= 0:
            raise DeadlineExpired("deadline expired before work started")
        self._admit()
        try:
            # In the caller's context: spans the call opens nest under the caller's span.
            future = asyncio.get_running_loop().run_in_executor(self._executor, tracing.bind(call))
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            if not future.cancelled():
                raise
            raise DeadlineExpired("deadline exceeded") from None

    # ------------------------------------------------------------------ dispatch
    def _maybe_dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Dispatch every batch that is due and has a free slot; arm the timer for the next."""
        options = self._options
        while self._queue and self._running < options.max_concurrent:
            # Work-conserving: an idle engine starts at once (waiting for companions would only
            # add latency at low load); requests arriving meanwhile queue up, so batches still
            # grow with load. With another batch running, a free slot waits up to max_wait_ms.
            if len(self._queue) < options.max_batch and self._running > 0:
                wait = self._queue[0].enqueued + self._max_wait_s - loop.time()
                if wait > 0:
                    if self._timer is None:
                        self._timer = loop.call_later(wait, self._on_timer, loop)
                    return
            batch = self._take(loop)
            if batch:
                self._dispatch(loop, batch)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._maybe_dispatch(loop)

    def _take(self, loop: asyncio.AbstractEventLoop) -> list[_Entry]:
        """Up to ``max_batch`` live entries; drops abandoned ones and answers expired ones."""
        now = loop.time()
        batch: list[_Entry] = []
        dropped = 0
        while self._queue and len(batch) < self._options.max_batch:
            entry = self._queue.popleft()
            if entry.future.done():  # the caller gave up (cancelled or timed out)
                dropped += 1
            elif entry.deadline is not None and entry.deadline <= now:
                entry.future.set_exception(DeadlineExpired("deadline expired while queued"))
                if self._metrics is not None:
                    self._metrics.expired.inc()
                dropped += 1
            else:
                batch.append(entry)
        if dropped:
            self._release(dropped)
        if batch and self._metrics is not None:
            self._metrics.batch_size.observe(len(batch))
            self._metrics.queue_wait.observe(now - batch[0].enqueued)
        return batch

    def _dispatch(self, loop: asyncio.AbstractEventLoop, batch: list[_Entry]) -> None:
        work = [(entry.engine, entry.query) for entry in batch]
        traces = [entry.trace for entry in batch]
        try:
            done = loop.run_in_executor(self._executor, answer_batch, work, traces)
        except RuntimeError as exc:  # executor already shut down (server stopping)
            self._release(len(batch))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        self._running += 1
        done.add_done_callback(lambda finished: self._on_done(loop, batch, finished))

    def _on_done(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Entry],
        finished: asyncio.Future[list[_Outcome]],
    ) -> None:
        self._running -= 1
        self._release(len(batch))
        if finished.cancelled():  # the executor was shut down before the batch started
            for entry in batch:
                entry.future.cancel()
        elif (error := finished.exception()) is not None:  # a bug in answer_batch itself
            logger.error("micro-batch failed", exc_info=error)
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
        else:
            for entry, outcome in zip(batch, finished.result(), strict=True):
                if entry.future.done():  # the caller gave up while the batch ran
                    continue
                if isinstance(outcome, BaseException):
                    entry.future.set_exception(outcome)
                else:
                    entry.future.set_result(outcome)
        self._maybe_dispatch(loop)


# --------------------------------------------------------------- executor side
def answer_batch(
    work: Sequence[tuple[RecommenderEngine, RecommendQuery]], traces: Sequence[Context | None] = ()
) -> list[_Outcome]:
    """One outcome (answer or exception) per ``(engine, query)``, in order. Runs off the loop.

    Queries are grouped by engine (normally one); each group is answered by
    :func:`answer_queries`. ``traces``: the callers' trace contexts, oldest first (tracing on):
    the batch's span is a child of the first and linked to the others
    (:func:`serving.observability.tracing.batch_span`).
    """
    outcomes: list[_Outcome | None] = [None] * len(work)
    groups: dict[int, list[int]] = {}
    for i, (engine, _) in enumerate(work):
        groups.setdefault(id(engine), []).append(i)
    with tracing.batch_span(traces):
        for members in groups.values():
            engine = work[members[0]][0]
            answers = answer_queries(engine, [work[i][1] for i in members])
            for i, outcome in zip(members, answers, strict=True):
                outcomes[i] = outcome
    return [o for o in outcomes if o is not None]


def answer_queries(engine: RecommenderEngine, queries: Sequence[RecommendQuery]) -> list[_Outcome]:
    """Each query's answer or exception, computed together where possible (see module docstring)."""
    if len(queries) == 1:
        return [_single(engine, queries[0])]
    outcomes: list[_Outcome | None] = [None] * len(queries)
    remaining = list(range(len(queries)))
    while remaining:
        try:
            answers = engine.recommend_many([queries[i] for i in remaining])
        except InvalidArgumentError as exc:
            culprit = _culprit(exc, len(remaining))
            if culprit is None:
                break  # not attributable: answer the rest one by one
            position, error = culprit
            outcomes[remaining.pop(position)] = error
            continue
        except Exception:
            break  # answer the rest one by one, so the failure stays with its request
        for i, answer in zip(remaining, answers, strict=True):
            outcomes[i] = answer
        remaining = []
    for i in remaining:
        outcomes[i] = _single(engine, queries[i])
    return [o for o in outcomes if o is not None]


def _single(engine: RecommenderEngine, query: RecommendQuery) -> _Outcome:
    try:
        return engine.recommend(query)
    except Exception as exc:
        return exc


def _culprit(exc: InvalidArgumentError, size: int) -> tuple[int, InvalidArgumentError] | None:
    """(position, the error as a single Recommend reports it) for ``requests[i].<field>``."""
    match = _POSITION.fullmatch(exc.field)
    if match is None or int(match.group(1)) >= size:
        return None
    cause = exc.__cause__
    if not isinstance(cause, InvalidArgumentError):
        cause = InvalidArgumentError(match.group(2), exc.problem)
    return int(match.group(1)), cause
