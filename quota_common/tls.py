"""Mutual TLS from three files, read again when they change on disk (rotation without a restart).

    TlsFiles(cert, key, ca)          the paths --tls-cert, --tls-key and --tls-ca name
      .read(now_ms) -> TlsMaterial     read and checked; ConfigError naming the file and what to do
      .contents(), .check(...)         the same in two steps: the bytes, then the material from them
    tls_files(cert, key, ca)         TlsFiles from the three settings, None when none is given
    TlsWatch(files, clock)           the files, read again whenever one of them changes
      .current() -> TlsMaterial        the newest good material: a bad change is logged and ignored
      .server_credentials()            requires and verifies a client certificate issued by the CA;
                                       every handshake uses the newest good material
      .channel_credentials()           for one new channel: the newest good certificate, key and CA

A change is noticed by the files' bytes, read at every new connection (a few kilobytes), so a file
rewritten in place, one renamed over, and a Kubernetes Secret volume's symlink swap all count. A
change that does not check out (a certificate written before its key, say) keeps the previous
material in use, with one warning, until the files change again.

Nothing here decides who may call what: the peer's identity is
`quota_common.identity.peer_identity(context.auth_context(), trust_domain)`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from quota_common.clock import Clock, SystemClock
from quota_common.errors import ConfigError
from quota_common.identity import certificate_uris

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

_ISSUE = "(`quota certs dev DIR` writes a development set)"


@dataclass(frozen=True)
class TlsMaterial:
    """The files' contents, checked: the key is the certificate's, the chain leads to a CA in `ca`."""

    cert_chain: bytes
    """PEM: this process's certificate, then any intermediates."""
    private_key: bytes
    """PEM: the certificate's private key."""
    ca: bytes
    """PEM: the CA certificates that peers' certificates must chain to."""
    not_after: datetime
    """When this process's certificate expires (UTC)."""
    uris: tuple[str, ...]
    """The certificate's URI SANs: its identity (quota_common.identity.identity_from_uris)."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    """This process's certificate (PEM), followed by any intermediate CA certificates."""
    key: Path
    """Its private key (PEM, unencrypted)."""
    ca: Path
    """The CA certificates (PEM) that peers' certificates are verified against."""

    def read(self, now_ms: int) -> TlsMaterial:
        """The three files, checked at `now_ms`; ConfigError naming the file at fault and what to do."""
        return self.check(self.contents(), now_ms)

    def contents(self) -> tuple[bytes, bytes, bytes]:
        """The certificate, key and CA files' bytes, unchecked; ConfigError for one that cannot be read."""
        cert, key, ca = (_read(option, path) for option, path in self._options())
        return cert, key, ca

    def check(self, contents: tuple[bytes, bytes, bytes], now_ms: int) -> TlsMaterial:
        """`contents` (as `contents()` read them) as material, if they check out at `now_ms`."""
        cert_pem, key_pem, ca_pem = contents
        chain = _certificates("--tls-cert", self.cert, cert_pem)
        authorities = _certificates("--tls-ca", self.ca, ca_pem)
        key = _private_key(self.key, key_pem)
        leaf = chain[0]
        if _public(key) != _public(leaf):
            raise ConfigError(
                f"--tls-key {self.key} is not the key of --tls-cert {self.cert}: give the key file written with "
                "that certificate (during a rotation, replace both)"
            )
        _require_issued(self, chain, authorities)
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        if leaf.not_valid_after_utc <= now:
            raise ConfigError(
                f"--tls-cert {self.cert} expired at {leaf.not_valid_after_utc.isoformat()}: issue a new one {_ISSUE}"
            )
        if all(authority.not_valid_after_utc <= now for authority in authorities):
            raise ConfigError(f"--tls-ca {self.ca}: every CA certificate in it has expired; give the current CA")
        return TlsMaterial(cert_pem, key_pem, ca_pem, leaf.not_valid_after_utc, certificate_uris(leaf))

    def _options(self) -> tuple[tuple[str, Path], ...]:
        return (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca))


def tls_files(cert: str | Path | None, key: str | Path | None, ca: str | Path | None) -> TlsFiles | None:
    """The three settings as TlsFiles; None when none is given (plaintext); ConfigError when only some are."""
    if cert and key and ca:
        return TlsFiles(Path(cert), Path(key), Path(ca))
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    missing = [option for option, value in given.items() if not value]
    if len(missing) == len(given):
        return None
    raise ConfigError(
        f"mutual TLS needs --tls-cert, --tls-key and --tls-ca together; {' and '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} missing {_ISSUE}"
    )


class TlsWatch:
    """TlsFiles read now (ConfigError if they do not check out) and again whenever they change.

    Thread-safe: gRPC asks for the server's material from its own threads, at every handshake."""

    def __init__(self, files: TlsFiles, clock: Clock | None = None) -> None:
        self.files = files
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._contents = files.contents()
        self._material = files.check(self._contents, self._clock.wall_ms())
        self._problem = ""

    def current(self) -> TlsMaterial:
        """The newest material that checked out. The files are read on every call (a few kilobytes, once
        per connection) and checked only when their bytes differ from the last read's."""
        with self._lock:
            try:
                contents = self.files.contents()
                self._problem = ""
                if contents != self._contents:
                    self._contents = contents
                    self._material = self.files.check(contents, self._clock.wall_ms())
                    log.info("TLS files reloaded: %s, valid until %s", self.files.cert, self._material.not_after)
            except ConfigError as error:
                if error.message != self._problem:  # once per problem, not once per connection
                    log.warning("TLS files do not check out; still using the previous ones: %s", error.message)
                self._problem = error.message
            return self._material

    def server_credentials(self) -> grpc.ServerCredentials:
        """For add_secure_port: every client must present a certificate that chains to the CA, or the
        handshake fails; each new connection's handshake uses the newest good material."""
        served = self.current()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            material = self.current()
            if material is served:
                return None  # gRPC keeps what it has
            served = material
            return _server_configuration(material)

        return grpc.dynamic_ssl_server_credentials(
            _server_configuration(served),
            cast("Callable[[], grpc.ServerCertificateConfiguration]", fetch),  # the stubs leave out None
            require_client_authentication=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For one new secure channel: verifies the server against the CA (and the target's host name
        against the server certificate's DNS and IP SANs), presenting this process's certificate. A
        channel keeps what it was made with: make a new channel to use rotated files."""
        material = self.current()
        return grpc.ssl_channel_credentials(
            root_certificates=material.ca, private_key=material.private_key, certificate_chain=material.cert_chain
        )


def _server_configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(material.private_key, material.cert_chain)], material.ca)


def _read(option: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{option} {path}: cannot read it ({error.strerror}) {_ISSUE}") from None


def _certificates(option: str, path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ConfigError(f"{option} {path}: no PEM certificate in it (-----BEGIN CERTIFICATE----- ...)") from None


def _private_key(path: Path, pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError(
            f"--tls-key {path}: the key is encrypted; give it unencrypted, readable only by this user"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"--tls-key {path}: no PEM private key in it (-----BEGIN PRIVATE KEY----- ...)") from None


def _public(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _require_issued(files: TlsFiles, chain: list[x509.Certificate], authorities: list[x509.Certificate]) -> None:
    """Each certificate of the chain issued by the next, the last by (or being) a CA of `authorities`:
    peers check the same, so a certificate from another CA would only fail later, at every handshake."""
    for certificate, issuer in itertools.pairwise(chain):
        if not _issued_by(certificate, issuer):
            raise ConfigError(
                f"--tls-cert {files.cert}: its certificates are not a chain (each must be issued by the next); "
                "put this process's certificate first, then its intermediates in order"
            )
    last = chain[-1]
    if not any(last == authority or _issued_by(last, authority) for authority in authorities):
        raise ConfigError(
            f"--tls-cert {files.cert} was not issued by a CA in --tls-ca {files.ca} "
            f"(it was issued by {last.issuer.rfc4514_string()!r}): give that CA, or a certificate from this one"
        )


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
