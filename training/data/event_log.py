"""The feedback event log (``recsys serve --events-dir DIR``) as training interactions.

``recsys train --interactions DIR`` accepts an event-log directory: the loop closes
(serve -> LogEvents -> retrain). Clicks, add-to-carts and purchases become canonical
interactions (``event_type`` keeps its name, ``value`` the amount, ``timestamp`` unix
seconds). Impressions are dropped by default: an impression says the model showed the
item, not that the user wanted it, so training on impressions would teach the model to
recommend what it already recommends (a feedback loop that narrows the catalogue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl

from serving.events.reader import is_event_log, scan_events

# Event types that are evidence of interest, strongest last.
POSITIVE_EVENT_TYPES: Final = ("click", "add_to_cart", "purchase")


def event_log_interactions(root: Path, *, include_impressions: bool = False) -> pl.DataFrame:
    """The log's events as ``user_id, item_id, timestamp (unix s), event_type, value`` rows.

    Only complete Parquet files are read (events still in a live server's WAL are not).
    Raises :class:`ValueError` naming the directory when it holds no event log.
    """
    root = Path(root)
    if not is_event_log(root):
        raise ValueError(f"{root}: not an event log (no date=*/part-*.parquet files)")
    kinds = [*POSITIVE_EVENT_TYPES, *(("impression",) if include_impressions else ())]
    return (
        scan_events(root)
        .filter(pl.col("event_type").is_in(kinds))
        .select(
            "user_id",
            "item_id",
            pl.col("timestamp").dt.epoch("s").alias("timestamp"),
            "event_type",
            "value",
        )
        .collect()
    )
