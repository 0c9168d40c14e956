"""Model references: which bundle a server (or an experiment variant) serves.

Three forms:

* a bundle directory (``runs/ml-100k``): served as it is, never re-read;
* ``models:/NAME/VERSION``: one registered version of ``NAME`` in the MLflow model
  registry (fetched once into the bundle cache);
* ``models:/NAME@ALIAS``: whatever version the alias points at; the server watches the
  alias and swaps in the new version when it moves (:mod:`serving.lifecycle.live_models`).

Parsing is pure (no I/O, no MLflow): :func:`parse_model_ref` only checks the syntax and
makes directory paths absolute, so equal references compare equal.
"""

from __future__ import annotations

import os.path
import re
from dataclasses import dataclass
from pathlib import Path

MODELS_SCHEME = "models:/"
_VERSION = re.compile(r"[1-9][0-9]*")
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed model reference; ``text`` is its canonical form (the key it is known by).

    Exactly one of ``path`` (a bundle directory) and ``name`` (a registered model) is set;
    a registered model has exactly one of ``version`` and ``alias``.
    """

    text: str
    path: Path | None = None
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def registered(self) -> bool:
        """True for ``models:/`` references (the MLflow registry resolves them)."""
        return self.name is not None

    @property
    def watched(self) -> bool:
        """True for ``models:/NAME@ALIAS``: the version behind it can change while serving."""
        return self.alias is not None


def parse_model_ref(text: str, base_dir: Path | None = None) -> ModelRef:
    """Parse ``text``; a relative directory path is taken relative to ``base_dir`` (default: cwd).

    Raises :class:`ValueError` whose message states the problem (callers add the field).
    Whether the bundle or registered model exists is not checked here.
    """
    text = text.strip()
    if not text:
        raise ValueError("must not be empty")
    if not text.startswith(MODELS_SCHEME):
        if "://" in text or text.startswith("models:"):
            raise ValueError(
                f"{text!r} is neither a bundle directory nor models:/NAME@ALIAS or models:/NAME/VERSION"
            )
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = (base_dir if base_dir is not None else Path.cwd()) / path
        path = Path(_normalise(path))
        return ModelRef(text=str(path), path=path)
    rest = text[len(MODELS_SCHEME) :]
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        _check_name(name, text)
        if not _ALIAS.fullmatch(alias):
            raise ValueError(f"{text!r}: alias {alias!r} must be letters, digits, '_' or '-'")
        return ModelRef(text=text, name=name, alias=alias)
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        _check_name(name, text)
        if not _VERSION.fullmatch(version):
            raise ValueError(f"{text!r}: version {version!r} must be a positive integer")
        return ModelRef(text=text, name=name, version=version)
    raise ValueError(f"{text!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def is_version(text: str) -> bool:
    """Whether ``text`` is a registered version number (a positive integer, as MLflow numbers them)."""
    return _VERSION.fullmatch(text) is not None


def _check_name(name: str, text: str) -> None:
    if not name or name != name.strip() or "/" in name:
        raise ValueError(f"{text!r}: model name {name!r} must be non-empty, without '/' or edge spaces")


def _normalise(path: Path) -> str:
    # Not Path.resolve(): a symlinked bundle directory (e.g. "current" -> "v12") keeps its
    # name, so the reference means the same thing it did when it was written.
    return os.path.normpath(str(path))
