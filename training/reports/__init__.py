"""Reports for people: the A/B report from the event log, the member segments HTML page, the
live dashboard (served page), and the Plotly charts all of them draw with.

May import :mod:`serving` (bundles, the event log reader) and :mod:`training.config` /
:mod:`training.tracking`; nothing in training imports it but the CLI.
"""

__all__ = [
    "ab_plots",
    "ab_report",
    "ab_results",
    "ab_stats",
    "campaign_report",
    "charts",
    "dashboard",
    "dashboard_kpis",
    "dashboard_server",
    "report_check",
    "segments_report",
]
