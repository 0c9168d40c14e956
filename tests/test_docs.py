"""The documentation outside the MkDocs site: what ``mkdocs build --strict`` (run by ``.ci/run``)
cannot see.

The site checks its own pages, links and anchors; README.md, BENCHMARKS.md and ARCHITECTURE.md
live at the repository root (GitHub shows them), so their relative links are checked here, and the
README's "Two commands", which CI and users copy, must read the same in the site's quick start.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ROOT_DOCUMENTS = ("README.md", "BENCHMARKS.md", "ARCHITECTURE.md")


def _section(text: str, heading: str) -> str:
    """The lines from ``heading`` up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = lines.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    end = len(lines)
    fenced = False
    for number in range(start + 1, len(lines)):
        line = lines[number]
        if line.startswith("```"):
            fenced = not fenced
        hashes = len(line) - len(line.lstrip("#"))
        if not fenced and 0 < hashes <= level and line[hashes : hashes + 1] == " ":
            end = number
            break
    return "\n".join(lines[start:end]).strip()


def test_the_quick_start_has_the_readme_two_commands_verbatim() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = (REPO_ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    two_commands = _section(readme, "## Two commands")
    assert "pip install -e '.[dev]' && .venv/bin/python -m pytest" in two_commands
    assert _section(quickstart, "## Two commands") == two_commands


@pytest.mark.parametrize("document", ROOT_DOCUMENTS)
def test_relative_links_of_root_documents_resolve(document: str) -> None:
    text = (REPO_ROOT / document).read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in relative if not (REPO_ROOT / t).exists()]
    assert missing == [], f"{document}: links to missing files {missing}"


def test_the_readme_marketers_day_commands_parse() -> None:
    """Every `recsys` command of README's "A marketer's day" is accepted by the real parser (flags
    renamed or removed would fail here; the commands themselves were run on `recsys demo` data)."""
    import shlex

    from training.cli.main import build_parser

    day = _section((REPO_ROOT / "README.md").read_text(encoding="utf-8"), "## A marketer's day")
    block = day.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith(".venv/bin/recsys ")]
    assert [c[1] for c in commands] == ["recommend", "serve", "campaign-report", "dashboard"]
    parser = build_parser()
    for command in commands:
        parser.parse_args(command[1:])
