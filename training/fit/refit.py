"""The full refit, trained in a child process beside the evaluation fit.

``recsys train`` trains the chosen configuration twice once it is chosen: on the training part (the
held-out figure) and on every interaction (``train.refit_full``: the bundle's model). The two fits
are independent, and a model of this size does not use several cores well: a SASRec step on Beauty
takes ~57 ms with two threads and ~85 ms with one, so two fits side by side, half the cores each,
end ~20 % sooner than one after the other (two 1-thread processes: 83 and 92 ms a step at once).

:class:`BackgroundFit` runs :func:`training.fit.auto.fit_selected` on data it prepares from the given
frame in a *spawned* child process (a fresh interpreter: no forked threads, and its own random
generators, seeded by the fit as in the parent, so the model is the one a sequential run trains, up to
the float sums of another thread count). The child uses ``threads`` threads for torch and BLAS, and
returns the model as data (its spec and state dict, as a bundle stores them, never a pickled module);
:meth:`BackgroundFit.result` rebuilds it, or raises what the child raised. The parent keeps the
other cores while the context is open (:func:`limited_threads`). As with any spawned process, the
program's main module is imported again in the child, so ``auto`` checks first that this is harmless
(:func:`main_module_is_spawn_safe`): a script without the ``if __name__ == "__main__":`` guard gets
the two fits one after the other.

:func:`concurrent_refit_threads` decides: ``train.concurrent_refit`` ``off`` never, ``on`` whenever it
can (a CPU device and >= 2 cores), ``auto`` also only when the fit is predicted to take at least
:data:`MIN_PREDICTED_SECONDS` (a child takes seconds to start) and the data has at most
:data:`MAX_INTERACTIONS` rows (the child holds its own copy of them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import polars as pl
import torch
from threadpoolctl import threadpool_limits

from serving.model.towers import TwoTowerModel, TwoTowerSpec
from training.config import Config, DataConfig
from training.features import prepare
from training.fit.auto import Selection, fit_selected
from training.fit.setup import resolve_device
from training.fit.trainer import TrainResult

log = logging.getLogger(__name__)

MIN_PREDICTED_SECONDS = 60.0
"""``auto`` runs the refit beside the evaluation fit when the fit is predicted to take at least this long."""
MAX_INTERACTIONS = 20_000_000
"""``auto`` keeps larger data sequential: the child prepares its own copy of every interaction."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def predicted_seconds(selection: Selection) -> float | None:
    """The chosen fit's predicted time: each part's measured seconds per epoch (on the validation
    split) times the epochs it will train; None when a part has no measurement."""
    parts = [(selection.name, selection.epochs)]
    if selection.partner is not None:
        partner = selection.partner
        epochs = len(partner.schedule) if partner.schedule is not None else partner.config.train.epochs
        parts.append((partner.name, epochs))
    measured = {c.name: c.seconds_per_epoch for c in selection.candidates}
    if any(name not in measured for name, _ in parts):
        return None
    return sum(measured[name] * epochs for name, epochs in parts)


def concurrent_refit_threads(config: Config, selection: Selection, interactions: int) -> int:
    """Threads for the child of a concurrent refit (the parent keeps the other cores); 0: sequential."""
    mode = config.train.concurrent_refit
    cores = available_cores()
    if mode == "off" or cores < 2 or resolve_device(config.train.device).type != "cpu":
        return 0
    if mode == "auto":
        predicted = predicted_seconds(selection)
        if predicted is None or predicted < MIN_PREDICTED_SECONDS or interactions > MAX_INTERACTIONS:
            return 0
        if not main_module_is_spawn_safe():
            log.info("refit after the evaluation fit: the main module has no __main__ guard for a child")
            return 0
    return cores // 2


_MAIN_GUARD = re.compile(r"""if\s+__name__\s*==\s*["']__main__["']""")


def main_module_is_spawn_safe() -> bool:
    """Whether a spawned child can start without re-running this program: spawn imports the main
    module again, which is harmless for ``python -m package`` (a package's ``__main__`` is skipped),
    an interactive session or notebook (no file), and a file whose entry point is guarded by
    ``if __name__ == "__main__":`` (the ``recsys`` command's is). An unguarded script would run its
    whole job again in the child, so ``auto`` trains one fit after the other for it."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.endswith("__main__"):
        return True
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    try:
        source = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return _MAIN_GUARD.search(source) is not None


@contextlib.contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Torch's and the BLAS libraries' thread counts held to ``threads`` inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class FitInputs:
    """What the child fits: ``fit_selected(prepare(frame, users, items, data_config), selection)``."""

    frame: pl.DataFrame
    users: pl.DataFrame | None
    items: pl.DataFrame | None
    data_config: DataConfig
    selection: Selection


class BackgroundFit:
    """``inputs``' fit in a spawned child process with ``threads`` threads, started on construction.
    Use as a context manager: inside it this process keeps the other cores; leaving it without
    :meth:`result` (the parent failed) terminates the child."""

    def __init__(self, inputs: FitInputs, threads: int) -> None:
        # What the fit reads, without the choice's record (candidates' curves, the guard's users):
        # the child gets the configurations, learning rates and blend only, and draws no progress bars
        # (two of them would garble one terminal).
        selection = inputs.selection
        quiet = dataclasses.replace(
            selection,
            config=_quiet(selection.config),
            partner=None
            if selection.partner is None
            else dataclasses.replace(selection.partner, config=_quiet(selection.partner.config)),
            candidates=[],
            guard=None,
        )
        self._threads = threads
        self._parent_threads = contextlib.ExitStack()
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        level = logging.getLogger("training").getEffectiveLevel()
        self._process = context.Process(
            target=_child_main,
            args=(send, level, dataclasses.replace(inputs, selection=quiet), threads),
            name="recsys-refit",
            daemon=True,
        )
        self._process.start()
        send.close()  # the child holds the only sending end: its exit ends the pipe
        log.info("refit on every interaction started in a child process, threads: %d", threads)

    def result(self) -> TrainResult:
        """The child's fit (waits for it); raises RuntimeError with the child's error, or when it died."""
        try:
            outcome, payload = self._receive.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(
                f"the refit's child process died without an answer (exit code {self._process.exitcode}); "
                "a script that calls training.pipeline.train must guard its entry point with "
                "if __name__ == '__main__' (the child is spawned), or set train.concurrent_refit = off"
            ) from None
        self._process.join()
        if outcome != "ok":
            raise RuntimeError(f"the refit's child process failed: {payload}")
        shipped = torch.load(io.BytesIO(payload), weights_only=True)
        model = TwoTowerModel(TwoTowerSpec.from_dict(json.loads(shipped["spec"])))
        model.load_state_dict(shipped["state_dict"])
        return TrainResult(model=model.eval(), **{name: shipped[name] for name in _RECORD_FIELDS})

    def __enter__(self) -> BackgroundFit:
        """Holds this process's torch and BLAS threads to the cores the child does not use."""
        self._parent_threads.enter_context(limited_threads(max(available_cores() - self._threads, 1)))
        return self

    def __exit__(self, *exc: object) -> None:
        self._parent_threads.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._receive.close()


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(TrainResult) if f.name != "model")
"""What the child sends of its :class:`TrainResult` besides the model (losses, seconds, schedule, ...)."""


def _quiet(config: Config) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, progress=False))


def _child_main(send: Connection, log_level: int, inputs: FitInputs, threads: int) -> None:
    """The child: the fit, sent back as the bytes of ``torch.save`` (tensors, lists and numbers only:
    the parent loads them with ``weights_only=True``), or the error's text."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s [refit] %(name)s: %(message)s")
    try:
        with limited_threads(threads):
            prepared = prepare(inputs.frame, inputs.users, inputs.items, inputs.data_config)
            result = fit_selected(prepared, inputs.selection)
        buffer = io.BytesIO()
        torch.save(
            {
                "spec": json.dumps(result.model.spec.to_dict()),
                "state_dict": result.model.state_dict(),
                **{name: getattr(result, name) for name in _RECORD_FIELDS},
            },
            buffer,
        )
        send.send(("ok", buffer.getvalue()))
    except BaseException as exc:  # reported to the parent, which raises it
        logging.getLogger(__name__).exception("refit failed")
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()
