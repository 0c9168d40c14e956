"""Throwaway certificate authorities and certificates (tests, benchmarks, local trials).

``python -m serving.security.selfsigned --out DIR`` writes ``ca.pem``, ``server.pem`` /
``server.key`` (for ``localhost`` and ``127.0.0.1``) and ``client.pem`` / ``client.key``
signed by that CA, keys readable by the owner only. Production certificates come from the
organisation's CA (docs/security.md); nothing here is meant to replace it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from serving.storage import atomic_write_bytes

_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "recsys test CA", *, days: int = 30) -> Issued:
    """A self-signed CA certificate valid from yesterday for ``days`` days."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key), certificate, key)


def issue(
    ca: Issued,
    common_name: str,
    *,
    server: bool,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A leaf certificate signed by ``ca``: a server certificate for ``hosts`` (DNS names or IP
    addresses), or a client certificate. Valid from yesterday for 30 days unless told."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - _DAY)
        .not_valid_after(not_after or now + 30 * _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca.key, hashes.SHA256())
    return Issued(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key), certificate, key)


def write_pair(issued: Issued, cert_path: Path, key_path: Path) -> None:
    """Write the certificate and its key atomically; the key readable by the owner only
    (the temporary file is created 0600 and renamed, so the key is never readable by others)."""
    atomic_write_bytes(cert_path, issued.cert_pem)
    atomic_write_bytes(key_path, issued.key_pem)
    os.chmod(key_path, 0o600)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.security.selfsigned",
        description="Write a throwaway CA, a loopback server certificate and a client certificate.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write the PEM files to")
    parser.add_argument("--host", action="append", default=None, help="server name or IP (repeatable)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ca = make_ca()
    atomic_write_bytes(out / "ca.pem", ca.cert_pem)
    hosts = args.host or ["localhost", "127.0.0.1"]
    write_pair(issue(ca, hosts[0], server=True, hosts=hosts), out / "server.pem", out / "server.key")
    write_pair(issue(ca, "recsys-client", server=False), out / "client.pem", out / "client.key")
    print(f"wrote ca.pem, server.pem, server.key, client.pem, client.key to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
