"""A development set of certificates on disk (quota_testing.certs.write_dev_set, as `quota certs dev`
writes it), used by file name: "center", "agent-eu", "orders-eu", "owner-alice", ...

    dev = write_dev_tls(tmp_path)
    center_process(workdir, tls=dev)                          # --tls-cert center.pem ...
    dev.transport("orders-eu").aio_channel(agent.address)     # an order service of eu calling
    AsyncQuotaClient(agent.address, "eu", tls=dev.client_tls("orders-eu"))   # the same through quota_client
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from quota_client import Tls
from quota_common.identity import identity_from_certificate
from quota_common.tls import TlsFiles, TlsWatch
from quota_common.transport import DEFAULT_TRUST_DOMAIN, Transport
from quota_testing.certs import LOOPBACK, DevPlan, Issued, dev_identities, issue, serves, write_dev_set, write_pair

REGIONS = ("eu", "us", "ap")


@dataclass(frozen=True)
class DevTls:
    """The set in `directory`: its CA in ca.pem, each identity's certificate in NAME.pem and NAME-key.pem."""

    directory: Path
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def files(self, name: str) -> TlsFiles:
        return TlsFiles(self.directory / f"{name}.pem", self.directory / f"{name}-key.pem", self.directory / "ca.pem")

    def flags(self, name: str) -> list[str]:
        """What `quota center serve`, `agent serve` or `budget` is given to hold `name`'s certificate."""
        files = self.files(name)
        return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]

    def transport(self, name: str) -> Transport:
        """Mutual TLS as `name`, following its files as they change."""
        return Transport(TlsWatch(self.files(name)), self.trust_domain)

    def client_tls(self, name: str) -> Tls:
        """`name`'s certificate as quota_client takes it (an order service's, "orders-<region>")."""
        files = self.files(name)
        return Tls(files.cert, files.key, files.ca, self.trust_domain)

    def rotate(self, name: str, now: datetime, days: float = 1) -> x509.Certificate:
        """A new certificate and key for `name`, naming the same identity, from the same CA, written over its
        files while whoever uses them runs (a rotation); the new certificate."""
        identity = identity_from_certificate(self.files(name).cert.read_bytes(), self.trust_domain)
        hosts = LOOPBACK if serves(identity) else ()
        leaf = issue(self._ca(), now, days, uris=[identity.uri], hosts=hosts, server=serves(identity))
        write_pair(self.directory, name, leaf)
        return leaf.certificate

    def _ca(self) -> Issued:
        key = load_pem_private_key((self.directory / "ca-key.pem").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey), "write_dev_set makes P-256 keys"
        return Issued(x509.load_pem_x509_certificate((self.directory / "ca.pem").read_bytes()), key)


def write_dev_tls(directory: Path, regions: Sequence[str] = REGIONS) -> DevTls:
    """A development set in `directory`: the center, an agent and an order service per region, owner alice,
    approver bob and operator carol, valid from now for 90 days."""
    plan = DevPlan(dev_identities(DEFAULT_TRUST_DOMAIN, regions, ["alice"], ["bob"], ["carol"]))
    write_dev_set(directory, plan, datetime.now(UTC))
    return DevTls(directory)
