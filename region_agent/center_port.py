"""The agent's port to the center: everything `Supply`, `CatalogSync` and `Agent` ask of it, in domain types.

Two adapters implement it: `region_agent.grpc_center.GrpcCenter` speaks the center's wire (following the
leader, retrying what is safe to retry) and `quota_testing.direct_center.DirectCenter` calls a `Center` in
the same process. A port serves one region, named when it is made.

Every call may be repeated: an acquire is booked under its request id, reports and returns carry cumulative
counters, and the rest only read. So a caller that got no answer asks again. What a call raises is a
QuotaError (quota_common.errors), the same whichever adapter answers:

- Unavailable: the center did not answer, or no replica leads; the call may have taken effect, so repeat it;
- Superseded: a newer process of the region replaced this incarnation; the center takes nothing more from it;
- RegionHeld: (a Join) another ledger life of the region is live; its lease may run out, so ask again after it;
- NotFound: no such promotion; PermissionDenied: the region may not spend it;
- FailedPrecondition: valid, but not now (frozen, the emergency freeze, a request id reused for another amount);
- Exhausted: the center has nothing left to grant;
- InvalidArgument: the call itself is wrong (a counter the center cannot take): a bug on the caller's side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from quota_common.model import EmergencyFreeze, Promotion, Report
from region_agent.cache import CatalogSnapshot
from region_agent.ledger.base import Balance, Joined


@dataclass(frozen=True)
class GrantAnswer:
    grant_id: str
    amount: int
    lease_ttl_s: float
    unallocated: int
    """What the center has left to grant of the promotion after this grant; 0: nothing."""


@dataclass(frozen=True)
class OpeningAnswer:
    promotion_id: str
    grant_id: str
    """Empty when refused."""
    amount: int
    refusal: str
    """Why no opening allotment was granted (what an acquire of it alone would have raised); empty if one was."""


@dataclass(frozen=True)
class RenewalDirective:
    """The center's answer to one promotion's report in a renewal."""

    promotion_id: str
    refusal: str = ""
    """Why the center refused the report; then nothing of it was taken in, the promotion's lease was not
    renewed, and the fields below say nothing. Empty when the report was taken in."""
    frozen: bool = False
    reclaim: int = 0
    """How much of its unspent allotment the region should give back (all of it when frozen)."""
    unapplied_grants: tuple[tuple[str, int], ...] = ()
    """(grant id, amount) of grants made to this incarnation that its report does not count yet, such as an
    acquire whose answer was lost: the agent applies them (each grant id at most once)."""
    revision: int = 0
    """The promotion's configuration revision: a newer one than the agent holds means it changed."""
    exhausted: bool = False
    """The center has nothing left to grant of the promotion now."""


@dataclass(frozen=True)
class RegionLease:
    """Asks a renewal to renew the region lease: the lease of every promotion of the region, reported or not."""

    catalog_revision: int
    """The revision the agent's promotion cache holds every change up to: the answer's notices name the
    region's promotions changed after it."""
    full: bool = False
    """The renewal's round reports every promotion the agent knows."""
    leaving: bool = False
    """The process's last renewal: its ledger dies with it, and it gave back what it held."""


@dataclass(frozen=True)
class RenewAnswer:
    lease_ttl_s: float
    directives: list[RenewalDirective]
    """One per reported promotion, in the order reported."""
    emergency: EmergencyFreeze
    region_lease: bool = False
    """The center renewed the lease of every promotion of the region (but those whose report it refused);
    False when it renewed only those reported (a center older than region leases, or the agent's catalog is
    too far behind): then the agent reports every promotion it wants renewed."""
    notices: list[RenewalDirective] = field(default_factory=list)
    """With the region lease: directives for promotions not reported (a newer revision, a reclaim)."""
    report_all: bool = False
    """The center wants every promotion the agent knows in the next renewal (it took over since)."""


@dataclass(frozen=True)
class Page:
    changes: CatalogSnapshot
    more: bool
    """Further changes wait past `changes.revision`: ask again from there."""


def report(balance: Balance, demand_per_minute: int = 0, below_floor: int = 0) -> Report:
    """The counters the agent reports for one promotion: its ledger's, since this incarnation began, with
    the ledger's own available and held, and its own count of order lines below the price floor."""
    return Report(
        balance.granted,
        balance.returned,
        balance.deducted,
        balance.refunded,
        demand_per_minute,
        below_floor,
        balance.available,
        balance.held,
    )


class CenterPort(Protocol):
    @property
    def calls(self) -> int:
        """Calls made to the center so far, retries included."""
        ...

    @property
    def fetches(self) -> int:
        """Promotions fetched one by one (`promotion`) so far."""
        ...

    async def join(self, replaces: str) -> Joined:
        """A new incarnation for the region's ledger, issued by the center (a new ledger life), and whether
        it replaces an earlier one; `replaces`: the life the ledger held before it lost its data, or "".
        Raises RegionHeld, Unavailable."""
        ...

    async def acquire(
        self, incarnation: str, promotion_id: str, amount: int, request_id: str, demand_per_minute: int
    ) -> GrantAnswer:
        """A grant of up to `amount` (the center sizes it by every region's demand) to this incarnation, and
        its lease renewed. Repeated with the same `request_id`, it answers the grant made the first time.
        Raises Exhausted when nothing is left to grant now; FailedPrecondition when the promotion is frozen,
        an emergency freeze covers the region, or `request_id` asked another amount before; NotFound,
        PermissionDenied, Superseded, Unavailable."""
        ...

    async def acquire_openings(
        self, incarnation: str, requests: Sequence[tuple[str, int, str]]
    ) -> tuple[list[OpeningAnswer], float]:
        """Opening allotments for at most MAX_OPENINGS (promotion id, amount, request id) items, each answered
        on its own and in order, with the lease TTL. A repeated request id answers its first grant, whatever
        amount it asks now. Raises (for the whole call) FailedPrecondition under an emergency freeze of the
        region, Superseded, Unavailable."""
        ...

    async def list_changes(self, since_revision: int) -> Page:
        """The catalog changes that matter to the region after `since_revision`, one page of them.
        Raises Unavailable."""
        ...

    def watch(self, since_revision: int, idle_timeout_s: float) -> AsyncIterator[Page]:
        """The catalog's changes from `since_revision` as they happen, and a heartbeat page (no change, the
        current revision) while there are none. Raises Unavailable when the stream breaks or stays silent
        for `idle_timeout_s`; never repeated by itself: the caller resumes from the revision it reached."""
        ...

    async def renew(
        self, incarnation: str, reports: Mapping[str, Report], region_lease: RegionLease | None = None
    ) -> RenewAnswer:
        """Reports each promotion's cumulative counters (at most MAX_RENEWAL of them) and renews their
        leases, and with `region_lease` the lease of every promotion of the region (if the answer says so);
        one refused report refuses only its own promotion (a directive's `refusal`). Raises Superseded (for
        the whole call: this process must stop spending), Unavailable."""
        ...

    async def return_quota(self, incarnation: str, promotion_id: str, counters: Report) -> int:
        """Tells the center of quota the agent already removed from its ledger (counted in `counters.returned`);
        returns what the center has left to grant. Raises NotFound, InvalidArgument, Superseded, Unavailable."""
        ...

    async def promotion(self, promotion_id: str) -> Promotion:
        """The promotion as configured now. Raises NotFound, Unavailable."""
        ...

    async def close(self) -> None:
        """Releases the connections; no call is made after it."""
        ...
