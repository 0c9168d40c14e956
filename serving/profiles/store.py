"""The member profiles of one bundle, loaded for look-ups.

``profiles.parquet`` is checksummed with the rest of the bundle (``manifest.files``), so
:func:`serving.bundle.format.load_bundle` has already verified it; :meth:`ProfileStore.open`
reads it. A bundle written without profiles (older ones, or ``profiles.enabled =
false``) raises :class:`~serving.errors.FeatureUnavailableError` (``FAILED_PRECONDITION``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from serving.errors import BundleError, FeatureUnavailableError, NotFoundError

PROFILES_FILE = "profiles.parquet"


@dataclass(frozen=True)
class ProfileRecord:
    """One user's profile row (column -> value) and the section-level context it needs."""

    row: dict[str, Any]
    segment: dict[str, Any] | None
    """The description of the user's embedding segment (manifest), None without one."""
    section: dict[str, Any]
    """The manifest's ``profiles`` section (clock, churn metadata, options...)."""
    as_of: int | None = None
    """The clock the row is computed at (unix s): the latest event applied after the
    snapshot (:mod:`serving.profiles.live`); None: the snapshot's own clock."""
    live_events: int = 0
    """Events logged after the snapshot that this row includes."""


class ProfileStore:
    """Profiles by user id (the bundle's ids: pseudonyms when the bundle is pseudonymised)."""

    def __init__(self, frame: pl.DataFrame, section: dict[str, Any]) -> None:
        self.frame = frame
        self.section = section
        ids = frame.get_column("user_id").to_list()
        self._rows = {user_id: row for row, user_id in enumerate(ids)}
        descriptions = section.get("segments", {}).get("descriptions", [])
        self._segments = {int(d["segment"]): d for d in descriptions}

    @classmethod
    def open(cls, path: Path, manifest: dict[str, Any]) -> ProfileStore:
        """The profiles of the (already verified) bundle at ``path``."""
        return cls(read_profiles(path, manifest), manifest["profiles"])

    def __len__(self) -> int:
        return self.frame.height

    def frame_of(self, user_id: str) -> pl.DataFrame:
        """``user_id``'s row as a one-row table (no row when unknown), the table's columns."""
        row = self._rows.get(user_id)
        return self.frame.clear() if row is None else self.frame.slice(row, 1)

    def record(self, row: dict[str, Any], **live: Any) -> ProfileRecord:
        """The record of a profile row (its segment description looked up)."""
        segment = row.get("segment")
        return ProfileRecord(
            row, self._segments.get(int(segment)) if segment is not None else None, self.section, **live
        )

    def get(self, user_id: str, shown_id: str | None = None) -> ProfileRecord:
        """The profile of ``user_id``; :class:`NotFoundError` (naming ``shown_id``, the id
        the caller used) when there is none."""
        row = self._rows.get(user_id)
        if row is None:
            raise NotFoundError("user", shown_id if shown_id is not None else user_id)
        return self.record(self.frame.row(row, named=True))


def read_profiles(path: Path, manifest: dict[str, Any]) -> pl.DataFrame:
    """The profile table of the (already verified) bundle at ``path``.

    Raises :class:`FeatureUnavailableError` when the bundle has no profiles and
    :class:`BundleError` when its profile file cannot be read.
    """
    if PROFILES_FILE not in manifest.get("files", {}) or "profiles" not in manifest:
        raise FeatureUnavailableError(
            "the bundle has no member profiles (built before profiles existed or with "
            "profiles.enabled = false); retrain it to serve profiles"
        )
    file = Path(path) / PROFILES_FILE
    try:
        return pl.read_parquet(file)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise BundleError(f"{file}: unreadable: {exc}") from exc
