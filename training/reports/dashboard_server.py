"""``recsys dashboard``: serve the dashboard page over HTTP (standard library), rebuilt per request.

``GET /`` answers the page of :func:`training.reports.dashboard.render_dashboard`, built
anew from the bundle and the event log on every request (so it shows the events compacted
since the last one); any other path is 404. The page has no authentication, so the server
binds loopback unless the operator passes ``insecure`` (e.g. behind an authenticating proxy).
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from serving.security.access import is_loopback
from training.reports.dashboard import render_dashboard

log = logging.getLogger(__name__)


class DashboardServer(ThreadingHTTPServer):
    """A threading HTTP server that knows the bundle and event log its page is built from."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        bundle: Path,
        events_dir: Path,
        campaigns_dir: Path | None = None,
        campaign_days: float = 14.0,
    ) -> None:
        super().__init__(address, _Handler)
        self.bundle = bundle
        self.events_dir = events_dir
        self.campaigns_dir = campaigns_dir
        self.campaign_days = campaign_days
        # One page build at a time: each reads the whole log, and two at once only double the memory.
        self.render_lock = threading.Lock()

    def render(self) -> str:
        """The page as it stands now (:func:`training.reports.dashboard.render_dashboard`)."""
        return render_dashboard(
            self.bundle, self.events_dir, campaigns_dir=self.campaigns_dir, campaign_days=self.campaign_days
        )

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/":
            self.send_error(HTTPStatus.NOT_FOUND, "the dashboard is at /")
            return
        try:
            with self.server.render_lock:
                page = self.server.render().encode("utf-8")
        except Exception:  # the server stays up; the reason goes to the operator's log, not the page
            log.exception("dashboard: building the page failed")
            self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR, "building the page failed (see the server log)")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("dashboard: " + format, *args)


def make_server(
    bundle: Path,
    events_dir: Path,
    *,
    campaigns_dir: Path | None = None,
    campaign_days: float = 14.0,
    host: str = "127.0.0.1",
    port: int = 0,
    insecure: bool = False,
) -> DashboardServer:
    """A bound (not yet serving) dashboard server; ``port`` 0 picks a free port (see ``.url``).

    Raises :class:`ValueError` for a non-loopback ``host`` without ``insecure``, a port out of
    range, a missing bundle, event-log or campaigns directory, or ``campaign_days`` <= 0.
    """
    if not is_loopback(host) and not insecure:
        raise ValueError(f"host {host!r}: not loopback; the page has no authentication (pass --insecure)")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port}: must be in 0..65535")
    if not campaign_days > 0:
        raise ValueError(f"--campaign-days {campaign_days}: must be > 0")
    folders = [("bundle", bundle), ("events", events_dir)]
    if campaigns_dir is not None:
        folders.append(("campaigns", campaigns_dir))
    for name, path in folders:
        if not Path(path).is_dir():
            raise ValueError(f"--{name} {path}: not a directory")
    return DashboardServer(
        (host, port),
        Path(bundle),
        Path(events_dir),
        Path(campaigns_dir) if campaigns_dir is not None else None,
        campaign_days,
    )


def start_in_thread(server: DashboardServer) -> threading.Thread:
    """Serve ``server`` in a daemon thread; stop it with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    return thread
