"""The center's ledger: promotions and what each region holds of them. Pure: no I/O, no clock.

Per (promotion, region) an account records what the center granted, what the region
gave back, and the region's last cumulative report. The budget invariant is

    unallocated = budget - sum over regions of (granted - returned)  >= 0

and every operation here either keeps it or raises without changing anything. Callers
mutate a copy (`PromotionState.copy`) and commit it to the store, so a failed commit
leaves the live state untouched.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from quota_common.clock import iso
from quota_common.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Superseded
from quota_common.model import Kind, Promotion, Report, promotion_document, promotion_from_document
from quota_common.policy import Pacing, released_amount
from quota_common.validation import COUNTER_CEILING, MAX_COUNTER

RECENT_GRANTS_KEPT = 32
_ISO_4217 = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class GrantRecord:
    """A committed grant; `request_id` makes a retried acquire answer the same grant."""

    grant_id: str
    request_id: str
    promotion_id: str
    region: str
    incarnation: str
    amount: int
    asked: int = 0
    """What the acquire asked for, so a retry asking otherwise is told; 0 in grants stored before it was kept."""


@dataclass
class RegionAccount:
    """One region's share of one promotion. Counters without `retired_` belong to the
    current incarnation of the region's ledger; `retired_` ones sum up earlier incarnations."""

    incarnation: str = ""
    granted: int = 0
    returned: int = 0
    deducted: int = 0
    refunded: int = 0
    retired_granted: int = 0
    retired_returned: int = 0
    retired_consumed: int = 0
    """Deducted minus refunded by earlier incarnations."""
    retired_refunded: int = 0
    """Refunded by earlier incarnations, so the deductions and the refunds can be told apart (0 in accounts
    stored before it was kept: their earlier lives' refunds are netted in `retired_consumed`)."""
    written_off: int = 0
    retired_incarnations: list[str] = field(default_factory=list)
    recent_grants: list[tuple[str, int]] = field(default_factory=list)

    @property
    def outstanding(self) -> int:
        """Quota this region took from the budget and has not given back."""
        return self.retired_granted + self.granted - self.retired_returned - self.returned

    @property
    def total_granted(self) -> int:
        return self.retired_granted + self.granted

    @property
    def total_returned(self) -> int:
        return self.retired_returned + self.returned

    @property
    def consumed(self) -> int:
        return self.retired_consumed + self.deducted - self.refunded

    @property
    def issued(self) -> int:
        """Deducted by orders over every incarnation, before refunds."""
        return self.retired_consumed + self.retired_refunded + self.deducted

    @property
    def total_refunded(self) -> int:
        return self.retired_refunded + self.refunded

    @property
    def held(self) -> int:
        """Unspent quota the current incarnation holds, as of its last report."""
        return self.granted - self.returned - (self.deducted - self.refunded)

    def copied(self) -> RegionAccount:
        """A copy sharing nothing mutable with this one (its counters are ints, its lists are copied)."""
        twin = RegionAccount.__new__(RegionAccount)
        # Its fields as they are, without `copy.copy`'s generic protocol (a third of a report's copying).
        twin.__dict__ = {
            **self.__dict__,
            "retired_incarnations": list(self.retired_incarnations),
            "recent_grants": list(self.recent_grants),
        }
        return twin

    def to_document(self) -> dict[str, Any]:
        """Every field as JSON-ready values (what `dataclasses.asdict` gives, at a fraction of its cost)."""
        return {
            **vars(self),
            "retired_incarnations": list(self.retired_incarnations),
            "recent_grants": [list(made) for made in self.recent_grants],
        }


@dataclass
class PromotionState:
    promotion: Promotion
    accounts: dict[str, RegionAccount] = field(default_factory=dict)
    # Bumped by every commit; the store compares it so two writers never both win.
    version: int = 1
    statement: dict[str, Any] | None = None
    """The final statement once the promotion is settled (`quota_center.settlement`); None before."""
    numbered_by: str | None = None
    """The center group whose catalog numbered `promotion.revision`, when another group's store holds the document
    (a copy handed over, `CenterShards.sealed_states`); None: the group whose store holds it, as for every
    document from before this field. A group serves such a promotion only once renumbered in its own catalog."""
    _encoded: tuple[int, str] | None = field(default=None, init=False, repr=False, compare=False)
    """`encoded()`'s last answer and the version it was made at."""

    @property
    def unallocated(self) -> int:
        return self.promotion.budget - sum(a.outstanding for a in self.accounts.values())

    def grantable(self, now_ms: int) -> int:
        """What the center may grant now: the unallocated part of what pacing has released."""
        p = self.promotion
        if p.has_ended(now_ms):
            return 0
        released = released_amount(p.budget, p.start_ms, p.end_ms, now_ms, p.pacing, p.hourly_cap)
        unallocated = self.unallocated  # a sum over the regions, taken once: every renewal's answer asks
        return max(0, min(unallocated, released - (p.budget - unallocated)))

    def copy(self) -> PromotionState:
        """A copy to change: it shares nothing mutable with this state (a report or a grant changes one
        account; copying each by hand costs a tenth of `copy.deepcopy`)."""
        accounts = {region: account.copied() for region, account in self.accounts.items()}
        statement = None if self.statement is None else copy.deepcopy(self.statement)
        return PromotionState(self.promotion, accounts, self.version, statement, self.numbered_by)

    def account(self, region: str) -> RegionAccount:
        return self.accounts.setdefault(region, RegionAccount())

    def encoded(self) -> str:
        """The document as JSON text, encoded once per version: the center weighs a promotion's document
        when it cuts a store write into batches, and the store writes the same text. A state is changed
        only as a copy (`copy`) whose version the commit bumps before the store encodes it, so a text made
        at this version is this state's."""
        if self._encoded is None or self._encoded[0] != self.version:
            self._encoded = (self.version, json.dumps(self.to_document()))
        return self._encoded[1]

    def to_document(self) -> dict[str, Any]:
        accounts = {region: account.to_document() for region, account in self.accounts.items()}
        document = {"promotion": promotion_document(self.promotion), "accounts": accounts, "version": self.version}
        if self.statement is not None:
            document["statement"] = self.statement
        if self.numbered_by is not None:
            document["numbered_by"] = self.numbered_by
        return document

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> PromotionState:
        accounts = {}
        for region, raw in doc["accounts"].items():
            raw = dict(raw)
            raw["recent_grants"] = [(grant_id, amount) for grant_id, amount in raw["recent_grants"]]
            accounts[region] = RegionAccount(**raw)
        promotion = promotion_from_document(doc["promotion"])
        return cls(promotion, accounts, doc["version"], doc.get("statement"), doc.get("numbered_by"))


def check_creatable(promotion: Promotion, now_ms: int) -> None:
    """Rules only a promotion being created must meet (one that exists keeps its id, and its window may pass):
    typos that would make it unusable. Then `check_new_promotion`."""
    if promotion.id != promotion.id.strip() or not promotion.id.isprintable():
        # " spring" beside "spring" would be a second promotion that reads as the first in every listing,
        # and a freeze copied from one would stop the other.
        raise InvalidArgument(
            f"promotion id {promotion.id!r} starts or ends with a space, or holds a control character: "
            "give the id without them"
        )
    if promotion.end_ms <= now_ms:  # a typo in the year, most likely; and the id could never be used again
        raise InvalidArgument(
            f"the promotion's window ends at {iso(promotion.end_ms)}, before now ({iso(now_ms)}): it could "
            "sell nothing; check the end time (its year?)"
        )
    check_new_promotion(promotion)


def check_new_promotion(promotion: Promotion) -> None:
    """Rules a promotion must meet to exist; amounts and ids are checked at the edge."""
    if promotion.end_ms <= promotion.start_ms:
        raise InvalidArgument(
            f"end_time ({iso(promotion.end_ms)}) must be after start_time ({iso(promotion.start_ms)})"
        )
    if not promotion.regions:
        raise InvalidArgument("regions must name at least one region that may spend the budget")
    if len(set(promotion.regions)) != len(promotion.regions):
        raise InvalidArgument(f"regions lists a region twice: {list(promotion.regions)}")
    if promotion.kind is Kind.COUNT and promotion.currency:
        raise InvalidArgument(f"a COUNT promotion counts units and takes no currency (got {promotion.currency!r})")
    if promotion.kind is Kind.AMOUNT and not _ISO_4217.fullmatch(promotion.currency):
        raise InvalidArgument(
            f"an AMOUNT promotion needs an ISO 4217 currency such as 'EUR' (got {promotion.currency!r})"
        )
    if (promotion.pacing is Pacing.HOURLY_CAP) != (promotion.hourly_cap > 0):
        raise InvalidArgument(
            f"hourly_cap ({promotion.hourly_cap}) is required with PACING_HOURLY_CAP and only with it "
            f"(pacing is {promotion.pacing.value})"
        )


def require_owner(promotion: Promotion, caller: str, call: str) -> None:
    """Only the owner changes a promotion: `caller` is the owner role's SPIFFE ID. A promotion with no
    recorded owner (created without TLS, or before owners were recorded) may be changed by any owner."""
    if promotion.owner and promotion.owner != caller:
        raise PermissionDenied(
            f"{caller} may not call {call} on promotion {promotion.id}: it belongs to {promotion.owner}, "
            "and owners change only their own promotions"
        )


def set_budget(state: PromotionState, budget: int, expected_revision: int, revision: int) -> bool:
    """`revision`: the catalog revision the change takes. Returns whether anything changed: setting the budget
    it has is no new revision (which would make every other caller's expected revision stale) and no record."""
    promotion = state.promotion
    check_revision(promotion, expected_revision)
    if budget == promotion.budget:
        return False
    allocated = promotion.budget - state.unallocated
    if budget < allocated:
        raise FailedPrecondition(
            f"budget {budget} is below the {allocated} regions have already taken, spent or not "
            f"(granted {sum(a.total_granted for a in state.accounts.values())}, "
            f"returned {sum(a.total_returned for a in state.accounts.values())}); "
            f"the lowest possible budget now is {allocated}"
        )
    state.promotion = replace(promotion, budget=budget, revision=revision)
    return True


def check_revision(promotion: Promotion, expected_revision: int) -> None:
    """A change based on what the caller read: refused once the promotion moved on since."""
    if expected_revision != promotion.revision:
        raise FailedPrecondition(
            f"promotion {promotion.id} is at revision {promotion.revision}, not {expected_revision}: "
            "read it again and retry"
        )


def set_frozen(state: PromotionState, frozen: bool, revision: int) -> bool:
    """Returns whether anything changed; freezing twice is not a new revision."""
    if state.promotion.frozen == frozen:
        return False
    state.promotion = replace(state.promotion, frozen=frozen, revision=revision)
    return True


def check_region(promotion: Promotion, region: str) -> None:
    if not promotion.allows(region):
        raise PermissionDenied(
            f"region {region!r} may not spend promotion {promotion.id} (allowed: {', '.join(promotion.regions)})"
        )


def check_reporter(state: PromotionState, region: str) -> None:
    """A region may report on (and give back) a promotion it may spend, or one it holds an account of: a
    region removed from the promotion must still give back what it holds."""
    if region not in state.accounts:
        check_region(state.promotion, region)


def admit(state: PromotionState, region: str, incarnation: str) -> bool:
    """Accepts a message from `region`'s ledger incarnation. Incarnation ids sort by age
    (an agent starts them with its start time), so a late message from a dead process
    can never displace the live one. A newer incarnation retires the current one and
    writes off what it held: that ledger is gone, so its quota is neither spendable nor
    safe to grant again. Returns whether the state changed."""
    check_reporter(state, region)
    check_not_superseded(state, region, incarnation)
    account = state.account(region)
    if account.incarnation == incarnation:
        return False
    if account.incarnation:
        _retire(account)
    account.incarnation = incarnation
    return True


def check_not_superseded(state: PromotionState, region: str, incarnation: str) -> None:
    """Raises Superseded when a newer incarnation of the region took over: whatever the caller
    holds was written off, so the process that sent it must stop, not retry."""
    account = state.accounts.get(region)
    if account is not None and account.incarnation and incarnation < account.incarnation:
        raise Superseded(
            f"ledger incarnation {incarnation} of region {region} is older than the current one "
            f"({account.incarnation}): another agent process of the region replaced this one"
        )


def _retire(account: RegionAccount) -> None:
    consumed = account.deducted - account.refunded
    account.written_off += account.granted - account.returned - consumed
    account.retired_granted += account.granted
    account.retired_returned += account.returned
    account.retired_consumed += consumed
    account.retired_refunded += account.refunded
    account.retired_incarnations.append(account.incarnation)
    account.granted = account.returned = account.deducted = account.refunded = 0
    account.recent_grants = []


def grant_id_for(promotion_id: str, region: str, request_id: str) -> str:
    """A grant's id, derived from what names its acquire: a retry names the same grant, so the center
    recognises it among the region's recent grants, from memory, without reading the store."""
    named = "\0".join((promotion_id, region, request_id)).encode()
    return hashlib.sha256(named).hexdigest()[:32]


def remembered_grant(state: PromotionState, region: str, incarnation: str, grant_id: str) -> int | None:
    """The amount of grant `grant_id` if it is one of the recent grants of `region`'s current life
    `incarnation`; None when memory cannot say (never made, made to another life, or no longer recent)."""
    account = state.accounts.get(region)
    if account is None or account.incarnation != incarnation:
        return None
    return next((amount for made, amount in account.recent_grants if made == grant_id), None)


def grant(state: PromotionState, record: GrantRecord) -> None:
    if not 0 < record.amount <= state.unallocated:
        raise FailedPrecondition(f"cannot grant {record.amount}; {state.unallocated} is unallocated")
    account = state.accounts[record.region]
    # Bounding the sum over incarnations bounds every counter of the account, so each fits the
    # wire's int64 (RegionUsage, Counters).
    if account.total_granted + record.amount > MAX_COUNTER:
        raise FailedPrecondition(
            f"region {record.region} has been granted {account.total_granted} of promotion "
            f"{state.promotion.id} over its life; a grant of {record.amount} would pass {MAX_COUNTER}, the most "
            "its counters hold: end this promotion and continue the sale in a new one"
        )
    # The region's ledger takes no grant once its own `granted` is at the ceiling; one committed
    # past it would never be applied and would be re-sent at every renewal.
    if account.granted + record.amount > COUNTER_CEILING:
        raise FailedPrecondition(
            f"region {record.region} has been granted {account.granted} of promotion {state.promotion.id} in "
            f"its ledger's incarnation {account.incarnation}; a grant of {record.amount} would take that past "
            f"{COUNTER_CEILING}, the most a region's ledger counts, so it could never be applied: start the "
            "region's agents on a new ledger (a new incarnation counts from 0; what the old one holds is written "
            "off), or end this promotion and continue the sale in a new one"
        )
    account.granted += record.amount
    account.recent_grants = [*account.recent_grants, (record.grant_id, record.amount)][-RECENT_GRANTS_KEPT:]


def apply_report(state: PromotionState, region: str, report: Report) -> bool:
    """Takes in cumulative counters. Each counter only moves forward, so a repeated or
    out-of-order report changes nothing. Returns whether the state changed."""
    check_report(state, region, report)
    account = state.accounts[region]
    before = (account.returned, account.deducted, account.refunded)
    account.returned, account.deducted, account.refunded = merged_counters(account, report)
    return before != (account.returned, account.deducted, account.refunded)


def merged_counters(account: RegionAccount, report: Report) -> tuple[int, int, int]:
    """(returned, deducted, refunded) once the report is taken in: each counter keeps its largest value."""
    return (
        max(account.returned, report.returned),
        max(account.deducted, report.deducted),
        max(account.refunded, report.refunded),
    )


def report_is_news(state: PromotionState, region: str, incarnation: str, report: Report) -> bool:
    """Whether taking in the report would change the state (admit the incarnation or move a counter)."""
    check_reporter(state, region)
    account = state.accounts.get(region)
    if account is None or account.incarnation != incarnation:
        return True
    reported = (report.returned, report.deducted, report.refunded)
    known = (account.returned, account.deducted, account.refunded)
    return any(new > old for new, old in zip(reported, known, strict=True))


def check_report(state: PromotionState, region: str, report: Report) -> None:
    """Raises InvalidArgument for counters no correct agent can send; changes nothing.

    The report is checked alone and merged with what the center already took in (each counter
    keeps its largest value): two reports each consistent alone may contradict each other, and
    what counts is the account they would leave behind."""
    account = state.accounts.get(region, RegionAccount())
    promotion_id = state.promotion.id
    if min(report.granted, report.returned, report.deducted, report.refunded) < 0:
        raise InvalidArgument(f"region {region} reports a negative counter for {promotion_id}: {report}")
    if report.granted > account.granted:
        raise InvalidArgument(
            f"region {region} reports {report.granted} granted for {promotion_id}, "
            f"but the center granted this incarnation only {account.granted}"
        )
    if not _consistent(report.granted, report.returned, report.deducted, report.refunded):
        raise InvalidArgument(f"region {region} reports inconsistent counters for {promotion_id}: {report}")
    if not _consistent(account.granted, *merged_counters(account, report)):
        raise InvalidArgument(
            f"region {region} reports {report} for {promotion_id}, which contradicts what it reported before "
            f"(returned {account.returned}, deducted {account.deducted}, refunded {account.refunded} of "
            f"{account.granted} granted): together they return and spend more than was granted, so none of it "
            "is taken in; check that one ledger serves the region"
        )


def _consistent(granted: int, returned: int, deducted: int, refunded: int) -> bool:
    """Refunds undo deductions, and a ledger spends and returns only what it was granted."""
    return refunded <= deducted and (deducted - refunded) <= granted - returned


def unapplied_grants(account: RegionAccount, report: Report) -> list[tuple[str, int]]:
    """Recent grants, when the agent's report counts less than the center granted (an
    answer was lost). The agent applies each once by id, so resending applied ones is harmless."""
    return list(account.recent_grants) if report.granted < account.granted else []
