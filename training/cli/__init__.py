"""``recsys``: the command line, a thin shell over the typed functions of :mod:`training` and :mod:`serving`.

:mod:`~training.cli.main` parses and dispatches; each group of sub-commands has its own module so
that heavy imports happen only when that command runs.
"""

__all__ = ["args", "benchmark", "demo", "lifecycle", "main", "profiles", "tune"]
