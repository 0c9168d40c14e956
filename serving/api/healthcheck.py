"""Container health probe: ``python -m serving.api.healthcheck --address HOST:PORT [--timeout S]``.

Exit status 0 iff the server's standard health service reports ``SERVING`` for the
requested service (default ``""``, the whole server) within the timeout; 1 otherwise
(not serving, unreachable, timed out, unknown service). One line on stderr says why.
Used by the Dockerfile ``HEALTHCHECK`` and usable as a Kubernetes exec probe. Health checking
needs no token; a TLS port needs ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` with mutual TLS).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.client import ClientTLS, open_channel


def check(
    address: str, *, service: str = "", timeout: float = 2.0, tls: ClientTLS | None = None
) -> tuple[bool, str]:
    """Ask ``address`` for the health of ``service``; returns (serving?, human-readable status)."""
    with open_channel(address, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"health check failed: {exc.code().name}: {exc.details()}"
    status_name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status_name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.api.healthcheck", description="Exit 0 iff a gRPC server reports SERVING."
    )
    parser.add_argument("--address", default="127.0.0.1:50051", help="server host:port (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default %(default)s)")
    parser.add_argument("--service", default="", help='service name to check (default "": the whole server)')
    parser.add_argument("--tls-ca", type=Path, help="TLS port: the CA certificate (PEM) to trust")
    parser.add_argument("--tls-cert", type=Path, help="mutual TLS: client certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="mutual TLS: client private key (PEM)")
    parser.add_argument("--tls-server-name", default="", help="TLS: name to check the certificate for")
    args = parser.parse_args(argv)
    tls = None
    if args.tls_ca is not None or args.tls_cert is not None:
        try:
            tls = ClientTLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
        except ValueError as exc:
            print(f"{args.address}: {exc}", file=sys.stderr)
            return 1
    try:
        serving, status = check(args.address, service=args.service, timeout=args.timeout, tls=tls)
    except ValueError as exc:  # an unreadable TLS file
        serving, status = False, str(exc)
    if not serving:
        print(f"{args.address}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
