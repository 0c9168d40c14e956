"""A/B experiments: which variant (a model plus serving options) answers which user.

The experiments file (TOML, ``recsys serve --experiments FILE``)::

    [experiments.home_feed]
    salt = "home-feed-2026-11"          # change it to reshuffle every user
    description = "two-tower vs popularity on the home page"   # optional

    [experiments.home_feed.variants.control]
    model = "models:/recsys-two-tower@champion"   # or models:/NAME/VERSION, or a bundle dir
    share = 50                                    # percent of users (0..100, 2 decimals)

    [experiments.home_feed.variants.popular]
    model = "models:/recsys-two-tower@champion"
    share = 50
    strategy = "popularity"                       # "model" (default) | "popularity"
    diversity = { mmr_lambda = 0.7, max_per_category = 3 }   # optional default re-ranking

Every variant has a ``model`` reference (:mod:`serving.lifecycle.model_ref`; a relative bundle
path is relative to the experiments file's folder), a ``share`` in percent and serving
options: ``strategy`` (``model``: the two-tower model answers; ``popularity``: the
bundle's most popular items for every user, seen, recent and excluded items still
left out, filters, MMR and the category cap still applied) and ``diversity`` (``mmr_lambda``,
``max_per_category``, ``category_attribute``, as in ``recsys.v1.Diversity``), used when
a request asks for no diversity itself. Shares must add up to exactly 100; a variant
with share 0 gets no traffic but can be forced (``force_variant``) for QA.

Assignment (:func:`assign_variant`, pure): SHA-256 of ``salt + NUL + user_id``, first 8
bytes big-endian modulo 10,000 -> a bucket; variants own consecutive bucket ranges in
file order, each ``share * 100`` buckets wide. A user keeps the same variant as long as
the salt, the variants' order and their shares stay the same, across calls, reloads,
restarts and server processes.

Parsing (:func:`parse_experiments`) checks syntax, unknown keys, types, ranges, names
and shares; every error names the file, the experiment, the variant and the problem
(:class:`ExperimentConfigError`). Whether the referenced models exist and load is
checked by whoever loads them (:mod:`serving.lifecycle.live_models`), before a config is used.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from serving.errors import RecsysError
from serving.lifecycle.model_ref import parse_model_ref
from serving.recommend.types import NO_DIVERSITY, Diversity

BUCKETS = 10_000
"""Assignment buckets; a share of 1 % is 100 buckets (shares have at most 2 decimals)."""

Strategy = Literal["model", "popularity"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_EXPERIMENT_KEYS = frozenset({"salt", "description", "variants"})
_VARIANT_KEYS = frozenset({"model", "share", "strategy", "diversity", "description"})
_DIVERSITY_KEYS = frozenset({"mmr_lambda", "max_per_category", "category_attribute"})


class ExperimentConfigError(RecsysError, ValueError):
    """An experiments file is invalid; the message names the file, experiment, variant and problem."""


@dataclass(frozen=True, slots=True)
class VariantOptions:
    """How a variant answers besides its model.

    ``strategy``: ``"model"`` (the two-tower model) or ``"popularity"`` (most popular
    eligible items for every user). ``diversity``: re-ranking used when the request sets
    none (:data:`~serving.recommend.types.NO_DIVERSITY`: none).
    """

    strategy: Strategy = "model"
    diversity: Diversity = NO_DIVERSITY


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of an experiment. ``model``: canonical model reference text
    (:attr:`serving.lifecycle.model_ref.ModelRef.text`); ``share_bp``: share in basis points
    (1/100 percent, so the shares of an experiment add up to :data:`BUCKETS`)."""

    name: str
    model: str
    share_bp: int
    options: VariantOptions = field(default_factory=VariantOptions)

    @property
    def share_percent(self) -> float:
        return self.share_bp / 100


@dataclass(frozen=True, slots=True)
class Experiment:
    """A named experiment: a salt and variants in file order (shares add up to 100 %)."""

    name: str
    salt: str
    variants: tuple[Variant, ...]
    description: str = ""

    def variant(self, name: str) -> Variant | None:
        """The variant called ``name``, or None."""
        for variant in self.variants:
            if variant.name == name:
                return variant
        return None

    def assign(self, user_id: str) -> Variant:
        """The variant ``user_id`` is assigned to (see :func:`assign_variant`)."""
        return assign_variant(user_id, self.salt, self.variants)


def _no_experiments() -> Mapping[str, Experiment]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ExperimentSet:
    """A parsed experiments file. ``digest``: SHA-256 of its bytes (empty for no file)."""

    experiments: Mapping[str, Experiment] = field(default_factory=_no_experiments)
    source: str = ""
    digest: str = ""

    def model_refs(self) -> frozenset[str]:
        """Every model reference a variant names (canonical text)."""
        return frozenset(v.model for e in self.experiments.values() for v in e.variants)


NO_EXPERIMENTS = ExperimentSet()


# ------------------------------------------------------------------ assignment
def bucket_of(user_id: str, salt: str) -> int:
    """The user's bucket in ``0..BUCKETS-1``: SHA-256 of ``salt``, NUL, ``user_id`` (UTF-8).

    Deterministic across processes and Python versions (``hash()`` is not: it is salted
    per process). The NUL keeps ("ab", "c") and ("a", "bc") apart.
    """
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign_variant(user_id: str, salt: str, variants: Sequence[Variant]) -> Variant:
    """The variant whose cumulative bucket range holds :func:`bucket_of` ``(user_id, salt)``.

    ``variants`` in file order with shares adding up to :data:`BUCKETS` basis points
    (as :func:`parse_experiments` guarantees); raises :class:`ValueError` otherwise.
    """
    total = sum(v.share_bp for v in variants)
    if total != BUCKETS:
        raise ValueError(f"variant shares add up to {total} basis points, not {BUCKETS}")
    bucket = bucket_of(user_id, salt)
    upper = 0
    for variant in variants:
        upper += variant.share_bp
        if bucket < upper:
            return variant
    raise AssertionError("unreachable: shares cover every bucket")  # pragma: no cover


# --------------------------------------------------------------------- parsing
def load_experiments(path: Path) -> ExperimentSet:
    """Read and parse the experiments file at ``path``; raises :class:`ExperimentConfigError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExperimentConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_experiments(data, path)


def parse_experiments(data: bytes, source: Path) -> ExperimentSet:
    """Parse the bytes of an experiments file read from ``source`` (see the module docstring).

    Relative bundle paths are resolved against ``source``'s folder. Raises
    :class:`ExperimentConfigError` naming the file, the experiment, the variant and the
    problem; an empty (or whitespace-only) file is refused too, so that reading a file
    mid-rewrite never ends every experiment. A file of comments or an empty
    ``[experiments]`` table is the way to say "no experiments".
    """
    where = str(source)
    if not data.strip():
        # What a file rewritten in place reads like half-way: refusing it keeps the running
        # experiments instead of silently ending them all.
        raise ExperimentConfigError(
            f"{where}: empty file (a file rewritten in place reads empty half-way); to run no"
            " experiment, write a file that says so, e.g. an empty [experiments] table"
        )
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ExperimentConfigError(f"{where}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentConfigError(f"{where}: invalid TOML: {exc}") from exc
    _unknown_keys(document, frozenset({"experiments"}), where)
    tables = document.get("experiments", {})
    if not isinstance(tables, dict):
        raise ExperimentConfigError(f"{where}: experiments: must be a table of experiments")
    experiments: dict[str, Experiment] = {}
    for name, table in tables.items():
        experiments[name] = _experiment(name, table, Path(source).parent, f"{where}: experiment {name!r}")
    return ExperimentSet(MappingProxyType(experiments), where, experiments_digest(data))


def experiments_digest(data: bytes) -> str:
    """The identity of an experiments file's content: a reload compares it with
    :attr:`ExperimentSet.digest` to skip unchanged files. An empty file has one too (never the
    ``""`` of "no file"), so that reading one mid-rewrite is parsed, refused and counted."""
    return hashlib.sha256(data).hexdigest()


def _experiment(name: str, table: Any, base_dir: Path, where: str) -> Experiment:
    _check_name(name, where)
    if not isinstance(table, dict):
        raise ExperimentConfigError(f"{where}: must be a table (salt, variants)")
    _unknown_keys(table, _EXPERIMENT_KEYS, where)
    salt = table.get("salt")
    if not isinstance(salt, str) or not salt:
        raise ExperimentConfigError(f"{where}: salt: required, a non-empty string")
    description = _string(table, "description", where)
    variant_tables = table.get("variants")
    if not isinstance(variant_tables, dict) or not variant_tables:
        raise ExperimentConfigError(
            f"{where}: variants: required, at least one [experiments.{name}.variants.NAME] table"
        )
    variants = tuple(
        _variant(vname, vtable, base_dir, f"{where}, variant {vname!r}")
        for vname, vtable in variant_tables.items()
    )
    total = sum(v.share_bp for v in variants)
    if total != BUCKETS:
        shares = ", ".join(f"{v.name} {v.share_percent:g}" for v in variants)
        raise ExperimentConfigError(
            f"{where}: variant shares must add up to 100 percent, got {total / 100:g} ({shares})"
        )
    return Experiment(name, salt, variants, description)


def _variant(name: str, table: Any, base_dir: Path, where: str) -> Variant:
    _check_name(name, where)
    if not isinstance(table, dict):
        raise ExperimentConfigError(f"{where}: must be a table (model, share, ...)")
    _unknown_keys(table, _VARIANT_KEYS, where)
    model = table.get("model")
    if not isinstance(model, str):
        raise ExperimentConfigError(f"{where}: model: required, a bundle directory or models:/ reference")
    try:
        ref = parse_model_ref(model, base_dir)
    except ValueError as exc:
        raise ExperimentConfigError(f"{where}: model: {exc}") from exc
    strategy = table.get("strategy", "model")
    if strategy not in STRATEGIES:
        raise ExperimentConfigError(
            f"{where}: strategy: must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}"
        )
    _string(table, "description", where)
    return Variant(
        name,
        ref.text,
        _share_bp(table.get("share"), where),
        VariantOptions(strategy, _diversity(table.get("diversity"), f"{where}: diversity")),
    )


def _share_bp(share: Any, where: str) -> int:
    if isinstance(share, bool) or not isinstance(share, int | float):
        raise ExperimentConfigError(f"{where}: share: required, a number of percent (0..100)")
    if not (math.isfinite(share) and 0 <= share <= 100):
        raise ExperimentConfigError(f"{where}: share: must be in 0..100 percent, got {share}")
    basis_points = round(share * 100)
    if abs(share * 100 - basis_points) > 1e-6:
        raise ExperimentConfigError(f"{where}: share: at most 2 decimals (0.01 %), got {share}")
    return int(basis_points)


def _diversity(table: Any, where: str) -> Diversity:
    if table is None:
        return NO_DIVERSITY
    if not isinstance(table, dict):
        raise ExperimentConfigError(f"{where}: must be a table (mmr_lambda, max_per_category, ...)")
    _unknown_keys(table, _DIVERSITY_KEYS, where)
    mmr = table.get("mmr_lambda", 0.0)
    if isinstance(mmr, bool) or not isinstance(mmr, int | float) or not (mmr == 0 or 0 < mmr <= 1):
        raise ExperimentConfigError(f"{where}: mmr_lambda: must be 0 (off) or in (0, 1], got {mmr!r}")
    cap = table.get("max_per_category", 0)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise ExperimentConfigError(f"{where}: max_per_category: must be an integer >= 0, got {cap!r}")
    attribute = _string(table, "category_attribute", where)
    return Diversity(float(mmr), cap, attribute)


def _string(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ExperimentConfigError(f"{where}: {key}: must be a string, got {value!r}")
    return value


def _check_name(name: str, where: str) -> None:
    if not _NAME.fullmatch(name):
        raise ExperimentConfigError(
            f"{where}: name must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )


def _unknown_keys(table: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ExperimentConfigError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )


# ------------------------------------------------------------------ checking
@dataclass(frozen=True, slots=True)
class ShareCheck:
    """Configured vs observed share of one variant over synthetic users (percent)."""

    experiment: str
    variant: str
    configured: float
    observed: float

    @property
    def deviation(self) -> float:
        return abs(self.observed - self.configured)


def simulate_shares(experiments: ExperimentSet, users: int) -> list[ShareCheck]:
    """Assign ``users`` synthetic ids (``user-0`` ...) in every experiment and compare the
    observed shares with the configured ones (what an operator checks before a launch)."""
    if users < 1:
        raise ValueError(f"users: must be >= 1, got {users}")
    checks: list[ShareCheck] = []
    for experiment in experiments.experiments.values():
        counts = dict.fromkeys((v.name for v in experiment.variants), 0)
        for i in range(users):
            counts[experiment.assign(f"user-{i}").name] += 1
        checks.extend(
            ShareCheck(experiment.name, v.name, v.share_percent, 100 * counts[v.name] / users)
            for v in experiment.variants
        )
    return checks
