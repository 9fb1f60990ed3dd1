"""How one process's gRPC links are secured, decided once at start from its settings.

    Security(tls, trust_domain, insecure)      --tls-cert/--tls-key/--tls-ca, --trust-domain, --insecure
    open_transport(security, identity, ...)    the links, checked: ConfigError (exit 2) saying what to change
      .server_credentials()                      for add_secure_port; None: plaintext
      .material()                                the TLS material new channels get now (None: plaintext)
      .aio_channel(target) / .channel(target)    a new client channel, with the newest files
      .may_call(target)                          whether a channel may carry this link to `target`

The rules: with TLS files every link is mutual TLS (a server requires a client certificate from the
CA, and refuses plaintext), and the process's own certificate must name the identity its role has
(the center's, or an agent's of its region). Without them every link is plaintext, and plaintext
never leaves the machine: the listen address and every address called must be loopback
(127.0.0.0/8, ::1, localhost), or the process does not start. `--insecure` says plaintext is
meant; without it a server warns, once it serves, how to turn TLS on. Both at once is refused.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from quota_common.errors import ConfigError
from quota_common.identity import Identity, IdentityError, Role, identity_from_uris, require_trust_domain
from quota_common.listen import host_and_port
from quota_common.tls import TlsFiles, TlsMaterial, TlsWatch

log = logging.getLogger(__name__)

DEFAULT_TRUST_DOMAIN = "quota"
LOOPBACK = "loopback (127.0.0.0/8, ::1, localhost)"
_GIVE_TLS = "give --tls-cert, --tls-key and --tls-ca for mutual TLS (`quota certs dev DIR` writes a development set)"


@dataclass(frozen=True)
class Security:
    tls: TlsFiles | None = None
    """This process's certificate, key and CA; None: plaintext."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    """The SPIFFE trust domain every identity of this deployment belongs to."""
    insecure: bool = False
    """Plaintext is meant (loopback only): no warning. Contradicts `tls`."""

    def __post_init__(self) -> None:
        require_trust_domain(self.trust_domain)


@dataclass(frozen=True)
class Transport:
    """The links of one process. Build it with open_transport, which checks the rules above; tools and
    tests that make their own may build it directly."""

    tls: TlsWatch | None = None
    """Mutual TLS from these files, read again when they change; None: plaintext."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    warning: str = ""
    """Logged by `announce` once the process serves: what its plaintext exposes and how to secure it."""

    def server_credentials(self) -> grpc.ServerCredentials | None:
        return None if self.tls is None else self.tls.server_credentials()

    def material(self) -> TlsMaterial | None:
        """What a channel made now is secured with: a long-lived client compares it with what its channels
        were made with, since a channel keeps its credentials and only a new one uses rotated files."""
        return None if self.tls is None else self.tls.current()

    def aio_channel(
        self,
        target: str,
        options: Sequence[tuple[str, int]] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        return grpc.aio.secure_channel(target, self.tls.channel_credentials(), options, interceptors=interceptors)

    def channel(self, target: str, options: Sequence[tuple[str, int]] = ()) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(target, options)
        return grpc.secure_channel(target, self.tls.channel_credentials(), options)

    def may_call(self, target: str) -> bool:
        """A leader named by a standby is followed only if this holds: plaintext stays on loopback."""
        return self.tls is not None or is_loopback(target.rpartition(":")[0])

    def announce(self) -> None:
        if self.warning:
            log.warning("%s", self.warning)


def is_loopback(host: str) -> bool:
    """Only what cannot leave this machine: `localhost`, or an address in 127.0.0.0/8 or ::1. Other names
    are not resolved here (what a name resolves to may change); the empty host means every interface."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_transport(
    security: Security, identity: Identity | None, *, listen: str = "", center: Sequence[str] = ()
) -> Transport:
    """The links of a process that serves on `listen` (empty: none) and calls the center at `center`, with
    the certificate naming `identity` (None: any identity of the trust domain, as a person's CLI has);
    ConfigError naming the setting to change when the rules above are broken."""
    if security.tls is not None and security.insecure:
        raise ConfigError(
            "--insecure contradicts --tls-cert, --tls-key and --tls-ca: give the files for mutual TLS, "
            "or --insecure alone for plaintext on loopback"
        )
    if security.tls is not None:
        watch = TlsWatch(security.tls)
        _require_identity(security.tls, watch.current(), security.trust_domain, identity)
        return Transport(watch, security.trust_domain)
    hosts = [("--listen", listen, host_and_port(listen, "--listen")[0])] if listen else []
    hosts += [("--center", address, address.rpartition(":")[0]) for address in center]
    for option, address, host in hosts:
        if not is_loopback(host):
            why = "--insecure allows plaintext" if security.insecure else "without TLS files, plaintext is allowed"
            raise ConfigError(f"{why} only on {LOOPBACK}, not {option} {address}: {_GIVE_TLS}")
    warning = "" if security.insecure or not listen else _plaintext_warning(listen)
    return Transport(None, security.trust_domain, warning)


def _plaintext_warning(listen: str) -> str:
    return (
        f"serving plaintext on {listen}: any process on this machine may call it, unauthenticated; "
        f"{_GIVE_TLS}, or --insecure to say plaintext is meant"
    )


def _require_identity(files: TlsFiles, material: TlsMaterial, trust_domain: str, identity: Identity | None) -> None:
    """This process's own certificate names `identity`: a center started with an agent's certificate, or an
    agent of eu with one of us, would be refused by every peer, or worse, act as what it is not."""
    try:
        found = identity_from_uris(material.uris, trust_domain)
    except IdentityError as error:
        raise ConfigError(f"--tls-cert {files.cert}: {error.message}") from None
    if identity is not None and found != identity:
        raise ConfigError(
            f"--tls-cert {files.cert} names {found}, but {_role(identity)} needs a certificate naming {identity} "
            "(`quota certs dev` writes center.pem and agent-REGION.pem)"
        )


def _role(identity: Identity) -> str:
    return f"an agent of region {identity.region}" if identity.role is Role.AGENT else f"the {identity.role}"
