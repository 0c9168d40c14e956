"""``recsys profile`` and ``recsys segments-report``: member profiles of a bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cmd_profile(args: argparse.Namespace) -> None:
    from serving.profiles.lookup import lookup_profile

    print(json.dumps(lookup_profile(args.bundle, args.user), indent=2, sort_keys=True))


def cmd_segments_report(args: argparse.Namespace) -> None:
    from training.reports.segments_report import write_report

    out = write_report(args.bundle, args.out)
    print(f"segments report -> {out}")


def add_profile_parsers(commands: Any) -> None:
    """Register both sub-commands on the ``recsys`` sub-parser collection."""
    p = commands.add_parser("profile", help="print one member's profile (JSON) from a bundle")
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    p.add_argument("--user", required=True, help="user id as in the training interactions")
    p.set_defaults(func=cmd_profile)

    p = commands.add_parser(
        "segments-report", help="self-contained HTML report: segments, RFM grid, lifecycle, churn"
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    p.add_argument("--out", type=Path, required=True, help="HTML file to write")
    p.set_defaults(func=cmd_segments_report)
