"""String -> index vocabularies with reserved padding and out-of-vocabulary buckets."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl

PAD_INDEX = 0
"""Index of "no value" in multi-valued fields and history sequences (embedding is zero)."""
OOV_INDEX = 1
"""Index of unknown, rare or missing values."""
FIRST_TOKEN_INDEX = 2

# Below this many values a dict lookup beats building Polars' hash table over the whole
# vocabulary (measured: one row against 1M tokens takes ~180 ms with replace_strict).
_DICT_LOOKUP_MAX = 256
# Above this many tokens, single look-ups go through sorted hashes (12-16 B per token)
# instead of a dict (~140 B per token: a str, an int and a slot each; 1.4 GB at 10M items).
_DICT_MAX_TOKENS = 100_000
_HASH_CHUNK = 1_000_000
_Default = TypeVar("_Default", int, None)
_token_hash = hash  # a module attribute so that a test can force collisions


class Vocabulary:
    """An ordered set of tokens; token ``tokens[i]`` has index ``i + FIRST_TOKEN_INDEX``.

    :meth:`encode` is the single encoding implementation for big training frames and
    one-row serving requests; it picks the faster of two equivalent lookups by size.
    """

    def __init__(self, tokens: pl.Series) -> None:
        # One chunk: ``tokens[i]`` is then O(1), which the hashed look-up relies on.
        self.tokens = tokens.cast(pl.Utf8).rename("token").rechunk()
        if self.tokens.null_count() or self.tokens.is_duplicated().any():
            raise ValueError("vocabulary tokens must be unique and non-null")
        self._indices = pl.Series(
            "index", np.arange(FIRST_TOKEN_INDEX, FIRST_TOKEN_INDEX + len(self.tokens), dtype=np.int64)
        )
        self._lookup: dict[str, int] | _HashedTokens | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def cardinality(self) -> int:
        """Embedding rows needed: tokens plus the padding and OOV buckets."""
        return len(self.tokens) + FIRST_TOKEN_INDEX

    def token(self, index: int) -> str:
        return str(self.tokens[index - FIRST_TOKEN_INDEX])

    def _dict(self) -> dict[str, int] | _HashedTokens:
        """The single-token look-up, built on first use (training never needs it)."""
        if self._lookup is None:
            if len(self.tokens) > _DICT_MAX_TOKENS:
                self._lookup = _HashedTokens(self.tokens)
            else:
                self._lookup = {tok: i + FIRST_TOKEN_INDEX for i, tok in enumerate(self.tokens.to_list())}
        return self._lookup

    def expr(self, column: pl.Expr) -> pl.Expr:
        """Polars expression mapping a string column to indices (unknown/null -> OOV)."""
        return column.cast(pl.Utf8).replace_strict(
            self.tokens, self._indices, default=OOV_INDEX, return_dtype=pl.Int64
        )

    def encode(self, values: pl.Series) -> npt.NDArray[np.int64]:
        """Indices for ``values``; unknown and null map to :data:`OOV_INDEX`."""
        if len(values) == len(self.tokens) and len(values) > _DICT_LOOKUP_MAX:
            # Encoding the vocabulary's own table (bundle load, training tables) is common and
            # costs seconds at a million ids through the hash path; a compare is milliseconds.
            as_text = values.cast(pl.Utf8)
            if as_text.null_count() == 0 and as_text.equals(self.tokens, check_names=False):
                return np.arange(FIRST_TOKEN_INDEX, FIRST_TOKEN_INDEX + len(values), dtype=np.int64)
        if len(values) <= _DICT_LOOKUP_MAX:
            lookup = self._dict()
            return np.fromiter(
                (
                    OOV_INDEX if v is None else lookup.get(v, OOV_INDEX)
                    for v in values.cast(pl.Utf8).to_list()
                ),
                dtype=np.int64,
                count=len(values),
            )
        return values.to_frame("v").select(self.expr(pl.col("v"))).to_series().to_numpy().astype(np.int64)

    def index_of(self, token: str) -> int | None:
        """Index of ``token`` or None when it is not in the vocabulary."""
        return self._dict().get(token, None)


class _HashedTokens:
    """``token -> index`` over a big vocabulary without a Python object per token.

    Holds the tokens' hashes sorted and, for each, its position: 16 bytes per token
    (12 below 2**31 tokens) instead of a dict's ~140. A look-up hashes the token, binary
    searches, and compares the token at each position with that hash (collisions of the
    64-bit hash are possible, so a hit is always confirmed). Python's own ``hash`` is the
    hash: salted per process, which is fine, because the table is built in the process that
    queries it, and a single token hashes in nanoseconds (a Polars hash of a one-row Series
    costs ~50 us). The same ``get`` interface as the dict it replaces.
    """

    def __init__(self, tokens: pl.Series) -> None:
        self._tokens = tokens
        hashes = np.empty(len(tokens), dtype=np.int64)
        for start in range(0, len(tokens), _HASH_CHUNK):  # bounded temporary str objects
            chunk = tokens.slice(start, _HASH_CHUNK).to_list()
            hashes[start : start + len(chunk)] = np.fromiter(map(_token_hash, chunk), np.int64, len(chunk))
        position_type = np.int32 if len(tokens) < 2**31 else np.int64
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._positions = order.astype(position_type)

    def get(self, token: str, default: _Default) -> int | _Default:
        key = _token_hash(token)
        hashes = self._hashes
        at = int(hashes.searchsorted(key))
        while at < len(hashes) and hashes[at] == key:
            position = int(self._positions[at])
            if self._tokens[position] == token:
                return position + FIRST_TOKEN_INDEX
            at += 1
        return default
