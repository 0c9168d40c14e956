"""How the serving process writes its log: plain text (the default) or one JSON object per line.

``recsys serve --log-format json`` (:func:`configure_logging`) makes every record one JSON object:
``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message``, ``pid``, ``worker`` (with
``--workers N``), ``exception`` (a traceback, when the record has one) and the record's structured
fields. A record carries fields as ``extra={FIELDS: {...}}``: the access line
(:mod:`serving.api.interceptors`) has ``method``, ``code``, ``duration_ms``, ``request_id``,
``client`` and ``trace_id`` (null when the call has none), so log collectors can index them and
join a line to its trace. Fields never hold payloads, user ids or credentials: the code that logs
decides what goes in, and it puts in only what the text line shows.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = "fields"
"""Name of the ``extra`` entry holding a record's structured fields (a mapping)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring); ``static`` fields go on every line."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            **self._static,
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, Mapping):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of an unexpected type must not lose the line.
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(
    log_format: str, level: int, *, text_format: str = TEXT_FORMAT, worker: int | None = None
) -> None:
    """Send the process's log to stderr in ``log_format`` (replacing earlier handlers).

    ``worker``: the index of a ``--workers`` process (a JSON field; put it in ``text_format`` for
    text). Raises :class:`ValueError` for an unknown format.
    """
    check_log_format(log_format)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter({} if worker is None else {"worker": worker}))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def check_log_format(log_format: str) -> None:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format: must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
