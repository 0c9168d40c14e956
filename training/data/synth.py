"""Synthetic e-commerce data set with learnable structure, written as the canonical input directory.

The generative story (all vectorised NumPy; deterministic for ``SynthConfig.seed``):

* Items belong to one of 12 categories, have a brand, a log-normal price and a price band
  (budget/standard/premium/luxury: the price quartile within the category). Popularity is
  Zipf-like over a random rank within each category.
* Users have gender/age/region/tier attributes. Their category affinity is a softmax over
  hand-written attribute effects (e.g. beauty leans female, toys lean 35-49, books lean 65+) plus a
  seeded regional effect plus per-user idiosyncratic noise; their price-band preference leans on
  the member tier plus noise. Activity (sessions per user) is power-law and grows with tier.
* A session picks one or two categories from the user's affinity and views items: price band
  from ``user preference × band popularity``, then an item within the band by popularity. Views
  convert down a funnel view → click → add_to_cart → purchase; clicks are likelier when the item's
  band suits the user. Funnel events follow their view by seconds to minutes, so every cart and
  purchase is preceded by a view of the same item in the same session.

Hence history (idiosyncratic category and band taste) and attributes both carry signal beyond
global popularity. Components draw from independent child seeds, so the users and items do not
change when only ``events`` changes.

Known fraud (``fraud_users`` > 0, for testing abnormal-behaviour detection): extra members
appended after the regular ones (the regular users, items and sessions do not change), half
*bots* (two to four bursts of 80-250 views at one to three seconds apart, with clicks) and half
*fake-order* accounts (5-15 purchases of expensive items with no view before them, spread
over the window). The ground truth goes to ``fraud.parquet`` (``user_id``, ``kind``), a file
training never reads.

Timestamps lie in ``[end_timestamp - days * 86400, end_timestamp)``. Whole sessions are kept, so
the event total is the whole-session total closest to ``config.events`` (a session has about 11
events on average, so the total is within a few events of the target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.storage import atomic_write_parquet

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

INTERACTIONS_FILE = "interactions.parquet"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
FRAUD_FILE = "fraud.parquet"
FRAUD_KINDS: Final = ("bot", "fake_orders")

EVENT_TYPES: Final = ("view", "click", "add_to_cart", "purchase")
GENDERS: Final = ("F", "M", "X")
REGIONS: Final = ("north", "south", "east", "west", "central")
TIERS: Final = ("bronze", "silver", "gold", "platinum")
PRICE_BANDS: Final = ("budget", "standard", "premium", "luxury")
AGE_BANDS: Final = (25, 35, 50, 65)  # upper bounds of the bands 18-24, 25-34, 35-49, 50-64; 65+ last


@dataclass(frozen=True)
class _Category:
    name: str
    mean_price: float
    catalog_share: float
    base_affinity: float
    brands: tuple[str, ...]
    tags: tuple[str, ...]


# fmt: off
_CATEGORIES: Final = (
    _Category("electronics", 180.0, 0.10, 0.4, ("Voltix", "Nordbeam", "Sonarq", "Helio", "Pixelon"),
              ("wireless", "bluetooth", "4k", "smart-home", "portable", "rechargeable")),
    _Category("computers", 650.0, 0.06, 0.0, ("Corelight", "Bytewise", "Quantix", "Lumena", "Archon"),
              ("laptop", "gaming", "ssd", "ultrabook", "usb-c", "ergonomic")),
    _Category("books", 18.0, 0.14, 0.3, ("Penfold Press", "Oakleaf", "Marlowe", "Bluequill", "Tidewater"),
              ("fiction", "thriller", "biography", "cookbook", "children", "self-help")),
    _Category("clothing", 40.0, 0.12, 0.4, ("Threadline", "Urbanwear", "Kestrel", "Monti", "Linden & Co"),
              ("cotton", "slim-fit", "outdoor", "casual", "formal", "winter")),
    _Category("shoes", 75.0, 0.06, 0.0, ("Stride", "Pacemark", "Altura", "Rivet", "Soleil"),
              ("running", "leather", "waterproof", "sneakers", "boots", "sandals")),
    _Category("beauty", 25.0, 0.08, 0.1, ("Lumiere", "Verdant", "Aurelle", "Petalis", "Glowen"),
              ("skincare", "vegan", "fragrance", "makeup", "organic", "sensitive-skin")),
    _Category("home_kitchen", 45.0, 0.12, 0.3, ("Hearthly", "Casaro", "Brightnest", "Kitchly", "Dwell"),
              ("cookware", "storage", "decor", "bedding", "stainless", "dishwasher-safe")),
    _Category("sports_outdoors", 55.0, 0.08, 0.0, ("Trailpeak", "Apexa", "Fieldcraft", "Summitry", "Kinetik"),
              ("camping", "fitness", "cycling", "yoga", "hiking", "team-sports")),
    _Category("toys_games", 30.0, 0.07, -0.1, ("Playforge", "Jumbly", "Tinkerly", "Brickwise", "Wonderloom"),
              ("puzzle", "board-game", "educational", "outdoor-play", "plush", "building")),
    _Category("grocery", 9.0, 0.07, 0.2, ("Harvest Lane", "Greenbasket", "Pantrie", "Goodgrain", "Brookfarm"),
              ("organic", "gluten-free", "snacks", "coffee", "tea", "bulk")),
    _Category("automotive", 60.0, 0.05, -0.3, ("Torqline", "Roadwise", "Gearhaus", "Motiva", "Axleon"),
              ("car-care", "tools", "lighting", "tires", "interior", "performance")),
    _Category("pet_supplies", 28.0, 0.05, -0.2, ("Pawsome", "Furrow", "Tailwind", "Whiskerly", "Barkley"),
              ("dog", "cat", "treats", "grooming", "toys", "aquarium")),
)
_GLOBAL_TAGS: Final = ("bestseller", "new-arrival", "on-sale", "eco-friendly", "limited-edition")

# Category-affinity shifts by gender (rows F, M, X) and age band (rows 18-24 ... 65+); columns in
# _CATEGORIES order. Hand-written so that the attribute → category signal is stable across seeds.
_GENDER_EFFECT: Final = np.array([
    #  elec  comp  book  clot  shoe  beau  home  sprt  toys  groc  auto  pets
    [-0.4, -0.6,  0.3,  0.6,  0.4,  1.4,  0.4, -0.2,  0.1,  0.2, -0.9,  0.2],
    [ 0.5,  0.6, -0.1, -0.2, -0.1, -1.0, -0.2,  0.4,  0.0, -0.1,  1.0, -0.1],
    [ 0.1,  0.1,  0.2,  0.2,  0.1,  0.2,  0.0,  0.0,  0.0,  0.0,  0.0,  0.1],
])
_AGE_EFFECT: Final = np.array([
    [ 0.5,  0.4, -0.2,  0.7,  0.6,  0.3, -0.6,  0.2, -0.5, -0.5, -0.3, -0.3],
    [ 0.3,  0.3, -0.1,  0.3,  0.2,  0.1,  0.3,  0.3,  0.3,  0.0,  0.0,  0.3],
    [ 0.0,  0.0,  0.0, -0.1,  0.0,  0.0,  0.5,  0.1,  0.8,  0.4,  0.4,  0.2],
    [-0.2, -0.2,  0.5, -0.2, -0.1,  0.0,  0.4, -0.1, -0.2,  0.4,  0.3,  0.3],
    [-0.5, -0.6,  0.9, -0.4, -0.3, -0.1,  0.3, -0.5,  0.3,  0.6, -0.1,  0.2],
])
# fmt: on
_TIER_BAND_SLOPE: Final = np.array([-0.7, -0.1, 0.5, 1.0])  # × centred band index: gold/platinum buy up
_TIER_ACTIVITY: Final = np.array([1.0, 1.3, 1.8, 2.5])
_HOUR_WEIGHTS: Final = np.array(
    [2, 1, 1, 1, 1, 1, 2, 4, 5, 5, 5, 6, 7, 6, 5, 5, 6, 7, 9, 11, 12, 11, 8, 4], dtype=np.float64
)

_FIRST_NAMES: Final = {
    "F": ("Emma", "Olivia", "Ava", "Sophia", "Mia", "Amelia", "Harper", "Chloe", "Grace", "Nora",
          "Lucia", "Hannah", "Aisha", "Mei", "Priya", "Sofia", "Elena", "Zoe", "Clara", "Ines"),
    "M": ("Liam", "Noah", "Oliver", "James", "Lucas", "Mateo", "Ethan", "Leo", "Henry", "Omar",
          "Arjun", "Daniel", "Samuel", "Wei", "Diego", "Jonas", "Felix", "Hugo", "Adam", "Ravi"),
    "X": ("Alex", "Sam", "Jordan", "Taylor", "Casey", "Riley", "Morgan", "Quinn", "Avery", "Robin"),
}  # fmt: skip
_LAST_NAMES: Final = (
    "Smith", "Johnson", "Garcia", "Miller", "Davis", "Martinez", "Lopez", "Wilson", "Anderson", "Thomas",
    "Moore", "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker",
    "Young", "Allen", "King", "Wright", "Scott", "Nguyen", "Hill", "Green", "Adams", "Baker",
    "Nelson", "Carter", "Mitchell", "Patel", "Roberts", "Kim", "Novak", "Schmidt", "Rossi", "Silva",
)  # fmt: skip
_EMAIL_DOMAINS: Final = ("example.com", "example.org", "example.net", "mail.example.com")

_ZIPF_EXPONENT: Final = 1.2
_MEAN_VIEWS_PER_SESSION: Final = 7.0
_MAX_VIEWS_PER_SESSION: Final = 60
_SECOND_CATEGORY_RATE: Final = 0.35
_CART_GIVEN_CLICK: Final = 0.3
_PURCHASE_GIVEN_CART: Final = 0.5
_DAY: Final = 86_400


@dataclass(frozen=True)
class SynthConfig:
    """Size and time window of the generated data set; ``end_timestamp`` is exclusive."""

    users: int = 2000
    items: int = 500
    events: int = 100_000
    seed: int = 7
    days: int = 90
    end_timestamp: int = 1_767_225_600
    fraud_users: int = 0
    """Known fraudulent members appended to the regular ones (see the module docstring)."""

    def __post_init__(self) -> None:
        for name in ("users", "items", "events", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.fraud_users < 0:
            raise ValueError(f"SynthConfig.fraud_users must be >= 0, got {self.fraud_users}")


@dataclass(frozen=True)
class SynthSummary:
    """Row counts of what ``synthesize`` wrote (``event_counts`` keyed by event type)."""

    users: int
    items: int
    interactions: int
    sessions: int
    event_counts: dict[str, int]
    interactions_path: Path
    users_path: Path
    items_path: Path
    fraud_users: int = 0
    fraud_path: Path | None = None
    """``fraud.parquet`` (``user_id``, ``kind``) when ``fraud_users`` > 0."""


@dataclass(frozen=True)
class _Users:
    frame: pl.DataFrame
    category_probs: FloatArray  # (users, categories), rows sum to 1 over categories with items
    band_probs: FloatArray  # (users, bands), rows sum to 1
    activity: FloatArray  # (users,), relative session rate


@dataclass(frozen=True)
class _Items:
    frame: pl.DataFrame
    category: IntArray
    band: IntArray
    price: FloatArray
    segment_mass: FloatArray  # (categories, bands): popularity share of each band within its category
    segment_key: FloatArray  # sorted keys: segment id + cumulative popularity fraction within it
    segment_order: IntArray  # item index for each entry of segment_key


@dataclass(frozen=True)
class _Sessions:
    user: IntArray  # (sessions,)
    view_session: IntArray  # (views,), sorted
    view_item: IntArray
    view_offset: IntArray  # seconds after the session start
    click: BoolArray
    cart: BoolArray
    purchase: BoolArray


def synthesize(config: SynthConfig, out: Path) -> SynthSummary:
    """Generate users, items and interactions for ``config`` and write them atomically to ``out``.

    Deterministic: the same config always yields identical files.
    """
    out = Path(out)
    # Spawned children depend only on their index: a fifth stream leaves the first four unchanged.
    world, user_rng, item_rng, event_rng, fraud_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(5)
    )
    items = _make_items(config.items, item_rng)
    has_items = np.bincount(items.category, minlength=len(_CATEGORIES)) > 0
    users = _make_users(config, has_items, world, user_rng)
    sessions = _make_sessions(config, users, items, event_rng)
    interactions = _events_frame(config, sessions, users, items, event_rng)
    user_frame = users.frame
    fraud_path = None
    if config.fraud_users > 0:
        fraud = _fraud(config, user_frame, items, fraud_rng)
        interactions = pl.concat([interactions, fraud.interactions]).sort("timestamp", "user_id", "item_id")
        user_frame = pl.concat([user_frame, fraud.users])
        fraud_path = out / FRAUD_FILE
        atomic_write_parquet(fraud_path, fraud.truth)

    paths = (out / INTERACTIONS_FILE, out / USERS_FILE, out / ITEMS_FILE)
    for path, frame in zip(paths, (interactions, user_frame, items.frame), strict=True):
        atomic_write_parquet(path, frame)
    counts = interactions["event_type"].value_counts()
    by_type = dict(zip(counts["event_type"].to_list(), counts["count"].to_list(), strict=True))
    return SynthSummary(
        users=user_frame.height,
        items=items.frame.height,
        interactions=interactions.height,
        sessions=len(sessions.user),
        event_counts={name: int(by_type.get(name, 0)) for name in EVENT_TYPES},
        interactions_path=paths[0],
        users_path=paths[1],
        items_path=paths[2],
        fraud_users=config.fraud_users,
        fraud_path=fraud_path,
    )


# --------------------------------------------------------------------------- injected fraud


@dataclass(frozen=True)
class _Fraud:
    users: pl.DataFrame
    interactions: pl.DataFrame
    truth: pl.DataFrame


def _fraud(config: SynthConfig, users: pl.DataFrame, items: _Items, rng: np.random.Generator) -> _Fraud:
    """``config.fraud_users`` extra members: bots (bursts of fast views and clicks) and fake-order
    accounts (purchases of expensive items never viewed), alternating."""
    n = config.fraud_users
    ids = _ids("u", config.users + n).slice(config.users)
    # Attributes copied from random regular members; personal columns made unique to the new id.
    template = users.sample(n, with_replacement=True, seed=int(rng.integers(2**31)))
    fraud_users = template.with_columns(
        ids.alias("user_id"),
        pl.concat_str(pl.lit("member."), ids, pl.lit("@example.com")).alias("email"),
    )
    kinds = np.array([FRAUD_KINDS[i % 2] for i in range(n)])
    window_start = config.end_timestamp - config.days * _DAY
    rows: list[pl.DataFrame] = []
    expensive = np.argsort(items.price)[-max(len(items.price) // 5, 1) :]
    for user, kind in zip(ids.to_list(), kinds, strict=True):
        if kind == "bot":
            for _ in range(int(rng.integers(2, 5))):
                views = int(rng.integers(80, 251))
                start = int(rng.integers(window_start, config.end_timestamp - 3 * views - 60))
                at = start + np.cumsum(rng.integers(1, 4, views))
                item = rng.integers(0, len(items.price), views)
                clicked = rng.random(views) < 0.3
                rows.append(
                    _fraud_rows(user, np.concatenate([at, at[clicked] + 1]), item, clicked, items, "bot")
                )
        else:
            orders = int(rng.integers(5, 16))
            at = np.sort(rng.integers(window_start, config.end_timestamp - 1, orders))
            item = expensive[rng.integers(0, len(expensive), orders)]
            rows.append(_fraud_rows(user, at, item, np.zeros(orders, dtype=bool), items, "purchase"))
    return _Fraud(fraud_users, pl.concat(rows), pl.DataFrame({"user_id": ids, "kind": kinds.tolist()}))


def _fraud_rows(
    user: str, at: IntArray, item: IntArray, clicked: BoolArray, items: _Items, kind: str
) -> pl.DataFrame:
    """Bot rows (views, then clicks for ``clicked`` views) or purchase rows (with the price)."""
    if kind == "bot":
        item = np.concatenate([item, item[clicked]])
        types = ["view"] * len(clicked) + ["click"] * int(clicked.sum())
        value = np.full(len(item), np.nan)
    else:
        types = ["purchase"] * len(item)
        value = items.price[item]
    return pl.DataFrame(
        {
            "user_id": [user] * len(item),
            "item_id": items.frame["item_id"].gather(item),
            "timestamp": np.asarray(at, dtype=np.int64),
            "event_type": types,
            "value": pl.Series(value).fill_nan(None),
        }
    )


# --------------------------------------------------------------------------- items


def _make_items(n: int, rng: np.random.Generator) -> _Items:
    n_cat, n_band = len(_CATEGORIES), len(PRICE_BANDS)
    category = _assign_categories(n, rng)
    # The price band is the quartile of the standard-normal draw behind the log-normal price.
    z = rng.standard_normal(n)
    band = np.searchsorted(np.array([-0.6745, 0.0, 0.6745]), z).astype(np.int64)
    mean_price = np.array([c.mean_price for c in _CATEGORIES])[category]
    raw_price = mean_price * np.exp(0.55 * z - 0.55**2 / 2)
    price = np.maximum(np.ceil(raw_price) - 0.01, 0.99)  # shelf prices end in .99

    popularity = _zipf_within(category, rng)
    brands = np.array([c.brands for c in _CATEGORIES])
    brand_weights = 1.0 / np.arange(1, brands.shape[1] + 1)
    brand = brands[category, _categorical(np.tile(brand_weights, (n, 1)), rng)]

    segment = category * n_band + band
    mass = np.bincount(segment, weights=popularity, minlength=n_cat * n_band).reshape(n_cat, n_band)
    segment_mass = mass / np.maximum(mass.sum(axis=1, keepdims=True), 1e-300)
    order = np.lexsort((np.arange(n), segment))
    key = _segment_keys(segment[order], popularity[order])

    frame = pl.DataFrame(
        {
            "item_id": _ids("i", n),
            "category": pl.Series([c.name for c in _CATEGORIES]).gather(category),
            "brand": brand,
            "price": price,
            "tags": _tags(category, rng),
        }
    ).with_columns(pl.col("brand").cast(pl.Utf8))
    return _Items(frame, category, band, price, segment_mass, key, order.astype(np.int64))


def _assign_categories(n: int, rng: np.random.Generator) -> IntArray:
    """Category per item by catalog share; every category gets an item when ``n`` allows it."""
    n_cat = len(_CATEGORIES)
    share = np.array([c.catalog_share for c in _CATEGORIES])
    drawn = rng.choice(n_cat, size=n, p=share / share.sum())
    guaranteed = min(n, n_cat)
    drawn[:guaranteed] = np.arange(guaranteed)
    return rng.permutation(drawn).astype(np.int64)


def _zipf_within(category: IntArray, rng: np.random.Generator) -> FloatArray:
    """Popularity ∝ rank^-s, with a random rank of each item inside its category."""
    order = np.lexsort((rng.random(len(category)), category))
    sorted_cat = category[order]
    starts = np.searchsorted(sorted_cat, sorted_cat, side="left")
    rank = np.empty(len(category), dtype=np.int64)
    rank[order] = np.arange(len(category)) - starts + 1
    return np.asarray(rank, dtype=np.float64) ** -_ZIPF_EXPONENT


def _segment_keys(segment: IntArray, weight: FloatArray) -> FloatArray:
    """``segment + cumulative weight fraction within the segment`` for rows sorted by segment.

    Searching ``g + u`` (u in (0, 1]) in these keys samples an item of segment ``g`` in
    proportion to ``weight``: one ``searchsorted`` serves every segment at once.
    """
    cum = np.cumsum(weight)
    starts = np.searchsorted(segment, segment, side="left")
    ends = np.searchsorted(segment, segment, side="right") - 1
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    fraction = (cum - before) / (cum[ends] - before)
    fraction[ends == np.arange(len(segment))] = 1.0  # exact 1.0 at each segment's end
    return np.asarray(segment + fraction, dtype=np.float64)


def _tags(category: IntArray, rng: np.random.Generator) -> pl.Series:
    """1-3 distinct tags per item from its category's tags plus the global ones."""
    pool = np.array([(*c.tags, *_GLOBAL_TAGS) for c in _CATEGORIES])
    n = len(category)
    picks = np.argsort(rng.random((n, pool.shape[1])), axis=1)[:, :3]
    count = rng.choice(np.array([1, 2, 3]), size=n, p=[0.3, 0.45, 0.25])
    # Tag j is kept when the item has more than j tags; the rest become nulls that are dropped.
    candidates = pl.DataFrame({f"t{j}": pool[category, picks[:, j]] for j in range(picks.shape[1])})
    kept = [pl.when(pl.Series(count > j)).then(pl.col(f"t{j}")) for j in range(picks.shape[1])]
    return candidates.select(pl.concat_list(kept).list.drop_nulls().alias("tags")).to_series()


# --------------------------------------------------------------------------- users


def _make_users(
    config: SynthConfig, has_items: BoolArray, world: np.random.Generator, rng: np.random.Generator
) -> _Users:
    n = config.users
    gender = rng.choice(len(GENDERS), size=n, p=[0.49, 0.48, 0.03])
    age = np.clip(18 + rng.gamma(2.2, 9.0, size=n), 18, 85).astype(np.int64)
    region = rng.choice(len(REGIONS), size=n, p=[0.22, 0.24, 0.2, 0.2, 0.14])
    tier = rng.choice(len(TIERS), size=n, p=[0.55, 0.27, 0.13, 0.05])
    age_band = np.searchsorted(np.array(AGE_BANDS), age, side="right")

    region_effect = world.normal(0.0, 0.35, size=(len(REGIONS), len(_CATEGORIES)))
    base = np.array([c.base_affinity for c in _CATEGORIES])
    logits = (
        base
        + _GENDER_EFFECT[gender]
        + _AGE_EFFECT[age_band]
        + region_effect[region]
        + rng.normal(0.0, 1.0, size=(n, len(_CATEGORIES)))  # idiosyncratic taste
    )
    category_probs = _softmax(np.where(has_items, 1.5 * logits, -np.inf))

    centred_band = np.arange(len(PRICE_BANDS)) - (len(PRICE_BANDS) - 1) / 2
    band_logits = _TIER_BAND_SLOPE[tier, None] * centred_band + rng.normal(0.0, 0.6, (n, len(PRICE_BANDS)))
    activity = np.minimum(rng.pareto(1.5, size=n) + 1.0, 300.0) * _TIER_ACTIVITY[tier]

    frame = pl.DataFrame(
        {
            "user_id": _ids("u", n),
            "gender": pl.Series(GENDERS).gather(gender),
            "age": age,
            "region": pl.Series(REGIONS).gather(region),
            "tier": pl.Series(TIERS).gather(tier),
            "signup_date": _signup_dates(config, rng),
        }
    ).hstack(_personal_data(gender, rng))
    return _Users(frame, category_probs, _softmax(band_logits), activity)


def _signup_dates(config: SynthConfig, rng: np.random.Generator) -> pl.Series:
    """Sign-up day 1 day to 3 years before the event window starts (all users pre-date it)."""
    window_start_day = (config.end_timestamp - config.days * _DAY) // _DAY
    days = window_start_day - rng.integers(1, 3 * 365, size=config.users)
    return pl.Series("signup_date", days.astype(np.int32)).cast(pl.Date)


def _personal_data(gender: IntArray, rng: np.random.Generator) -> pl.DataFrame:
    """Fake but realistic-looking ``name``, ``email``, ``phone`` (reserved domains, 555-01xx numbers).

    They exist so that the pipeline's personal-data filter has something real-looking to remove.
    """
    n = len(gender)
    first_by_gender = [
        np.array(_FIRST_NAMES[g])[rng.integers(0, len(_FIRST_NAMES[g]), n)] for g in GENDERS
    ]  # one candidate per user from each gender's list; the user's gender picks among them
    parts = pl.DataFrame(
        {
            "first": np.choose(gender, first_by_gender),
            "last": np.array(_LAST_NAMES)[rng.integers(0, len(_LAST_NAMES), n)],
            "domain": np.array(_EMAIL_DOMAINS)[rng.integers(0, len(_EMAIL_DOMAINS), n)],
            "number": np.arange(1, n + 1),  # keeps e-mails unique across users with the same name
            "area": rng.integers(201, 990, n),
            "line": rng.integers(0, 100, n),
        }
    )
    return parts.select(
        pl.concat_str("first", pl.lit(" "), "last").alias("name"),
        pl.concat_str(
            pl.col("first").str.to_lowercase(),
            pl.lit("."),
            pl.col("last").str.to_lowercase(),
            pl.col("number").cast(pl.Utf8),
            pl.lit("@"),
            "domain",
        ).alias("email"),
        pl.concat_str(
            pl.lit("+1-"),
            pl.col("area").cast(pl.Utf8),
            pl.lit("-555-01"),
            pl.col("line").cast(pl.Utf8).str.zfill(2),
        ).alias("phone"),
    )


# --------------------------------------------------------------------------- sessions and events


def _make_sessions(config: SynthConfig, users: _Users, items: _Items, rng: np.random.Generator) -> _Sessions:
    """Draw sessions until their events cover ``config.events``, then keep the closest prefix."""
    expected = _MEAN_VIEWS_PER_SESSION * (1 + 0.3 * (1 + _CART_GIVEN_CLICK * (1 + _PURCHASE_GIVEN_CART)))
    n_sessions = math.ceil(1.15 * config.events / expected) + 8
    while True:
        sessions = _draw_sessions(n_sessions, users, items, rng)
        per_view = 1 + sessions.click.astype(np.int64) + sessions.cart + sessions.purchase
        per_session = np.bincount(sessions.view_session, weights=per_view, minlength=n_sessions)
        total = np.cumsum(per_session)
        if total[-1] >= config.events:
            break
        n_sessions *= 2  # rare: only when the draw fell short of the target
    keep = int(np.searchsorted(total, config.events, side="left"))  # total[keep] >= events
    if keep > 0 and config.events - total[keep - 1] < total[keep] - config.events:
        keep -= 1
    return _take_sessions(sessions, keep + 1)


def _draw_sessions(n: int, users: _Users, items: _Items, rng: np.random.Generator) -> _Sessions:
    user = np.searchsorted(np.cumsum(users.activity), rng.random(n) * users.activity.sum(), side="right")
    user = np.minimum(user, len(users.activity) - 1)
    n_views = np.minimum(rng.geometric(1.0 / _MEAN_VIEWS_PER_SESSION, size=n), _MAX_VIEWS_PER_SESSION)
    primary = _categorical(users.category_probs[user], rng)
    secondary = np.where(
        rng.random(n) < _SECOND_CATEGORY_RATE, _categorical(users.category_probs[user], rng), primary
    )

    view_session = np.repeat(np.arange(n), n_views)
    view_user = user[view_session]
    category = np.where(rng.random(len(view_session)) < 0.6, primary[view_session], secondary[view_session])
    # Band ∝ user's band preference × the band's popularity share in this category.
    band = _categorical(users.band_probs[view_user] * items.segment_mass[category], rng)
    target = category * len(PRICE_BANDS) + band + (1.0 - rng.random(len(view_session)))
    position = np.minimum(np.searchsorted(items.segment_key, target, side="left"), len(items.segment_key) - 1)
    item = items.segment_order[position]

    # Suitable bands convert better: p(click) 0.15-0.5 by the user's preference for the band.
    fit = users.band_probs[view_user, items.band[item]]
    click = rng.random(len(item)) < 0.15 + 0.35 * fit / users.band_probs[view_user].max(axis=1)
    cart = click & (rng.random(len(item)) < _CART_GIVEN_CLICK)
    purchase = cart & (rng.random(len(item)) < _PURCHASE_GIVEN_CART)
    return _Sessions(user, view_session, item, _view_offsets(view_session, rng), click, cart, purchase)


def _view_offsets(view_session: IntArray, rng: np.random.Generator) -> IntArray:
    """Seconds since session start: 0 for the first view, then log-normal gaps (median 25 s)."""
    gaps = np.clip(np.rint(rng.lognormal(math.log(25.0), 0.9, len(view_session))), 1, 1200).astype(np.int64)
    first = np.searchsorted(view_session, view_session, side="left")
    gaps[first == np.arange(len(view_session))] = 0
    cum = np.cumsum(gaps)
    return np.asarray(cum - cum[first], dtype=np.int64)  # segmented cumulative sum


def _take_sessions(sessions: _Sessions, keep: int) -> _Sessions:
    """The first ``keep`` sessions (sessions are i.i.d., so a prefix is a random subset)."""
    n_views = int(np.searchsorted(sessions.view_session, keep, side="left"))
    return _Sessions(
        sessions.user[:keep],
        sessions.view_session[:n_views],
        sessions.view_item[:n_views],
        sessions.view_offset[:n_views],
        sessions.click[:n_views],
        sessions.cart[:n_views],
        sessions.purchase[:n_views],
    )


def _events_frame(
    config: SynthConfig, sessions: _Sessions, users: _Users, items: _Items, rng: np.random.Generator
) -> pl.DataFrame:
    """Expand views into funnel events, place sessions in time and build the interactions table."""
    n = len(sessions.view_session)
    click_at = sessions.view_offset + rng.integers(2, 30, n)
    cart_at = click_at + np.clip(np.rint(rng.lognormal(math.log(40.0), 0.8, n)), 3, 900).astype(np.int64)
    buy_at = cart_at + np.clip(np.rint(rng.lognormal(math.log(150.0), 0.8, n)), 10, 1500).astype(np.int64)
    last_at = np.where(sessions.purchase, buy_at, np.where(sessions.cart, cart_at, click_at))
    # Every session has >= 1 view and views are sorted by session, so reduceat yields one max each.
    first_view = np.searchsorted(sessions.view_session, np.arange(len(sessions.user)), side="left")
    span = np.maximum.reduceat(last_at, first_view)
    start = _session_starts(config, span, rng)[sessions.view_session]

    masks = (np.ones(n, dtype=bool), sessions.click, sessions.cart, sessions.purchase)
    offsets = (sessions.view_offset, click_at, cart_at, buy_at)
    view_index = np.concatenate([np.flatnonzero(m) for m in masks])
    kind = np.concatenate([np.full(int(m.sum()), k, dtype=np.int64) for k, m in enumerate(masks)])
    timestamp = np.concatenate([(start + off)[m] for off, m in zip(offsets, masks, strict=True)])
    user = sessions.user[sessions.view_session[view_index]]
    item = sessions.view_item[view_index]
    value = np.where(kind >= EVENT_TYPES.index("add_to_cart"), items.price[item], np.nan)

    order = np.lexsort((kind, item, user, timestamp))
    return pl.DataFrame(
        {
            "user_id": users.frame["user_id"].gather(user[order]),
            "item_id": items.frame["item_id"].gather(item[order]),
            "timestamp": timestamp[order],
            "event_type": pl.Series(EVENT_TYPES).gather(kind[order]),
            "value": pl.Series(value[order]).fill_nan(None),
        }
    )


def _session_starts(config: SynthConfig, span: IntArray, rng: np.random.Generator) -> IntArray:
    """Session start times: traffic grows over the window, peaks in the evening, busier weekends.

    Starts are pulled back so the whole session ends before ``end_timestamp``.
    """
    n = len(span)
    window_start = config.end_timestamp - config.days * _DAY
    day = np.arange(config.days)
    weekday = (window_start // _DAY + day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    day_weight = (1.0 + 0.3 * day / config.days) * np.where(weekday >= 5, 1.15, 1.0)
    chosen_day = _categorical(day_weight[None, :], rng, size=n)
    hour = _categorical(_HOUR_WEIGHTS[None, :], rng, size=n)
    start = window_start + chosen_day * _DAY + hour * 3600 + rng.integers(0, 3600, n)
    return np.asarray(np.maximum(np.minimum(start, config.end_timestamp - 1 - span), window_start))


# --------------------------------------------------------------------------- helpers


def _categorical(weights: FloatArray, rng: np.random.Generator, size: int | None = None) -> IntArray:
    """One draw per row of non-negative ``weights`` (or ``size`` draws from a single row).

    Zero-weight columns are never drawn: the draw is the first column whose cumulative weight
    reaches ``u * total`` with ``u`` in (0, 1].
    """
    cum = np.cumsum(weights, axis=1)
    rows = cum.shape[0] if size is None else size
    target = (1.0 - rng.random(rows)) * cum[:, -1]
    if size is None:
        chosen = (cum < target[:, None]).sum(axis=1)
    else:
        chosen = np.searchsorted(cum[0], target, side="left")
    return np.asarray(np.minimum(chosen, weights.shape[1] - 1), dtype=np.int64)


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)


def _ids(prefix: str, n: int) -> pl.Series:
    """``prefix`` + 1-based zero-padded number: "u000001", "u000002", ..."""
    return pl.select(
        pl.concat_str([pl.lit(prefix), pl.int_range(1, n + 1).cast(pl.Utf8).str.zfill(6)])
    ).to_series()
