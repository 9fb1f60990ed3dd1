"""Certificates for development and tests: a CA and one certificate per identity (`quota certs dev`).

    new_ca(now, days)                           a self-signed CA
    issue(ca, now, days, uris=, hosts=, ...)    a leaf certificate signed by `ca`
    dev_identities(trust_domain, regions, ...)  who a development deployment has, by file name
    write_dev_set(directory, plan, now)         the CA and every identity's certificate, written
    write_server_pair(directory, name, now)     a backend server's certificate (Redis, etcd) from that CA

Keys are ECDSA P-256. The center's and the agents' certificates serve too (they carry DNS and IP SANs
for `hosts`, loopback by default, which clients verify against the address they dial); the others
only authenticate clients. Not for production: there, a real CA (cert-manager, SPIRE) issues the same
SPIFFE IDs.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from quota_common.errors import ConfigError
from quota_common.identity import PEOPLE, Identity, Role, center, person, regional

LOOPBACK = ("localhost", "127.0.0.1", "::1")
_DNS = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
CA_FILES = ("ca.pem", "ca-key.pem")


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def new_ca(now: datetime, days: float, name: str = "quota development CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        _builder(subject, subject, key.public_key(), now - timedelta(minutes=5), now + timedelta(days=days))
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
    return Issued(certificate, key)


def issue(
    ca: Issued,
    now: datetime,
    days: float,
    *,
    uris: Sequence[str] = (),
    hosts: Sequence[str] = (),
    server: bool = False,
    common_name: str = "",
    not_before: datetime | None = None,
) -> Issued:
    """A certificate signed by `ca`, valid from `not_before` (5 minutes before `now`, for clocks a little
    behind) for `days` after `now`. `hosts` become DNS or IP SANs; `server` allows serving as well as
    authenticating a client. With no `uris` it names no identity (tests use that)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
    names += [_host(host) for host in hosts]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or (uris[0] if uris else "quota"))])
    start = now - timedelta(minutes=5) if not_before is None else not_before
    builder = (
        _builder(subject, ca.certificate.subject, key.public_key(), start, now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class DevPlan:
    """What `quota certs dev` writes: one certificate per identity, by file name."""

    identities: dict[str, Identity]
    hosts: tuple[str, ...] = LOOPBACK
    """DNS names and IP addresses the serving certificates (center, agents) are valid for."""
    days: float = 90


def dev_identities(
    trust_domain: str,
    regions: Sequence[str],
    owners: Sequence[str] = (),
    approvers: Sequence[str] = (),
    operators: Sequence[str] = (),
) -> dict[str, Identity]:
    """File name (without .pem) -> identity: center, agent-<region>, orders-<region>, owner-<name>,
    approver-<name>, operator-<name>. ValueError naming a region or name that cannot be an identity."""
    found = {"center": center(trust_domain)}
    for region in regions:
        found[f"agent-{region}"] = regional(trust_domain, Role.AGENT, region)
        found[f"orders-{region}"] = regional(trust_domain, Role.ORDERS, region)
    for role, names in zip(PEOPLE, (owners, approvers, operators), strict=True):
        for name in names:
            found[f"{role}-{name}"] = person(trust_domain, role, name)
    return found


def serves(identity: Identity) -> bool:
    """The center and the agents are servers as well as clients."""
    return identity.role in (Role.CENTER, Role.AGENT)


def write_dev_set(directory: Path, plan: DevPlan, now: datetime, *, force: bool = False) -> list[Path]:
    """The CA and every identity's certificate and key in `directory` (made if missing), keys 0600, each
    file replaced whole. ConfigError when a CA is there already and not `force`: replacing it would
    leave every certificate it issued untrusted."""
    existing = [directory / name for name in CA_FILES if (directory / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"{existing[0]} exists: replacing the CA would invalidate every certificate it issued; "
            "pass --force to write a new CA and new certificates, or choose another directory"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        ca = new_ca(now, plan.days)
        written = [_write(directory / "ca.pem", ca.cert_pem), _write(directory / "ca-key.pem", ca.key_pem, secret=True)]
        for name, identity in plan.identities.items():
            hosts = plan.hosts if serves(identity) else ()
            leaf = issue(ca, now, plan.days, uris=[identity.uri], hosts=hosts, server=serves(identity))
            written.append(_write(directory / f"{name}.pem", leaf.cert_pem))
            written.append(_write(directory / f"{name}-key.pem", leaf.key_pem, secret=True))
    except OSError as error:
        raise ConfigError(f"cannot write certificates to {directory}: {error.strerror}") from None
    return written


def write_pair(directory: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    """`issued` as <name>.pem and <name>-key.pem (0600), each replaced whole."""
    return (
        _write(directory / f"{name}.pem", issued.cert_pem),
        _write(directory / f"{name}-key.pem", issued.key_pem, secret=True),
    )


def load_ca(directory: Path) -> Issued:
    """The CA write_dev_set wrote to `directory` (ca.pem and ca-key.pem)."""
    key = load_pem_private_key((directory / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey), "write_dev_set makes P-256 keys"
    return Issued(x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()), key)


def write_server_pair(
    directory: Path, name: str, now: datetime, *, hosts: Sequence[str] = LOOPBACK, days: float = 1
) -> tuple[Path, Path]:
    """A certificate for a server that is not ours (the region's Redis, etcd) on `hosts`, from the CA in
    `directory`, written as <name>.pem and <name>-key.pem. It names no identity; it serves, and authenticates
    as a client too (a test's readiness probe presents it)."""
    leaf = issue(load_ca(directory), now, days, hosts=hosts, server=True, common_name=name)
    return write_pair(directory, name, leaf)


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, start: datetime, end: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def require_hosts(hosts: Sequence[str]) -> tuple[str, ...]:
    """`hosts` if each is an IP address or a DNS name; ValueError naming one that is neither."""
    for host in hosts:
        _host(host)
    return tuple(hosts)


def _host(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not _DNS.fullmatch(host):
            raise ValueError(f"{host!r} is neither an IP address nor a DNS name (such as center.example.com)") from None
        return x509.DNSName(host)


def _write(path: Path, content: bytes, *, secret: bool = False) -> Path:
    """Written beside `path`, then renamed over it: a reader (a server reloading its certificate) sees
    the old file or the new one, never half of one. Keys are created 0600, never readable by others."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
    os.replace(partial, path)
    return path
