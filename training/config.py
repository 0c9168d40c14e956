"""The one typed configuration of training.

Defaults live in the dataclasses below. A TOML file may override any of them, and
``--set section.key=value`` flags override the file. Unknown sections or keys, and
values of the wrong type, are errors that name the key. The resolved configuration is
logged with every run and written into every bundle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from serving.bundle.index_options import IndexOptions
from serving.profiles.options import ProfileOptions

IndexConfig = IndexOptions
"""The ``[index]`` section (index type, calibration target and ladders). Declared in
:mod:`serving.bundle.index_options`, because the serving-side index builder uses the same
defaults and ``serving`` never imports ``training``; validated by :func:`validate`."""

ProfilesConfig = ProfileOptions
"""The ``[profiles]`` section (member profiles, RFM, lifecycle thresholds, embedding
segments, churn model). Declared in :mod:`serving.profiles.options` for the same reason."""


CLOSED_FORM_OBJECTIVES = ("linear", "mf")
"""Objectives fitted in closed form (one step, no training loop): nothing to time or schedule."""


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    """How raw inputs become features."""

    history_length: int = 50
    """Most recent items that make up a user's history (training windows and serving)."""
    min_count: int = 2
    """Attribute values seen fewer times than this map to the out-of-vocabulary bucket."""
    max_list_length: int = 16
    """Multi-valued attributes (genres, tags) keep at most this many values."""
    near_unique_ratio: float = 0.9
    """String columns whose distinct/rows ratio exceeds this are free text or identifiers: dropped."""
    personal_columns: tuple[str, ...] = (
        "name",
        "first_name",
        "last_name",
        "full_name",
        "email",
        "e_mail",
        "mail",
        "phone",
        "phone_number",
        "mobile",
        "telephone",
        "address",
        "street",
        "street_address",
        "zip",
        "zip_code",
        "zipcode",
        "postal_code",
        "postcode",
        "ip",
        "ip_address",
        "ssn",
        "passport",
        "birth_date",
        "date_of_birth",
        "dob",
        "credit_card",
        "iban",
    )
    """Column names (case-insensitive) treated as personal data and never used as features."""
    exclude_abnormal: bool = False
    """Drop every interaction of the members flagged for abnormal behaviour (bot-like bursts,
    impossible pace, fake orders, returns, shared hashes, IsolationForest outliers; thresholds in
    ``[profiles]``, see :mod:`training.profiles.anomaly`) from the model's training data. Their
    profiles are still built, with the flag and its reasons. Default ``false``: the model sees
    all the data, as before; campaign lists leave flagged members out either way.
    """


@dataclass(frozen=True)
class ModelConfig:
    """Two-tower architecture. Serving reads these from the bundle, never from here."""

    embedding_dim: int = 64
    hidden_dims: tuple[int, ...] = (256,)
    output_dim: int = 64
    dropout: float = 0.1
    temperature: float = 0.1
    history_encoder: Literal["mean", "attention", "causal"] = "mean"
    """``mean`` (masked mean), ``attention`` (a bidirectional transformer layer, then the mean) or
    ``causal`` (a causal transformer layer read at the last position, SASRec-style). The sequence
    objectives need an encoder with an every-position form: ``mean`` or ``causal``."""
    user_id_embedding: bool = True
    """The user tower embeds the user id; False: a user is their history and attributes only."""
    shared_history_embedding: bool = True
    """History items share the item tower's id embedding table (False: a table of their own)."""
    history_decay: float = 0.0
    """``mean`` encoder: the item ``a`` places before the most recent weighs ``exp(-history_decay * a)``
    (0: a plain mean). The sequence objectives need 0."""
    id_dropout: float = 0.05
    """Probability of replacing a user/item id by the unknown bucket while training, so
    that cold users and items still get meaningful embeddings from their attributes."""
    head: Literal["mlp", "tied"] = "mlp"
    """``mlp``: each tower ends in an MLP with unit outputs, scored by cosine / ``temperature``.
    ``tied`` (SASRec): the causal encoder's last state against the shared item-id table by raw inner
    product (no MLP, no user-id table, no temperature; ``hidden_dims`` and ``output_dim`` do not apply:
    the served vectors are ``embedding_dim + 1`` wide, see :mod:`serving.model.towers`)."""
    sequence_layers: int = 1
    """Transformer blocks of the ``attention`` and ``causal`` encoders."""
    embedding_dropout: float = 0.0
    """Dropout on the history's item + position embeddings before the transformer blocks."""
    item_attributes: bool = True
    """``tied`` head: item vector = id row + mean of its attribute rows (False: the id row alone)."""


@dataclass(frozen=True)
class TrainConfig:
    objective: Literal["auto", "interaction", "sequence", "bag", "mixed", "linear", "mf", "elsa"] = "auto"
    """What the model learns from (:mod:`training.fit.trainer` runs it):

    * ``interaction``: one example per interaction (history before it, in-batch + uniform
      negatives with logQ correction, ``others_history_share``);
    * ``sequence``: one pass per user window, the next item predicted at every position;
    * ``bag``: the user's items with ``bag_dropout`` of them hidden, the hidden ones predicted;
    * ``mixed``: ``(1 - bag_weight) * sequence + bag_weight * bag`` on the same windows;
    * ``linear``: the closed-form item-item model (EASE or SLIST: ``linear_model``) written into linear towers
      (:mod:`training.fit.linear.linear_task`; the towers' width is the kept rank + 1, see
      ``linear_tower_rank``; the ``[model]`` dimensions do not apply);
    * ``mf``: implicit-feedback matrix factorisation (iALS) written into linear towers, the user
      folded in from the history (:mod:`training.fit.linear.factor_task`; ``mf_factors + 1`` wide);
    * ``elsa``: the low-rank linear item-item model (ELSA) trained by mini-batches of users and
      written into linear towers (:mod:`training.fit.linear.elsa_task`; ``elsa_rank`` wide, memory
      items x rank: the scalable counterpart of ``linear``);
    * ``auto``: each candidate of :data:`training.fit.auto.CANDIDATES` (bag, interaction, SASRec,
      linear, mf, ELSA) on a validation split carved from the training data by the evaluation protocol:
      the iterative ones for ``auto_probe_epochs`` epochs, then the leading one of each family
      (next-item sequence models; set models) to early stopping;
      the best is refitted on all the training data and written to the manifest."""
    linear_model: Literal["ease", "slist"] = "ease"
    """``linear``: which closed form fills the item x item weights.

    * ``ease``: EASE (Steck 2019): the user's items reconstructed from the same items, ridge
      ``linear_l2``, zero diagonal; the strongest closed form on bag-of-items data;
    * ``slist``: SLIST (Choi et al. 2021, :mod:`training.fit.linear.slist`): EASE-like user rows mixed with
      a regression of every recency-weighted prefix of a user's sequence onto the items that follow
      it ("what next"), ``slist_alpha``, ``slist_decay``, ``slist_l2``.

    Both go through the same factorisation and towers, so serving is the same."""
    linear_l2: float = 500.0
    """``linear`` with ``ease``: the ridge ``lambda`` of the closed form (Steck's range is 100-1000)."""
    slist_alpha: float = 0.5
    """``linear`` with ``slist``: weight of the whole-user rows (SLIS) against the prefix -> next
    rows (SLIT, ``1 - slist_alpha``); 1 is a user-row ridge, 0 pure next-item regression."""
    slist_decay: float = 0.5
    """``linear`` with ``slist``: training rows weigh the item ``j`` places before the prefix's end,
    and the target ``j`` places after the next one, ``exp(-slist_decay * j)`` (0: all alike). The
    served decay is ``model.history_decay``, so one fit serves several."""
    slist_l2: float = 10.0
    """``linear`` with ``slist``: the ridge of the closed form; its rows are l1-normalised, so it is
    on another scale than ``linear_l2``."""
    linear_rank: int = 2048
    """``linear``: rank of the factorised item-item weights (exact for smaller catalogues). The
    towers are ``linear_tower_rank`` (or this) wide plus one."""
    linear_tower_rank: int = 0
    """``linear``: how many of the factorisation's leading components the towers keep (every served
    vector is this wide plus one: index search, explanations and re-ranking cost grow with it).
    0: chosen on the validation split, as the narrowest of 32, 64, 128, ... (below ``linear_rank``)
    whose validation NDCG@k keeps ``linear_rank_keep`` of the full factorisation's, and written here
    in the resolved configuration of the bundle; ``linear_rank`` without a validation split."""
    linear_rank_keep: float = 0.99
    """``linear``: share of the full factorisation's validation NDCG@k the chosen tower rank keeps
    (1: the narrowest rank that loses nothing measurable)."""
    linear_max_items: int = 30_000
    """``linear``: larger catalogues are refused (the closed form holds an items x items matrix:
    3.4 GiB at 30,000 items); ``auto`` skips the candidate above it."""
    elsa_rank: int = 256
    """``elsa``: columns of the item matrix ``A`` (the towers' width)."""
    elsa_batch_size: int = 0
    """``elsa``: users per step; 0: a sixteenth of the training users (16 steps an epoch), but at
    least 128 and at most 1,024 (:func:`training.fit.linear.elsa_task.elsa_batch_size`). A step costs
    ``items x rank^2`` (the Gram matrix, Adam over ``A``) whatever its size, so large data wants large
    steps (Beauty: 3.0 s an epoch at 1,024 against 10.2 s at 128, validation NDCG 0.0547 against
    0.0540); data under 2,048 users keeps the 128 users a step it always had."""
    mf_factors: int = 32
    """``mf``: factors of the iALS fit (the towers are one wider)."""
    mf_regularization: float = 10.0
    """``mf``: the ridge on the factors, scaled per row by ``(its count + the other side's size) **
    mf_regularization_exponent`` (frequency-scaled, google-research/ials)."""
    mf_regularization_exponent: float = 0.0
    """``mf``: the exponent of the frequency scaling of ``mf_regularization`` (0: one fixed ridge, as
    ``implicit``; 1: proportional to the row's share of the loss). The fixed ridge of 10 is the
    default because it measured best or near it on every dev pair (validation NDCG@10; Beauty llo
    0.0245 vs 0.0020 for 0.01 at exponent 1, ml-100k time 0.1851 vs 0.1831, ml-100k rand 0.2524 vs
    0.2588; docs/benchmarks/issue-22-catalogue-scale.md); the scaled ridge keeps tiny catalogues apart
    (60 items), where a fixed 10 collapses the factors to one popularity direction."""
    bag_weight: float = 0.5
    """Weight of the bag loss in ``mixed`` (0: pure sequence, 1: pure bag)."""
    bag_dropout: float = 0.5
    """Share of a user's items hidden from the history in the bag objective."""
    window_batch_size: int = 128
    """User windows per step in the sequence, bag and mixed objectives."""
    patience: int = 3
    """Epochs without improvement on the validation split before the learning rate is cut (x0.25);
    after ``lr_cuts`` cuts the next plateau stops training and the best epoch's weights are kept.
    0: no validation, ``epochs`` epochs of a one-cycle schedule."""
    lr_cuts: int = 2
    """Learning-rate cuts at validation plateaus before training stops."""
    auto_probe_epochs: int = 3
    """``objective = auto``: epochs every iterative candidate trains before the comparison (a closed
    form is done after its one fit); the leading iterative one of each family (next-item sequence
    models, set models) then trains on to early stopping."""
    auto_blend: bool = True
    """``objective = auto``: also try the best candidate blended with each of the next two (score =
    a * s1 + b * s2, itself a two-tower model; :mod:`training.fit.blend`), kept only where it beats the
    best by more than noise on validation users its weight was not chosen on."""
    auto_guard_keep: float = 0.95
    """``objective = auto`` with a leave-last-out or random validation split: a quarter of the
    validation users (at most 4,000) are held out in the *other* shape of future ("what else" for
    next-item validation and the reverse), and only models keeping this share of the best baseline's
    NDCG there (EASE, iALS, ELSA; within noise) can be chosen (:mod:`training.fit.guard`; 0: off).
    0.95 on the guard's quarter of the users lands at >= 0.9x on a held-out future (ml-100k: a blend
    at 0.87x of EASE on the guard scored 0.82x on the test, one at 0.92x scored 0.90x)."""
    auto_max_s: float = 600.0
    """``objective = auto``: at most this many seconds for each leading iterative candidate's run to
    early stopping after the probe (whole epochs; 0: no limit). It binds only where an epoch is slow
    (large data on a CPU); the manifest says whether each leader converged."""
    epochs: int = 100
    """At most this many epochs with a validation split (early stopping usually ends sooner);
    exactly this many with ``patience = 0``."""
    batch_size: int = 512
    learning_rate: float = 5e-3
    weight_decay: float = 1e-6
    adam_beta2: float = 0.999
    """AdamW's second-moment decay (beta1 is 0.9); SASRec trains with 0.98."""
    row_weighted_loss: bool = False
    """Sequence objectives: a step's next-item loss counts in proportion to its target rows (every
    position weighs the same) instead of as one mean per step (a position in a step of short
    windows then weighs up to ``history_length`` times one in a step of long windows)."""
    validation_users: int = 8000
    """At most this many validation users (a seeded sample) are ranked after each epoch for early
    stopping; 0: every validation user."""
    logq_correction: bool = True
    uniform_negatives: int = 2048
    """Uniformly sampled negatives per step in addition to the in-batch ones (mixed
    negative sampling). At or above the catalogue size the loss is the exact softmax
    over every item; 0 uses in-batch negatives only."""
    others_history_share: float = 0.25
    """Share of training examples whose history is a random sample of the user's other
    items (any time) instead of the items just before the target. 0 trains only "what
    comes next"; more whole-taste examples help random and time splits and hurt sequential
    e-commerce data (docs/benchmarks/2026-11-23-previous-defaults.md, "One knob"): 0.25 is the
    setting with the smallest worst-case shortfall against the best baseline over the
    four measured data set / protocol pairs."""
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    """Forward passes and loss under bf16 autocast (weights and optimizer stay fp32). Pays on
    GPUs with bf16 tensor cores; on a CPU it is usually slower than fp32."""
    refit_full: bool = True
    """After evaluation, train again on every interaction so the bundle knows all of them."""
    concurrent_refit: Literal["auto", "on", "off"] = "auto"
    """With ``refit_full`` on a CPU with >= 2 cores: train the refit in a child process beside the
    evaluation fit, half the cores each (:mod:`training.fit.refit`). ``auto``: when the fit is predicted
    to take at least a minute and the data has at most 20M interactions; ``on``: whenever it can;
    ``off``: one after the other."""
    progress: bool = True


@dataclass(frozen=True)
class EvalConfig:
    protocol: Literal["llo", "rand", "time", "none"] = "llo"
    k: int = 10
    min_interactions: int = 3


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    tracking_uri: str = ""
    """Empty: $MLFLOW_TRACKING_URI if set, else the embedded SQLite store under ``mlflow/``."""
    experiment: str = "recsys-two-tower"
    registered_model: str = "recsys-two-tower"


@dataclass(frozen=True)
class PrivacyConfig:
    """Pseudonymous user ids (see :mod:`serving.pseudonym`)."""

    pseudonymise_user_ids: bool = False
    """Replace every user id by HMAC-SHA256(key, id) at ingest, so the bundle, the profiles
    and the event log hold only pseudonyms; serving hashes request ids with the same key."""
    key_env: str = "RECSYS_ID_KEY"
    """Environment variable holding the key (at least 16 bytes; never written anywhere)."""


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    profiles: ProfilesConfig = field(default_factory=ProfilesConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/TOML-serialisable form (tuples become lists)."""
        data: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    """Check ``value`` against the field's type; convert lists to tuples. Raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: must be a list, got {type(value).__name__}")
        return tuple(_coerce(f"{key}[{i}]", item_type, item) for i, item in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{key}: unsupported type")  # no optional fields in this config
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def _apply(section_obj: Any, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(type(section_obj))
    known = {f.name for f in dataclasses.fields(section_obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(sorted(known))})")
        changes[key] = _coerce(f"{section}.{key}", hints[key], value)
    return dataclasses.replace(section_obj, **changes)


def merge(config: Config, overrides: dict[str, Any], *, check: bool = True) -> Config:
    """Return ``config`` with a nested ``{section: {key: value}}`` mapping applied (types checked;
    ranges and combinations too unless ``check`` is False, for a caller applying several
    overrides whose combination only the last makes valid)."""
    sections = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for section, values in overrides.items():
        if section not in sections:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(sorted(sections))})")
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a table of keys")
        changes[section] = _apply(getattr(config, section), section, values)
    resolved = dataclasses.replace(config, **changes)
    if check:
        validate(resolved)
    return resolved


def parse_override(text: str) -> dict[str, Any]:
    """``"train.epochs=5"`` -> ``{"train": {"epochs": 5}}``; the value is parsed as TOML."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare words are strings: --set eval.protocol=llo
    return {section: {key: value}}


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file at ``path``, then each ``section.key=value`` override."""
    config = Config()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path}: not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc
        config = merge(config, data, check=False)
    for text in overrides or []:
        config = merge(config, parse_override(text), check=False)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Range checks that types alone cannot express."""
    checks: list[tuple[bool, str]] = [
        (config.data.history_length >= 1, "data.history_length: must be >= 1"),
        (config.data.min_count >= 1, "data.min_count: must be >= 1"),
        (config.data.max_list_length >= 1, "data.max_list_length: must be >= 1"),
        (0 < config.data.near_unique_ratio <= 1, "data.near_unique_ratio: must be in (0, 1]"),
        (config.model.embedding_dim >= 1, "model.embedding_dim: must be >= 1"),
        (config.model.output_dim >= 1, "model.output_dim: must be >= 1"),
        (all(h >= 1 for h in config.model.hidden_dims), "model.hidden_dims: entries must be >= 1"),
        (0 <= config.model.dropout < 1, "model.dropout: must be in [0, 1)"),
        (0 <= config.model.id_dropout < 1, "model.id_dropout: must be in [0, 1)"),
        (config.model.temperature > 0, "model.temperature: must be > 0"),
        (config.model.sequence_layers >= 1, "model.sequence_layers: must be >= 1"),
        (0 <= config.model.embedding_dropout < 1, "model.embedding_dropout: must be in [0, 1)"),
        (
            config.model.head == "mlp"
            or (
                config.model.history_encoder == "causal"
                and not config.model.user_id_embedding
                and config.model.shared_history_embedding
                and config.train.objective in ("auto", "sequence", "bag", "mixed", "interaction")
            ),
            "model.head: 'tied' needs model.history_encoder = 'causal', model.user_id_embedding = false, "
            "model.shared_history_embedding = true and a trained objective (not linear or mf)",
        ),
        (0 < config.train.adam_beta2 < 1, "train.adam_beta2: must be in (0, 1)"),
        (config.train.validation_users >= 0, "train.validation_users: must be >= 0 (0: all)"),
        (config.train.epochs >= 1, "train.epochs: must be >= 1"),
        (config.train.batch_size >= 2, "train.batch_size: must be >= 2"),
        (
            config.train.learning_rate > 0 and math.isfinite(config.train.learning_rate),
            "train.learning_rate: must be a finite number > 0",
        ),
        (
            config.train.weight_decay >= 0 and math.isfinite(config.train.weight_decay),
            "train.weight_decay: must be a finite number >= 0",
        ),
        (config.eval.k >= 1, "eval.k: must be >= 1"),
        (config.train.uniform_negatives >= 0, "train.uniform_negatives: must be >= 0"),
        (0 <= config.train.bag_weight <= 1, "train.bag_weight: must be in [0, 1]"),
        (0 < config.train.bag_dropout < 1, "train.bag_dropout: must be in (0, 1)"),
        (config.train.window_batch_size >= 1, "train.window_batch_size: must be >= 1"),
        (config.train.patience >= 0, "train.patience: must be >= 0"),
        (config.train.lr_cuts >= 0, "train.lr_cuts: must be >= 0"),
        (config.train.auto_probe_epochs >= 1, "train.auto_probe_epochs: must be >= 1"),
        (0 <= config.train.auto_guard_keep <= 1, "train.auto_guard_keep: must be in [0, 1] (0: off)"),
        (
            config.train.auto_max_s >= 0 and math.isfinite(config.train.auto_max_s),
            "train.auto_max_s: must be a finite number >= 0 (0: no limit)",
        ),
        (config.train.linear_l2 > 0, "train.linear_l2: must be > 0"),
        (
            config.train.linear_model in ("ease", "slist"),
            f"train.linear_model: must be 'ease' or 'slist', got {config.train.linear_model!r}",
        ),
        (0 <= config.train.slist_alpha <= 1, "train.slist_alpha: must be in [0, 1]"),
        (
            config.train.slist_decay >= 0 and math.isfinite(config.train.slist_decay),
            "train.slist_decay: must be a finite number >= 0",
        ),
        (
            config.train.slist_l2 > 0 and math.isfinite(config.train.slist_l2),
            "train.slist_l2: must be a finite number > 0",
        ),
        (config.train.linear_rank >= 1, "train.linear_rank: must be >= 1"),
        (config.train.linear_tower_rank >= 0, "train.linear_tower_rank: must be >= 0 (0: chosen)"),
        (0 < config.train.linear_rank_keep <= 1, "train.linear_rank_keep: must be in (0, 1]"),
        (config.train.linear_max_items >= 1, "train.linear_max_items: must be >= 1"),
        (config.train.elsa_rank >= 1, "train.elsa_rank: must be >= 1"),
        (config.train.elsa_batch_size >= 0, "train.elsa_batch_size: must be >= 0 (0: from the data)"),
        (config.train.mf_factors >= 1, "train.mf_factors: must be >= 1"),
        (
            config.train.mf_regularization >= 0 and math.isfinite(config.train.mf_regularization),
            "train.mf_regularization: must be a finite number >= 0",
        ),
        (
            0 <= config.train.mf_regularization_exponent <= 2,
            "train.mf_regularization_exponent: must be in [0, 2]",
        ),
        (
            config.train.objective in ("auto", "interaction", "bag", "linear", "mf", "elsa")
            or config.model.history_encoder in ("mean", "causal"),
            "model.history_encoder: the sequence and mixed objectives need 'mean' or 'causal'",
        ),
        (0 <= config.train.others_history_share <= 1, "train.others_history_share: must be in [0, 1]"),
        (
            config.model.history_decay >= 0 and math.isfinite(config.model.history_decay),
            "model.history_decay: must be a finite number >= 0",
        ),
        (
            config.model.history_decay == 0
            or (
                config.model.history_encoder == "mean"
                and config.train.objective in ("auto", "interaction", "bag", "linear", "mf", "elsa")
            ),
            "model.history_decay: needs model.history_encoder = 'mean' and an objective without "
            "every-position training (interaction, bag, linear, mf, elsa)",
        ),
        (
            config.privacy.key_env.isidentifier(),
            "privacy.key_env: must be an environment variable name (letters, digits, _)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    index_problems = config.index.problems()
    if index_problems:
        raise ConfigError(index_problems[0])
    profile_problems = config.profiles.problems()
    if profile_problems:
        raise ConfigError(profile_problems[0])


def to_toml(config: Config) -> str:
    """Render a config as TOML that :func:`load_config` reads back to an equal config."""
    lines: list[str] = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
