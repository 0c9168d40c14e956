"""Detection of personal-data columns, which never become features or bundle content."""

from __future__ import annotations

import re

import polars as pl

_EMAIL = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"
_PHONE = r"^\+?[0-9][0-9 ()./\-]{5,}[0-9]$"
_SAMPLE = 1000
_MATCH_SHARE = 0.5


def personal_columns(frame: pl.DataFrame, named: tuple[str, ...]) -> dict[str, str]:
    """Columns holding personal data, with the reason (never the values).

    A column is personal if its name is in ``named`` (case-insensitive, ignoring
    ``-``/spaces) or if most of a sample of its string values look like e-mail
    addresses or phone numbers.
    """
    wanted = {_normalise(name) for name in named}
    found: dict[str, str] = {}
    for column, dtype in frame.schema.items():
        if _normalise(column) in wanted:
            found[column] = "personal data (column name)"
            continue
        if dtype != pl.Utf8:
            continue
        sample = frame.get_column(column).drop_nulls().head(_SAMPLE)
        if len(sample) == 0:
            continue
        stripped = sample.str.strip_chars()
        email_share = _share(stripped.str.contains(_EMAIL))
        digits = stripped.str.count_matches(r"[0-9]")
        phone_share = _share(stripped.str.contains(_PHONE) & (digits >= 7))
        if email_share > _MATCH_SHARE:
            found[column] = "personal data (values look like e-mail addresses)"
        elif phone_share > _MATCH_SHARE:
            found[column] = "personal data (values look like phone numbers)"
    return found


def _share(matches: pl.Series) -> float:
    return float(matches.cast(pl.Float64).sum()) / max(len(matches), 1)


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())
