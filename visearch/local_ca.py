"""A local certificate authority for `visearch up --tls` (the `cryptography` library).

In ``<state dir>/tls/``: ``ca.pem`` / ``ca.key`` (the CA), ``service.pem`` / ``service.key``
(every service's certificate: server and client use, for localhost and 127.0.0.1) and
``client.pem`` / ``client.key`` (the CLI's and tests' client certificate, for mutual TLS
with the internal services). Keys are P-256 and written owner-only. A later `up` reuses
the CA and reissues the leaf certificates only when they are missing or about to expire.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 825
LEAF_DAYS = 397
# Leaf certificates closer than this to their end are issued again by `ensure_local_ca`.
RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class LocalCa:
    """The PEM files of a local CA folder."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def service_cert(self) -> Path:
        return self.folder / "service.pem"

    @property
    def service_key(self) -> Path:
        return self.folder / "service.key"

    @property
    def client_cert(self) -> Path:
        return self.folder / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.folder / "client.key"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Writes atomically (a reader sees the old or the new file, never half of one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(temporary, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "visearch local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(ca: LocalCa) -> None:
    """A new self-signed CA in `ca.folder` (replacing any there)."""
    ca.folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("visearch local CA")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(ca.ca_key, _key_pem(key), private=True)
    _write(ca.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def issue(
    ca: LocalCa,
    cert_path: Path,
    key_path: Path,
    common_name: str,
    hosts: tuple[str, ...] = LOCAL_HOSTS,
    days: int = LEAF_DAYS,
) -> x509.Certificate:
    """Signs a new key pair's certificate (server and client use, for `hosts`) with the CA;
    writes the key first, then the certificate (each atomically). Returns the certificate."""
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.ca_key} is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _fresh(cert_path: Path, key_path: Path, ca_cert: x509.Certificate) -> bool:
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.issuer == ca_cert.subject and cert.not_valid_after_utc - RENEW_BEFORE > _now()


def ensure_local_ca(folder: Path) -> LocalCa:
    """The CA and certificates in `folder`, made (or renewed) where missing or expiring."""
    ca = LocalCa(folder)
    if not (ca.ca_cert.is_file() and ca.ca_key.is_file()):
        create_ca(ca)
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    if ca_cert.not_valid_after_utc - RENEW_BEFORE <= _now():
        create_ca(ca)
        ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    if not _fresh(ca.service_cert, ca.service_key, ca_cert):
        issue(ca, ca.service_cert, ca.service_key, "visearch service")
    if not _fresh(ca.client_cert, ca.client_key, ca_cert):
        issue(ca, ca.client_cert, ca.client_key, "visearch client")
    return ca
