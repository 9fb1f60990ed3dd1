"""A center and an agent of eu as real processes with mutual TLS, and what a security test needs around
them: a channel as each identity of the development set, certificates no deployment accepts, and the
state a refused call must leave as it was.

    with secure_stack(workdir) as stack:
        admin = center_grpc.PromotionAdminStub(stack.channel("owner-alice"))
        before = stack.state()
        ...                                   # a call that must be refused
        assert stack.state() == before

The set (`write_secure_set`) is `quota certs dev`'s with a second owner, dave, so that one owner can
try to change another's promotion. `rogue_credentials` presents what an attacker on the network has:
no certificate, an expired one, one from another CA, one that names nobody.

`State` is what a caller could have changed: every promotion, its usage at the center (the books of
each region, its lease included), the audit trail, the emergency switch, and the live agent's
incarnation and balances. Left out is what moves by itself while nothing changes: the demand each
renewal reports (a smoothed rate), the lease's remaining milliseconds, the agent's call counters.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.identity import Identity, identity_from_certificate
from quota_common.transport import DEFAULT_TRUST_DOMAIN
from quota_testing.certs import DevPlan, Issued, dev_identities, issue, new_ca, write_dev_set
from quota_testing.launch import ServerProcess, agent_process, center_process
from quota_testing.support import order, promotion
from quota_testing.tls import DevTls
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

REGIONS = ("eu", "us")
OWNER, OTHER_OWNER, APPROVER, OPERATOR = "owner-alice", "owner-dave", "approver-bob", "operator-carol"
NAMES = ("center", "agent-eu", "agent-us", "orders-eu", "orders-us", OWNER, OTHER_OWNER, APPROVER, OPERATOR)
"""Every certificate of the set, by file name."""
READER = OWNER
"""Who reads the state: an owner may read everything a snapshot needs (the audit trail only people may)."""
RENEW_INTERVAL_S = 0.1
CALL_TIMEOUT_S = 10.0
"""Only so that a broken link fails the test instead of hanging it; no call comes near it."""


class Rogue(enum.Enum):
    """What a caller without an identity of this deployment presents over TLS."""

    NO_CERTIFICATE = "no certificate"
    EXPIRED = "an expired certificate"
    ANOTHER_CA = "a certificate from another CA"
    NO_SAN_URI = "a certificate with no SAN URI"


def write_secure_set(directory: Path, regions: Sequence[str] = REGIONS) -> DevTls:
    """`quota certs dev`'s set for `regions`, with owners alice and dave, approver bob, operator carol."""
    identities = dev_identities(DEFAULT_TRUST_DOMAIN, regions, ["alice", "dave"], ["bob"], ["carol"])
    write_dev_set(directory, DevPlan(identities), datetime.now(UTC))
    return DevTls(directory)


def identity(dev: DevTls, name: str) -> Identity:
    """Who the certificate `name` of the set names."""
    return identity_from_certificate(dev.files(name).cert.read_bytes(), dev.trust_domain)


def rogue_credentials(dev: DevTls, rogue: Rogue, posing_as: str = OWNER) -> grpc.ChannelCredentials:
    """Channel credentials that trust the deployment's CA (so the client accepts the server) but present
    `rogue`; a certificate, where there is one, names the identity of `posing_as`. Built from raw PEM, not
    through quota_common.tls, whose checks an attacker does not run."""
    root = dev.files("center").ca.read_bytes()
    if rogue is Rogue.NO_CERTIFICATE:
        return grpc.ssl_channel_credentials(root_certificates=root)
    uri = identity(dev, posing_as).uri
    now = datetime.now(UTC)
    if rogue is Rogue.EXPIRED:
        leaf = issue(dev_ca(dev), now - timedelta(days=3), 1, uris=[uri])
    elif rogue is Rogue.ANOTHER_CA:
        leaf = issue(new_ca(now, 1, name="another CA"), now, 1, uris=[uri])
    else:
        leaf = issue(dev_ca(dev), now, 1)
    return grpc.ssl_channel_credentials(root, leaf.key_pem, leaf.cert_pem)


def dev_ca(dev: DevTls) -> Issued:
    """The set's CA, to issue more certificates from (another order service's, an expired one)."""
    key = load_pem_private_key((dev.directory / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey), "write_dev_set makes P-256 keys"
    return Issued(x509.load_pem_x509_certificate((dev.directory / "ca.pem").read_bytes()), key)


def _plain(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


@dataclass(frozen=True)
class State:
    """What a caller could have changed (see the module's docstring), as plain values that diff well."""

    promotions: list[dict[str, Any]]
    usage: dict[str, dict[str, Any]]
    audit: list[dict[str, Any]]
    emergency: dict[str, Any]
    agent: dict[str, Any]

    @property
    def incarnation(self) -> str:
        return str(self.agent.get("incarnation", ""))


@dataclass
class SecureStack:
    dev: DevTls
    workdir: Path
    center: ServerProcess
    agent: ServerProcess
    _channels: dict[tuple[str, str], grpc.Channel] = field(default_factory=dict)

    @property
    def database(self) -> Path:
        """The center's SQLite file (center_process's default store)."""
        return self.workdir / "center.db"

    def channel(self, name: str, target: str = "") -> grpc.Channel:
        """A channel to `target` (the center by default) holding the certificate `name`, reused."""
        target = target or self.center.address
        key = (name, target)
        if key not in self._channels:
            self._channels[key] = self.dev.transport(name).channel(target)
        return self._channels[key]

    def admin(self, name: str = OWNER) -> center_grpc.PromotionAdminStub:
        return center_grpc.PromotionAdminStub(self.channel(name))

    def allocation(self, name: str) -> center_grpc.AllocationStub:
        return center_grpc.AllocationStub(self.channel(name))

    def orders(self, name: str = "orders-eu") -> agent_grpc.RegionAgentStub:
        return agent_grpc.RegionAgentStub(self.channel(name, self.agent.address))

    def status(self) -> agent_pb.RegionStatus:
        return self.orders(READER).GetStatus(agent_pb.GetStatusRequest(), timeout=CALL_TIMEOUT_S)

    def create(self, promotion: center_pb.Promotion, name: str = OWNER, request_id: str = "") -> center_pb.Promotion:
        request = center_pb.CreatePromotionRequest(promotion=promotion, request_id=request_id)
        return self.admin(name).CreatePromotion(request, timeout=CALL_TIMEOUT_S)

    def usage(self, promotion_id: str) -> center_pb.Usage:
        return self.admin(READER).GetUsage(center_pb.GetUsageRequest(promotion_id=promotion_id), timeout=CALL_TIMEOUT_S)

    def audit(self) -> list[center_pb.AuditRecord]:
        records: list[center_pb.AuditRecord] = []
        token = ""
        while True:
            answer = self.admin(READER).ListAudit(center_pb.ListAuditRequest(page_token=token), timeout=CALL_TIMEOUT_S)
            records.extend(answer.records)
            token = answer.next_page_token
            if not token:
                return records

    def state(self) -> State:
        admin = self.admin(READER)
        listed = admin.ListPromotions(center_pb.ListPromotionsRequest(page_size=1000), timeout=CALL_TIMEOUT_S)
        assert not listed.next_page_token, "a test's stack holds fewer promotions than a page"
        usage = {}
        for listed_promotion in listed.promotions:
            books = _plain(self.usage(listed_promotion.id))
            for region in books.get("regions", []):
                region.pop("demand_per_minute", None)
            usage[listed_promotion.id] = books
        catalog = center_grpc.CatalogStub(self.channel(READER)).ListChanges(
            center_pb.CatalogRequest(region=REGIONS[0], since_revision=2**62), timeout=CALL_TIMEOUT_S
        )
        agent = _plain(self.status())
        for balance in agent.get("balances", []):
            balance.pop("lease_remaining_ms", None)
        kept = {key: agent.get(key) for key in ("region", "incarnation", "balances", "catalog_revision")}
        return State(
            promotions=[_plain(listed_promotion) for listed_promotion in listed.promotions],
            usage=usage,
            audit=[_plain(record) for record in self.audit()],
            emergency=_plain(catalog.emergency),
            agent=kept,
        )

    def settle(self, quiet_s: float = 3 * RENEW_INTERVAL_S, timeout_s: float = 30.0) -> State:
        """The state once it stopped moving: the same in two reads `quiet_s` apart (the live agent's
        renewals and refills have landed)."""
        deadline = time.monotonic() + timeout_s
        last = self.state()
        while True:
            time.sleep(quiet_s)
            now = self.state()
            if now == last:
                return now
            assert time.monotonic() < deadline, "the stack's state never stopped moving"
            last = now

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


@contextlib.contextmanager
def secure_stack(workdir: Path, *center_flags: str, store: str | None = None) -> Iterator[SecureStack]:
    """The certificates in workdir/certs, a center (SQLite in workdir unless `store`) and an agent of eu
    that renews every RENEW_INTERVAL_S, all with mutual TLS; everything stopped at the end."""
    dev = write_secure_set(workdir / "certs")
    center = center_process(workdir, *center_flags, store=store, tls=dev).start()
    stack: SecureStack | None = None
    try:
        agent = agent_process(workdir, "eu", center.address, "--renew-interval", str(RENEW_INTERVAL_S), tls=dev)
        agent.start()
        try:
            stack = SecureStack(dev, workdir, center, agent)
            yield stack
        finally:
            if stack is not None:
                stack.close()
            agent.kill()
    finally:
        center.kill()


SALE, FROZEN_SALE, DAVES_SALE = "sale", "frozen-sale", "daves-sale"
SALE_BUDGET, SEED_SPENT = 1_000, 50
SEED_ORDER, SEED_RESERVATIONS = "seed-order", ("seed-reserved-1", "seed-reserved-2")
HELD_CREATES = ("held-coupon-1", "held-coupon-2")
"""Alice's zero-threshold coupons of face value 100.00, which the shipped guard rules hold as P-1 and P-2."""


def seed(stack: SecureStack) -> State:
    """What an attacker finds: alice's sale (a budget of 1,000 for eu and us) of which the live agent of
    eu holds a grant and spent 50 (order SEED_ORDER) and holds 2 more for two reservations; alice's
    FROZEN_SALE, frozen; dave's DAVES_SALE; alice's HELD_CREATES, waiting for approval. The state once it
    settled."""
    stack.create(promotion(SALE, budget=SALE_BUDGET))
    stack.create(promotion(FROZEN_SALE, budget=SALE_BUDGET))
    stack.admin().SetFrozen(center_pb.SetFrozenRequest(promotion_id=FROZEN_SALE, frozen=True), timeout=CALL_TIMEOUT_S)
    stack.create(promotion(DAVES_SALE, budget=SALE_BUDGET), name=OTHER_OWNER)
    for promotion_id in HELD_CREATES:
        held = refused(functools.partial(stack.create, promotion(promotion_id, budget=SALE_BUDGET, face_value=10_000)))
        assert held.code() == grpc.StatusCode.FAILED_PRECONDITION, held.details()
    orders = stack.orders()
    orders.Deduct(order(SEED_ORDER, "eu", (SALE, SEED_SPENT)), timeout=CALL_TIMEOUT_S)
    for key in SEED_RESERVATIONS:
        lines = [agent_pb.Line(promotion_id=SALE, amount=1, user_id="user-1")]
        orders.Reserve(agent_pb.ReserveRequest(order_key=key, region="eu", lines=lines), timeout=CALL_TIMEOUT_S)
    return stack.settle()


def refused(call: Callable[[], object]) -> grpc.Call:
    """The error `call` fails with; AssertionError if it succeeds."""
    try:
        call()
    except grpc.RpcError as error:
        caught = error
    else:
        raise AssertionError("the call was not refused")
    assert isinstance(caught, grpc.Call), "a failed call of a sync stub is its grpc.Call"
    return caught


def code_of(error: grpc.Call) -> grpc.StatusCode:
    return error.code()


def details_of(error: grpc.Call) -> str:
    return str(error.details())
