"""Render an HTML report in headless Chromium and check the screenshot is not blank.

    python -m training.reports.report_check REPORT.html --png shot.png [--width 1400 --height 2000]

Exit 0 when Chromium produced a PNG with visible content (more than a few distinct
colours), 1 otherwise, 2 when no Chromium is installed (Debian: ``apt-get install
chromium``). The page needs no network (the reports are self-contained; their charts are drawn by the
plotly.js inlined in the page, given up to 10 s of virtual time).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """The first Chromium-like executable on PATH, else None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_browser(target: str, output: list[str], width: int, height: int, timeout: float) -> str:
    """Run headless Chromium on ``target`` with the ``output`` flags; its stdout. RuntimeError on failure."""
    browser = find_browser()
    if browser is None:
        raise RuntimeError("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="report-check-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",  # running as root in containers
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",  # let the charts' scripts draw before the shot
            f"--user-data-dir={profile}",
            *output,
            f"--window-size={width},{height}",
            target,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(html: Path, png: Path, width: int = 1400, height: int = 2000, timeout: float = 120.0) -> Path:
    """Render ``html`` into ``png`` with headless Chromium; raises RuntimeError on failure."""
    _run_browser(
        Path(html).resolve().as_uri(), [f"--screenshot={Path(png).resolve()}"], width, height, timeout
    )
    if not Path(png).is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return Path(png)


def drawn_charts(url: str, timeout: float = 120.0) -> int:
    """How many Plotly charts headless Chromium drew on the page at ``url`` (a file URI or an
    http URL): the plot containers in the DOM after the scripts ran."""
    return _run_browser(url, ["--dump-dom"], 1400, 2000, timeout).count('class="plot-container')


def distinct_colours(png: Path) -> int:
    """Number of distinct RGB colours in the image (a blank page has one or two)."""
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours is not None else 1 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    if find_browser() is None:
        print("no Chromium installed (apt-get install chromium)", file=sys.stderr)
        return 2
    png = screenshot(args.html, args.png, args.width, args.height)
    colours = distinct_colours(png)
    print(f"{png}: {colours} distinct colours")
    return 0 if colours > 20 else 1


if __name__ == "__main__":
    sys.exit(main())
