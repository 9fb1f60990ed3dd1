"""Where a client's calls go and how they are secured, checked when the client is made.

As for the servers (quota_common.transport): with TLS files every link is mutual TLS, the client presenting
the order service's certificate (`spiffe://<domain>/region/<region>/orders[/<service>]`); without them
plaintext, and only to loopback addresses, since a plaintext call carries no identity an agent on another
machine could check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from quota_common.errors import ConfigError
from quota_common.tls import TlsFiles, TlsWatch
from quota_common.transport import DEFAULT_TRUST_DOMAIN, LOOPBACK, Transport, is_loopback

CHANNEL_OPTIONS = (("grpc.max_reconnect_backoff_ms", 2_000),)
"""An agent back from a restart is called again within 2 s (gRPC's default waits up to 2 minutes)."""
CLOSED = "this client is closed (close() was called, or its with block ended): make a new one"
"""A call on a closed client is the caller's bug, not an outcome of the call: RuntimeError, as httpx says it."""


@dataclass(frozen=True)
class Tls:
    """Mutual TLS: the order service's certificate and key, and the CA the agents' certificates chain to.
    The files are read again when they change, so a rotated certificate needs no restart."""

    cert: Path | str
    key: Path | str
    ca: Path | str
    trust_domain: str = DEFAULT_TRUST_DOMAIN


def addresses_of(addresses: str | Sequence[str]) -> tuple[str, ...]:
    found = (addresses,) if isinstance(addresses, str) else tuple(addresses)
    if not found or not all(found):
        raise ValueError("give the region's agent addresses, host:port each, at least one")
    return found


def open_links(addresses: Sequence[str], tls: Tls | None) -> Transport:
    """The transport every channel of a client is made with; ValueError saying what to change."""
    if tls is None:
        remote = [address for address in addresses if not is_loopback(address.rpartition(":")[0])]
        if remote:
            raise ValueError(
                f"plaintext only reaches agents on {LOOPBACK}, not {', '.join(remote)}: give tls=Tls(cert, key, ca) "
                "with the order service's certificate"
            )
        return Transport()
    try:
        return Transport(TlsWatch(TlsFiles(Path(tls.cert), Path(tls.key), Path(tls.ca))), tls.trust_domain)
    except ConfigError as error:
        raise ValueError(error.message) from None
