""":class:`LiveProfiles`: a bundle's profiles as they stand, snapshot plus live partials.

One member's row is recomputed on read with the functions that built the snapshot:
:func:`~serving.profiles.behaviour.activity_from_days` over the member's live partials,
:func:`~serving.profiles.behaviour.append_activity` onto the snapshot row,
:func:`~serving.profiles.rfm.rfm` scored against the snapshot population (the bundle's bins)
and :func:`~serving.profiles.lifecycle.lifecycle`, all at the clock ``as_of`` = the latest
event applied (the data's own clock, as for the snapshot). Embedding segment, churn risk,
top hours/weekdays and preferences stay as in the snapshot (they need the model or every
event). A member first seen after the snapshot gets a profile from the live events alone.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from serving.errors import NotFoundError
from serving.profiles.behaviour import activity_from_days, append_activity
from serving.profiles.lifecycle import lifecycle
from serving.profiles.live.spec import LiveSpec, profile_options
from serving.profiles.live.stores import ProfileDeltaStore
from serving.profiles.rfm import RfmReference, rfm
from serving.profiles.store import ProfileRecord, ProfileStore

_EXTENSIBLE = ("value_sum", "value_count")
"""Snapshot columns the live arithmetic needs that bundles built before it lack (0 there)."""


class LiveProfiles:
    """Reads ``snapshot`` rows extended by ``store``'s partials of ``spec``."""

    def __init__(self, snapshot: ProfileStore, store: ProfileDeltaStore, spec: LiveSpec) -> None:
        self.snapshot = snapshot
        self.store = store
        self.spec = spec
        self._options = profile_options(snapshot.section)
        self._reference = RfmReference.of(snapshot.frame)

    def get(self, user_id: str, shown_id: str | None = None) -> ProfileRecord:
        """``user_id``'s profile as of the latest event applied; :class:`NotFoundError` for a
        member neither in the snapshot nor in the live events."""
        delta = self.store.read(self.spec, user_id)
        clock = self.spec.clock
        as_of = max(clock, delta.as_of) if delta.as_of is not None else clock
        earlier = self.snapshot.frame_of(user_id)
        if delta.parts.height == 0:
            if earlier.height == 0:
                raise NotFoundError("user", shown_id if shown_id is not None else user_id)
            if as_of == clock:
                return self.snapshot.record(earlier.row(0, named=True))
        row = self.row(earlier, delta.parts, as_of)
        return self.snapshot.record(row, as_of=as_of, live_events=_live_events(delta.parts))

    def row(self, earlier: pl.DataFrame, parts: pl.DataFrame, as_of: int) -> dict[str, Any]:
        """The profile row of a snapshot row (or none) and the member's partials at ``as_of``."""
        spec = self.spec
        missing = [pl.lit(0, dtype=pl.Int64).alias(c) for c in _EXTENSIBLE if c not in earlier.columns]
        base = (
            earlier.lazy()
            .with_columns(missing)
            .drop(
                "recency_days",
                "frequency",
                "monetary",
                "r_score",
                "f_score",
                "m_score",
                "rfm_segment",
                "tenure_days",
                "lifecycle",
                strict=False,
            )
        )
        later = activity_from_days(parts.lazy(), spec.event_types)
        merged = append_activity(base, later, spec.event_types)
        scored = rfm(merged, as_of, self._options.rfm_bins, spec.monetary_source, self._reference)
        frame = lifecycle(scored, as_of, self._options).collect()
        return frame.row(0, named=True)


def _live_events(parts: pl.DataFrame) -> int:
    total = parts.get_column("events_total").sum() if parts.height else 0
    return int(total) if isinstance(total, int | float) else 0
