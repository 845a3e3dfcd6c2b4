"""Test credentials for TLS migrations, made at test time (no key is ever committed).

``x509_dir`` writes what a ``tls-creds-x509`` directory holds, shaped like QEMU's own
migration-test certificates (tests/unit/crypto-tls-x509-helpers.h): a CA, a server
certificate for a host name and/or IP address, a client certificate with a chosen CN.
``psk_dir`` writes a GnuTLS-style ``keys.psk`` (``username:hexkey``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_NAME = "ACME QEMU Client"
HOSTILE_NAME = "ACME Hostile Client"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    dns: str | None = None,
    ip: str | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )  # fmt: skip
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=True)
    alt: list[x509.GeneralName] = []
    if dns:
        alt.append(x509.DNSName(dns))
    if ip:
        alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def x509_dir(
    path: Path,
    *,
    hostname: str | None = None,
    ip: str | None = "127.0.0.1",
    client_cn: str | None = CLIENT_NAME,
) -> Path:
    """A credentials directory usable by both endpoints (as migration-test's is)."""
    path.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("qemu-CA", ca_key, None, ca=True)
    (path / "ca-cert.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key = _key()
    server = _cert(
        hostname or ip or "localhost", server_key, (ca, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH, dns=hostname, ip=ip,
    )  # fmt: skip
    (path / "server-cert.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (path / "server-key.pem").write_bytes(_pem_key(server_key))
    if client_cn is not None:
        client_key = _key()
        client = _cert(client_cn, client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        (path / "client-cert.pem").write_bytes(client.public_bytes(serialization.Encoding.PEM))
        (path / "client-key.pem").write_bytes(_pem_key(client_key))
    for f in path.iterdir():
        f.chmod(0o600)
    return path


def psk_dir(path: Path, *, username: str = "qemu", key: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "keys.psk").write_text(f"{username}:{key or secrets.token_hex(16)}\n")
    (path / "keys.psk").chmod(0o600)
    return path
