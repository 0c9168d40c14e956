"""A randomly held-out control group, chosen when a campaign list is written, and the campaign file.

``recsys recommend`` / ``recsys lookalike`` with ``--control-share F`` (0 < F < 1) hold out
about that share of the listed members: they are removed from ``--out`` (the list that is sent)
and written to ``<out stem>.control<suffix>`` (``user_id``), never contacted. Assignment is a
hash of (campaign name, user id): random with respect to anything about the member,
reproducible, and the same member stays in the same group when a list is rewritten.

With a campaign name (``--campaign``, default the ``--out`` stem) or a control share, the
command also writes ``<out stem>.campaign.json``: name, when it was sent (``--sent-at``, unix
seconds or ISO-8601; default now), the two file names, group sizes, the model version, how the
list was built and ordered, the base (profiled members) and the **fairness** table: for each
protected attribute the bundle's profiles carry (``gender``; ``age`` as bands), the share of each
value among the listed members against the base, so targeting that skews towards or away from a
group is visible (it is reported, never used to build the list).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import InvalidArgumentError

if TYPE_CHECKING:
    import polars as pl

CAMPAIGN_SUFFIX = ".campaign.json"
CONTROL_SUFFIX = ".control"
PROTECTED_ATTRIBUTES = ("gender", "age")
AGE_BANDS = ((18, 24), (25, 34), (35, 49), (50, 64))
"""Age bands (inclusive); 65+ and under-18 are their own bands."""
_HASH_SCALE = float(2**64)


def add_holdout_arguments(parser: argparse.ArgumentParser) -> None:
    """``--campaign``, ``--control-share`` and ``--sent-at``."""
    parser.add_argument("--campaign", default="", help="campaign name (default: the --out file's stem)")
    parser.add_argument(
        "--control-share",
        type=float,
        default=0.0,
        help="hold out this share of the listed members as a control group (0 < F < 1; default 0: none)",
    )
    parser.add_argument(
        "--sent-at",
        default="",
        help="when the campaign goes out: unix seconds or ISO-8601 (default: now); the report "
        "counts responses from then on",
    )


def parse_sent_at(text: str, now: datetime | None = None) -> int:
    """``--sent-at`` as unix seconds (empty: now)."""
    if not text:
        return int((now or datetime.now(UTC)).timestamp())
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgumentError("--sent-at", f"not unix seconds or ISO-8601: {text!r}") from exc
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


def in_control(campaign: str, user_ids: pl.Series, share: float) -> pl.Series:
    """True for the members of ``user_ids`` held out (hash of campaign and id below ``share``)."""
    import polars as pl

    def draw(user_id: str) -> bool:
        digest = hashlib.sha256(f"{campaign}\x00{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / _HASH_SCALE < share

    return pl.Series("control", [draw(u) for u in user_ids.to_list()], dtype=pl.Boolean)


def campaign_paths(out: Path) -> tuple[Path, Path]:
    """(control list, campaign file) next to ``out``."""
    out = Path(out)
    return (
        out.with_name(f"{out.stem}{CONTROL_SUFFIX}{out.suffix}"),
        out.with_name(f"{out.stem}{CAMPAIGN_SUFFIX}"),
    )


def age_band(age: pl.Expr) -> pl.Expr:
    """Age as a band label ("18-24" ... "65+"; "under 18"; null stays null)."""
    import polars as pl

    label = pl.lit(f"{AGE_BANDS[-1][1] + 1}+")
    # Built from the oldest band down, so each when/otherwise wraps the older bands.
    for low, high in reversed(AGE_BANDS):
        label = pl.when(age <= high).then(pl.lit(f"{low}-{high}")).otherwise(label)
    return (
        pl.when(age.is_null())
        .then(pl.lit(None, dtype=pl.Utf8))
        .when(age < AGE_BANDS[0][0])
        .then(pl.lit("under 18"))
        .otherwise(label)
    )


def fairness(listed_bundle_ids: pl.Series, profiles: pl.DataFrame | None) -> dict[str, Any]:
    """Per protected attribute in ``profiles`` (``attr.gender``, ``attr.age`` as bands): the
    share of each value among the listed members and in the base (every profiled member)."""
    import polars as pl

    if profiles is None:
        return {}
    out: dict[str, Any] = {}
    for name in PROTECTED_ATTRIBUTES:
        column = f"attr.{name}"
        if column not in profiles.columns:
            continue
        value = pl.col(column)
        label = age_band(value.cast(pl.Float64)) if name == "age" else value.cast(pl.Utf8)
        base = profiles.select("user_id", label.fill_null("unknown").alias("value"))
        listed = base.filter(pl.col("user_id").is_in(listed_bundle_ids.unique().implode()))
        shares: dict[str, dict[str, float]] = {}
        for which, frame in (("list", listed), ("base", base)):
            counts = frame.group_by("value").len()
            total = max(frame.height, 1)
            for value_text, count in counts.iter_rows():
                shares.setdefault(str(value_text), {"list": 0.0, "base": 0.0})[which] = round(
                    count / total, 4
                )
        out["age_band" if name == "age" else name] = dict(sorted(shares.items()))
    return out


@dataclass(frozen=True)
class HeldOut:
    """The list to send, the control members and the campaign file's content."""

    sent: pl.DataFrame
    control: pl.DataFrame
    campaign: dict[str, Any]


def hold_out(
    frame: pl.DataFrame,
    bundle_ids: pl.Series,
    profiles: pl.DataFrame | None,
    *,
    out: Path,
    name: str,
    share: float,
    sent_at: int,
    source: str,
    model_version: str,
    ordered_by: str,
    min_clv: float | None = None,
) -> HeldOut:
    """Split ``frame`` (a campaign list with ``user_id``; ``bundle_ids`` row-aligned) into the
    list to send and the control group; describe the campaign (module docstring)."""
    import polars as pl

    if not 0 <= share < 1:
        raise InvalidArgumentError("--control-share", f"must be in [0, 1), got {share}")
    name = name or Path(out).stem
    control = in_control(name, frame.get_column("user_id"), share) if share > 0 else None
    sent = frame if control is None else frame.filter(~control)
    held = (
        frame.filter(control).select("user_id").unique(maintain_order=True)
        if control is not None
        else pl.DataFrame(schema={"user_id": pl.Utf8})
    )
    control_path, _ = campaign_paths(out)
    sent_ids = bundle_ids if control is None else bundle_ids.filter(~control)
    campaign = {
        "campaign": name,
        "sent_at": sent_at,
        "sent_at_iso": datetime.fromtimestamp(sent_at, UTC).isoformat(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "ordered_by": ordered_by,
        "min_clv": min_clv,
        "model_version": model_version,
        "list": Path(out).name,
        "control_list": control_path.name if share > 0 else None,
        "control_share": share,
        "assignment": "sha256(campaign name, user id) below the control share",
        "treatment_members": sent.get_column("user_id").n_unique(),
        "control_members": held.height,
        "base_members": profiles.height if profiles is not None else None,
        "fairness": fairness(sent_ids, profiles),
    }
    return HeldOut(sent, held, campaign)


def write_campaign(held: HeldOut, out: Path) -> None:
    """The list to send at ``out``, the control list and the campaign file, each atomically."""
    from serving.storage import atomic_write_table, atomic_write_text

    control_path, campaign_path = campaign_paths(out)
    atomic_write_table(out, held.sent)
    if held.campaign["control_list"]:
        atomic_write_table(control_path, held.control)
    atomic_write_text(campaign_path, json.dumps(held.campaign, indent=2) + "\n")


def write_campaign_list(
    args: argparse.Namespace,
    frame: pl.DataFrame,
    bundle_ids: pl.Series,
    profiles: pl.DataFrame | None,
    source: str,
    model_version: str,
) -> str:
    """Write the list of ``recsys recommend`` / ``recsys lookalike`` to ``args.out``: as is,
    or, with ``--campaign`` / ``--control-share``, split and described (:func:`hold_out`).
    Returns a phrase for the command's summary line ("" without a campaign)."""
    from serving.storage import atomic_write_table

    if not args.campaign and args.control_share == 0:
        atomic_write_table(args.out, frame)
        return ""
    held = hold_out(
        frame,
        bundle_ids,
        profiles,
        out=args.out,
        name=args.campaign,
        share=args.control_share,
        sent_at=parse_sent_at(args.sent_at),
        source=source,
        ordered_by=args.order_by or "",
        min_clv=args.min_clv,
        model_version=model_version,
    )
    write_campaign(held, args.out)
    _, campaign_path = campaign_paths(args.out)
    return (
        f"campaign {held.campaign['campaign']!r}: {held.campaign['treatment_members']} members to contact, "
        f"{held.campaign['control_members']} held out as control ({campaign_path})"
    )
