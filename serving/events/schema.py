"""The event log's columns and the names of event types.

Parquet columns (one row per event; ``date`` comes from the hive partition directory):

=============  ====================  ===============================================
column         type                  meaning
=============  ====================  ===============================================
event_id       Utf8 (null if unset)  caller's id; readers keep one row per id
user_id        Utf8                  the user
item_id        Utf8                  the item
event_type     Utf8                  impression, click, add_to_cart or purchase
experiment     Utf8 (nullable)       experiment of the recommendation
variant        Utf8 (nullable)       variant that served it
model_version  Utf8 (nullable)       model version that served it
request_id     Utf8 (nullable)       Recommend call's request id
position       Int32                 1-based rank in the shown list, 0 = unknown
timestamp      Datetime(ms, UTC)     when it happened
value          Float64 (nullable)    revenue (purchases) or other amount
=============  ====================  ===============================================
"""

from __future__ import annotations

from typing import Final

import polars as pl

from serving._proto.recsys.v1 import events_pb2

# Wire enum value -> the name stored in the log (and used by training as ``event_type``).
EVENT_TYPE_NAMES: Final[dict[int, str]] = {
    events_pb2.EVENT_TYPE_IMPRESSION: "impression",
    events_pb2.EVENT_TYPE_CLICK: "click",
    events_pb2.EVENT_TYPE_ADD_TO_CART: "add_to_cart",
    events_pb2.EVENT_TYPE_PURCHASE: "purchase",
}
EVENT_TYPE_BY_NAME: Final[dict[str, int]] = {name: code for code, name in EVENT_TYPE_NAMES.items()}

EVENT_SCHEMA: Final[dict[str, pl.DataType]] = {
    "event_id": pl.Utf8(),
    "user_id": pl.Utf8(),
    "item_id": pl.Utf8(),
    "event_type": pl.Utf8(),
    "experiment": pl.Utf8(),
    "variant": pl.Utf8(),
    "model_version": pl.Utf8(),
    "request_id": pl.Utf8(),
    "position": pl.Int32(),
    "timestamp": pl.Datetime("ms", time_zone="UTC"),
    "value": pl.Float64(),
}
# Optional text fields: the empty string on the wire is stored as null.
OPTIONAL_TEXT: Final[tuple[str, ...]] = ("event_id", "experiment", "variant", "model_version", "request_id")
PARTITION_KEY: Final = "date"
