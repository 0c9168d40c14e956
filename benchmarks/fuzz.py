"""The RPC fuzzing of ``tests/test_fuzz_rpcs.py`` at a larger scale (not a CI test).

``python -m benchmarks.fuzz [--scale 10] [--hypothesis-seed N]``

Runs that test file (a real server on loopback serving a tiny trained bundle, real channels,
hypothesis strategies for every RPC and for raw malformed bytes) with every example count
multiplied by ``--scale`` (``RECSYS_FUZZ_SCALE``; CI runs scale 1, at least 2,000 calls). The
invariants are the test file's: no status outside OK / INVALID_ARGUMENT / NOT_FOUND /
FAILED_PRECONDITION / RESOURCE_EXHAUSTED, answers keep the contract, health stays SERVING,
every acknowledged event is in the log. Prints the calls made per RPC and their statuses;
exits non-zero when an invariant broke (hypothesis prints the shrunk failing example).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ_TESTS = ROOT / "tests" / "test_fuzz_rpcs.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=int, default=10, help="multiplier of every example count (default 10)"
    )
    parser.add_argument("--hypothesis-seed", type=int, help="fix hypothesis's seed (reproduce a run)")
    args = parser.parse_args(argv)
    if args.scale < 1:
        raise SystemExit("--scale: must be >= 1")
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(FUZZ_TESTS)]
    if args.hypothesis_seed is not None:
        command.append(f"--hypothesis-seed={args.hypothesis_seed}")
    started = time.monotonic()
    status = subprocess.call(command, cwd=ROOT, env={**os.environ, "RECSYS_FUZZ_SCALE": str(args.scale)})
    print(f"fuzz scale {args.scale}: exit {status} after {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
