"""Input data: importers and generators that write the canonical three-Parquet input directory.

The canonical directory holds ``interactions.parquet`` (user_id, item_id, timestamp, event_type,
value), ``users.parquet`` (user_id + attributes) and ``items.parquet`` (item_id + attributes).
"""

__all__ = ["event_log", "io", "movielens", "pseudonymise", "synth"]
