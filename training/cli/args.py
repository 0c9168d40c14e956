"""Argument definitions shared by the ``recsys`` sub-commands (argparse only: cheap to import)."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config import Config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set SECTION.KEY=VALUE``."""
    parser.add_argument("--config", type=Path, help="TOML config file (see `recsys config`)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=5 (repeatable)",
    )


def config_from_arguments(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """Defaults, then ``--config``, then ``--set`` flags, then ``extra`` overrides."""
    from training.config import load_config

    return load_config(args.config, [*args.overrides, *(extra or [])])


class CommandInputError(ValueError):
    """A flag's value cannot be used; the message names the flag and what to pass instead."""


# What to do about a path, by errno (what the OS says alone rarely says which path to change).
_PATH_ADVICE = {
    errno.ENOENT: "not found",
    errno.ENOTDIR: "a part of this path is a file, not a directory: pass a path inside a directory",
    errno.EISDIR: "is a directory: pass a file path",
    errno.EEXIST: "a file is in the way: pass a path that does not exist yet, or remove it",
    errno.EACCES: "permission denied: pass a path this user may write or read",
    errno.EPERM: "operation not permitted: pass another path",
    errno.ENOSPC: "no space left on the device: free space or pass a path on another file system",
    errno.EROFS: "the file system is read-only: pass a writable path",
}


def describe_os_error(exc: OSError, args: argparse.Namespace) -> str:
    """``--flag VALUE: what is wrong and what to pass`` for an OSError about a path that came from a
    flag of ``args`` (the OS's own words and path when no flag gave it)."""
    if exc.errno is None:
        return str(exc)
    paths = [Path(os.fspath(p)) for p in (exc.filename, exc.filename2) if isinstance(p, (str, Path))]
    advice = _PATH_ADVICE.get(exc.errno, exc.strerror or str(exc))
    for name, value in vars(args).items():
        if not isinstance(value, (str, Path)) or name in ("func", "command") or not str(value):
            continue
        given = Path(os.path.abspath(value))
        if any(_related(given, Path(os.path.abspath(p))) for p in paths):
            flag = f"--{name.replace('_', '-')}" if _is_option(args, name) else name.upper()
            # The path in the way (a file where a directory must be), when it is not the flag's own.
            failed = Path(os.path.abspath(paths[0])) if paths else given
            where = f" ({failed})" if failed != given and given.is_relative_to(failed) else ""
            return f"{flag} {value}: {advice}{where}"
    return f"{paths[0] if paths else ''}: {advice}" if paths else str(exc)


def _related(given: Path, failed: Path) -> bool:
    """Whether the OS failed on ``given`` itself, a parent of it, a path inside it, or the temporary
    sibling an atomic write of it uses (``.NAME.*``)."""
    if given == failed or given.is_relative_to(failed) or failed.is_relative_to(given):
        return True
    if not failed.is_relative_to(given.parent):
        return False
    first = failed.relative_to(given.parent).parts
    return bool(first) and first[0].startswith(f".{given.name}")


def _is_option(args: argparse.Namespace, name: str) -> bool:
    # Positional arguments (``recsys import movielens SRC``) have no dashes; options do. argparse keeps
    # no record of which is which in the namespace, so the sub-commands' positionals are listed.
    return name not in _POSITIONALS


_POSITIONALS = frozenset({"src", "file", "format"})


def check_output_flags(args: argparse.Namespace) -> None:
    """Refuse, before any work, an ``--out`` under a path that is a file (training would find out only
    when it writes the bundle, minutes later). Raises :class:`CommandInputError`."""
    out = getattr(args, "out", None)
    if not isinstance(out, (str, Path)):
        return
    for parent in Path(os.path.abspath(out)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise CommandInputError(f"--out {out}: {_PATH_ADVICE[errno.ENOTDIR]} ({parent})")
            return
