"""``python -m serving --bundle DIR|--model REF [--experiments F] [--port P]``: the serving entry point."""

from __future__ import annotations

import argparse
import logging
import sys

from serving.api.server import ServerStartupError
from serving.cli import add_serve_arguments, serve_command
from serving.errors import BundleError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-serve", description="Serve a model bundle over gRPC.")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        serve_command(args)
    except (BundleError, ServerStartupError, ValueError) as exc:  # ValueError: bad options
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
