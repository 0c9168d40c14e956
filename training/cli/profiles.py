"""``recsys profile``, ``recsys segments-report`` and ``recsys dashboard``: member profiles of a bundle."""

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


def cmd_dashboard(args: argparse.Namespace) -> None:
    from training.reports.dashboard_server import make_server

    server = make_server(
        args.bundle,
        args.events,
        campaigns_dir=args.campaigns,
        campaign_days=args.campaign_days,
        host=args.host,
        port=args.port,
        insecure=args.insecure,
    )
    try:
        # Build the page once before serving: a bundle without profiles fails here, with its reason.
        server.render()
        print(f"dashboard -> {server.url} (rebuilt on each request; Ctrl-C stops)", flush=True)
        server.serve_forever()
    finally:
        server.server_close()


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

    p = commands.add_parser(
        "dashboard",
        help="web page on loopback: KPIs over time, A/B variants, segments, campaigns, model health",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (model version, profiles)")
    p.add_argument(
        "--events", type=Path, required=True, help="event-log directory (recsys serve --events-dir)"
    )
    p.add_argument(
        "--campaigns",
        type=Path,
        help="folder of campaign files (*.campaign.json, recsys recommend/lookalike --campaign): "
        "the latest are measured against the event log",
    )
    p.add_argument(
        "--campaign-days", type=float, default=14.0, help="campaign response window in days (default 14)"
    )
    p.add_argument("--port", type=int, default=8050, help="TCP port (default 8050; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: not exposed)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host (the page has no authentication: only behind a proxy that has)",
    )
    p.set_defaults(func=cmd_dashboard)
