"""``recsys segments-report``: one self-contained HTML page about a bundle's members.

For a marketing analyst, charts before tables: key figures (members, clock, churn AUC),
embedding segment sizes, the R x F heat map with the named RFM segment of each cell,
named RFM segment sizes, the lifecycle funnel, the top item and user attributes of each
segment (by lift), the churn-risk distribution (and mean risk per lifecycle stage), and
the silhouette curve that chose k. Plotly charts (:mod:`training.reports.charts`), plotly.js
inlined once: nothing is loaded from the network (the page opens offline in a browser).

Reads only the bundle's manifest and ``profiles.parquet`` (checksums verified first).
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from serving.bundle.format import read_manifest, verify_checksums
from serving.profiles.lifecycle import STAGES
from serving.profiles.rfm import SEGMENTS, segment
from serving.profiles.store import read_profiles
from serving.storage import atomic_write_text
from training.reports.charts import (
    PALETTE,
    bar_chart,
    chart_html,
    funnel_chart,
    heat_map,
    histogram_chart,
    html_page,
    line_chart,
)

CSS = """
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 2px solid #4e79a7; padding-bottom: 4px; }
.sub { color: #666; margin-top: 0; }
.kpis { display: flex; gap: 16px; flex-wrap: wrap; margin: 20px 0; }
.kpi { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 12px 18px; min-width: 150px; }
.kpi .v { font-size: 26px; font-weight: bold; color: #4e79a7; } .kpi .l { font-size: 12px; color: #666; }
.row { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; } .row > div { min-width: 480px; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 12px 16px; margin: 8px 0; }
.segments { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 14px; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 8px; text-align: left; }
th { color: #555; border-bottom: 1px solid #ccc; } .note { color: #666; font-size: 12px; }
"""


def load_profiles(bundle: Path) -> tuple[dict[str, Any], pl.DataFrame]:
    """(manifest, profiles) of a verified bundle; FeatureUnavailableError without profiles."""
    manifest = read_manifest(bundle)
    verify_checksums(bundle, manifest)
    return manifest, read_profiles(bundle, manifest)


def _kpi(value: str, label: str) -> str:
    return f"<div class='kpi'><div class='v'>{escape(value)}</div><div class='l'>{escape(label)}</div></div>"


def _segment_card(description: dict[str, Any], color: str, churn: float | None) -> str:
    def lifts(entries: list[dict[str, Any]], title: str) -> str:
        labels = [f"{e['attribute']}={e['value']} ({e['share']:.0%})" for e in entries]
        values = [float(e["lift"]) for e in entries]
        text = [f"×{v:.3g}" for v in values]
        return chart_html(bar_chart(labels, values, title=title, colors=color, horizontal=True, text=text))

    items = description.get("top_item_attributes", [])
    users = description.get("top_user_attributes", [])
    risk = f" · mean churn risk {churn:.0%}" if churn is not None else ""
    parts = [
        f"<div class='card' style='border-left: 6px solid {color}'>"
        f"<b>Segment {description['segment']}</b>: {escape(description['label'])}<br>"
        f"<span class='note'>{description['size']:,} members ({description['share']:.0%}){risk}</span>"
    ]
    if items:
        parts.append(lifts(items, f"Segment {description['segment']}: item attributes (lift vs everyone)"))
    if users:
        parts.append(lifts(users, f"Segment {description['segment']}: member attributes (lift vs everyone)"))
    parts.append("</div>")
    return "".join(parts)


def render(manifest: dict[str, Any], profiles: pl.DataFrame) -> str:
    """The report's HTML."""
    section = manifest["profiles"]
    churn = section.get("churn", {})
    segments = section.get("segments", {})
    descriptions = segments.get("descriptions", [])
    clock = datetime.fromtimestamp(int(section["clock"]), UTC)
    n = profiles.height
    has_risk = "churn_risk" in profiles.columns and profiles.get_column("churn_risk").null_count() < n

    kpis = [
        _kpi(f"{n:,}", "members profiled"),
        _kpi(f"{segments.get('k', 0)}", f"embedding segments ({segments.get('chosen_by', '')})"),
        _kpi(f"{churn['auc']:.3f}" if churn.get("trained") else "n/a", "churn model AUC (later cut)"),
        _kpi(
            f"{churn['validation_base_rate']:.0%}" if churn.get("trained") else "n/a",
            f"churned within {churn.get('horizon_days', 0):g} days (base rate)",
        ),
        _kpi(
            f"{_share(profiles.get_column('lifecycle').is_in(['active', 'new'])):.0%}",
            "active or new members",
        ),
    ]

    # Segment sizes.
    colors = [PALETTE[d["segment"] % len(PALETTE)] for d in descriptions]
    sizes_chart = chart_html(
        bar_chart(
            [f"{d['segment']}: {_shorten(d['label'], 48)}" for d in descriptions],
            [float(d["size"]) for d in descriptions],
            title="Members per embedding segment",
            colors=colors,
            horizontal=True,
            text=[f"{d['size']:,}" for d in descriptions],
        )
    )
    silhouettes = sorted((int(k), float(v)) for k, v in segments.get("silhouettes", {}).items())
    silhouette_chart = (
        chart_html(
            line_chart(
                [k for k, _ in silhouettes],
                {"silhouette": [v for _, v in silhouettes]},
                title="Choice of k (silhouette; red: chosen)",
                highlight=int(segments.get("k", 0)),
                x_title="k (segments)",
                y_title="silhouette",
            )
        )
        if silhouettes
        else "<p class='note'>k was configured, not chosen by silhouette.</p>"
    )

    # RFM grid: R rows x F columns, users per cell, named segment per cell.
    bins = int(section["rfm"]["bins"])
    # The manifest's grid (written with the profiles), not a second group-by over them.
    cells = {(int(c["r_score"]), int(c["f_score"])): float(c["users"]) for c in section["rfm"]["grid"]}
    scores = list(range(1, bins + 1))
    names = pl.DataFrame({"r": [r for r in scores for _ in scores], "f": scores * bins}).with_columns(
        segment(pl.col("r"), pl.col("f"), bins).alias("name")
    )
    labels = {(int(r), int(f)): str(name).replace("_", " ") for r, f, name in names.iter_rows()}
    rows = scores  # plotly draws the first row at the bottom: highest recency on top
    rfm_map = chart_html(
        heat_map(
            [[cells.get((r, f), 0.0) for f in scores] for r in rows],
            rows,
            scores,
            title="Members per R × F cell (and its named segment)",
            row_title="R (recency score)",
            column_title="F (frequency score)",
            labels=[[labels.get((r, f), "") for f in scores] for r in rows],
        )
    )
    rfm_counts = section["rfm"]["counts"]
    rfm_chart = chart_html(
        bar_chart(
            [name.replace("_", " ") for name in SEGMENTS],
            [float(rfm_counts.get(name, 0)) for name in SEGMENTS],
            title="Members per named RFM segment",
            colors=PALETTE[1],
            horizontal=True,
        )
    )

    # Lifecycle funnel and churn risk by stage.
    stage_counts = section["lifecycle"]["counts"]
    lifecycle_chart = chart_html(
        funnel_chart(
            [stage.replace("_", " ") for stage in STAGES],
            [float(stage_counts.get(stage, 0)) for stage in STAGES],
            title="Members per lifecycle stage",
        )
    )
    rules = "".join(f"<li>{escape(rule)}</li>" for rule in section["lifecycle"].get("rules", []))

    churn_html = "<p class='note'>No churn model: " + escape(str(churn.get("reason", "not trained"))) + "</p>"
    segment_risk: dict[int, float] = {}
    if has_risk:
        risk = profiles.get_column("churn_risk").drop_nulls().to_numpy()
        counts, edges = np.histogram(risk, bins=10, range=(0.0, 1.0))
        by_stage = profiles.group_by("lifecycle").agg(pl.col("churn_risk").mean()).to_dict(as_series=False)
        stage_risk = dict(zip(by_stage["lifecycle"], by_stage["churn_risk"], strict=True))
        by_segment = profiles.group_by("segment").agg(pl.col("churn_risk").mean()).drop_nulls("segment")
        segment_risk = {int(s): float(r) for s, r in by_segment.iter_rows() if r is not None}
        churn_html = (
            "<div class='row'><div>"
            + chart_html(
                histogram_chart(
                    [int(c) for c in counts],
                    [float(e) for e in edges],
                    title="Members per churn-risk band",
                    x_title="churn risk (probability)",
                )
            )
            + "</div><div>"
            + chart_html(
                bar_chart(
                    [s.replace("_", " ") for s in STAGES if s in stage_risk],
                    [float(stage_risk.get(s) or 0.0) for s in STAGES if s in stage_risk],
                    title="Mean churn risk by lifecycle stage",
                    colors=PALETTE[3],
                    horizontal=True,
                    text=[f"{float(stage_risk.get(s) or 0.0):.0%}" for s in STAGES if s in stage_risk],
                )
            )
            + "</div></div>"
            + "<p class='note'>Logistic regression on profile features; label: "
            + f"{escape(churn.get('label', ''))}. "
            f"Fitted on the cut {_day(churn.get('fit_cut'))} ({churn.get('fit_users', 0):,} members), "
            f"validated on the later cut {_day(churn.get('validation_cut'))} "
            f"({churn.get('validation_users', 0):,} members): AUC {churn.get('auc', float('nan')):.3f}, "
            f"base rate {churn.get('validation_base_rate', float('nan')):.1%}.</p>"
        )

    cards = "".join(
        _segment_card(d, PALETTE[d["segment"] % len(PALETTE)], segment_risk.get(int(d["segment"])))
        for d in descriptions
    )
    money = {
        "monetary": "sum of purchase amounts",
        "value": "interaction count (the data's values are not amounts)",
        "none": "interaction count (no values in the data)",
    }.get(section.get("monetary_source", ""), "")
    body = f"""<h1>Member segments report</h1>
<p class="sub">Model {escape(str(manifest.get("model_version", "")))} · data clock {clock:%Y-%m-%d %H:%M} UTC
(latest interaction) · monetary = {escape(money)}</p>
<div class="kpis">{"".join(kpis)}</div>
<h2>Embedding segments</h2>
<p class="note">k-means on the model's user embeddings; each segment is described by the attribute values
over-represented among its members (lift = share in the segment / share over everyone).</p>
<div class="row"><div>{sizes_chart}</div>
<div>{silhouette_chart}</div></div>
<h2>RFM: recency × frequency</h2>
<p class="note">Scores are quantile bins over members (higher = more recent / more frequent); each cell
shows the members in it and its named segment.</p>
<div class="row"><div>{rfm_map}</div><div>{rfm_chart}</div></div>
<h2>Lifecycle</h2>
<div class="row"><div>{lifecycle_chart}</div>
<div class="card"><b>Rules</b> (first match wins)<ul>{rules}</ul></div></div>
<h2>Churn risk</h2>
{churn_html}
<h2>Top attributes per segment</h2>
<div class="segments">{cards}</div>
<p class="note">Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by recsys segments-report.</p>
"""
    return html_page("Member segments report", body, CSS)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip(", ") + "…"


def _share(flags: pl.Series) -> float:
    return float(flags.cast(pl.Float64).sum()) / max(len(flags), 1)


def _day(timestamp: Any) -> str:
    if timestamp is None:
        return "?"
    return f"{datetime.fromtimestamp(int(timestamp), UTC):%Y-%m-%d}"


def write_report(bundle: Path, out: Path) -> Path:
    """Render the report of ``bundle`` into ``out`` (atomically); returns ``out``."""
    manifest, profiles = load_profiles(bundle)
    atomic_write_text(Path(out), render(manifest, profiles))
    return Path(out)
