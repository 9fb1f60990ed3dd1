"""Who may call what: one table from every RPC of every server to the roles that may call it, and the
pure decision over it. The authorization interceptor (`quota_common.authz`) enforces it; the README
prints it (`markdown(TABLE)`).

    TABLE                                     full method name -> Rule; a method not in it nobody may call
    Rule(roles, region_field=, served_region=)  who may call one RPC, and for which region
    refusal(table, method, caller, region)    None when allowed, else why not (for PERMISSION_DENIED)
      = role_refusal(...) or region_refusal(...)  the two steps, for a caller that learns the region later
    markdown(table)                           the table for the README

Regions: an agent and an order service belong to one region (the region in their SPIFFE ID). On a
region-scoped RPC such a caller acts for its own region only: at the center the region is a field of
the request (`region_field`, read after the request is decoded), on an agent it is the region that
agent serves (`served_region`). People (owners, approvers, operators) and the center belong to no
region, so a region-scoped rule does not narrow them; only the roles in `roles` may call at all.

Pure: no gRPC, no I/O, and nothing of the generated stubs (`quota_common` imports nothing of ours), so
a request's region is named by its field path and read by name from the decoded message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from quota_common.identity import PEOPLE, REGIONAL, Identity, Role

CENTER = "/quota_center.v1"
AGENT = "/region_agent.v1"
HEALTH = "/grpc.health.v1.Health"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection"


@dataclass(frozen=True)
class Rule:
    """Who may call one RPC."""

    roles: frozenset[Role]
    """The roles that may call it; an identity of any other role is refused."""
    region_field: str | None = None
    """A callee that serves every region (the center): the dotted path of the request field naming the
    region the call acts for (`agent.region`); an agent or an order service may name only its own."""
    served_region: bool = False
    """A callee that serves one region (an agent): an agent or an order service may call it only if it
    is of that region."""

    def __post_init__(self) -> None:
        if self.region_field is not None and self.served_region:
            raise ValueError("a rule takes the region from the request or from the server, not from both")

    @property
    def region_scoped(self) -> bool:
        return self.region_field is not None or self.served_region


EVERYONE = frozenset(Role)
READERS = EVERYONE - {Role.ORDERS}
"""Everyone authenticated reads at the center, except order services: they call their region's agent only."""
_OWNER = frozenset({Role.OWNER})
_ORDERS_HERE = Rule(frozenset({Role.ORDERS}), served_region=True)
_OWN_AGENT = Rule(frozenset({Role.AGENT}), region_field="agent.region")
_CATALOG = Rule(READERS, region_field="region")

TABLE: Mapping[str, Rule] = MappingProxyType(
    {
        # Budget owners write; the center also checks that the promotion is the caller's own.
        f"{CENTER}.PromotionAdmin/CreatePromotion": Rule(_OWNER),
        f"{CENTER}.PromotionAdmin/SetBudget": Rule(_OWNER),
        f"{CENTER}.PromotionAdmin/SetFrozen": Rule(_OWNER),
        f"{CENTER}.PromotionAdmin/GetPromotion": Rule(READERS),
        f"{CENTER}.PromotionAdmin/ListPromotions": Rule(READERS),
        f"{CENTER}.PromotionAdmin/GetUsage": Rule(READERS),
        f"{CENTER}.PromotionAdmin/SetEmergencyFreeze": Rule(frozenset({Role.OPERATOR})),
        f"{CENTER}.PromotionAdmin/ListAudit": Rule(frozenset(PEOPLE)),
        f"{CENTER}.PromotionAdmin/ListPending": Rule(frozenset(PEOPLE)),
        f"{CENTER}.PromotionAdmin/ApprovePending": Rule(frozenset({Role.APPROVER})),
        f"{CENTER}.PromotionAdmin/RejectPending": Rule(frozenset({Role.APPROVER})),
        f"{CENTER}.PromotionAdmin/UpdatePromotion": Rule(_OWNER),
        f"{CENTER}.PromotionAdmin/EndPromotion": Rule(_OWNER),
        f"{CENTER}.PromotionAdmin/ArchivePromotion": Rule(_OWNER),
        # Alerts are answered by people, whichever their role: an operator on call as much as an owner.
        f"{CENTER}.PromotionAdmin/ListAlerts": Rule(frozenset(PEOPLE)),
        f"{CENTER}.PromotionAdmin/AcknowledgeAlert": Rule(frozenset(PEOPLE)),
        f"{CENTER}.PromotionAdmin/GetStatement": Rule(READERS),
        f"{CENTER}.PromotionAdmin/GetHistory": Rule(READERS),
        # The agents' feed; people read it too (it is the one read of the emergency switch).
        f"{CENTER}.Catalog/Watch": _CATALOG,
        f"{CENTER}.Catalog/ListChanges": _CATALOG,
        # Quota moves only between the center and the agents of the region named.
        f"{CENTER}.Allocation/Join": Rule(frozenset({Role.AGENT}), region_field="region"),
        f"{CENTER}.Allocation/Acquire": _OWN_AGENT,
        f"{CENTER}.Allocation/AcquireOpenings": _OWN_AGENT,
        f"{CENTER}.Allocation/Renew": _OWN_AGENT,
        f"{CENTER}.Allocation/Return": _OWN_AGENT,
        # Orders, from the region's own order services.
        f"{AGENT}.RegionAgent/Deduct": _ORDERS_HERE,
        f"{AGENT}.RegionAgent/Refund": _ORDERS_HERE,
        f"{AGENT}.RegionAgent/Reserve": _ORDERS_HERE,
        f"{AGENT}.RegionAgent/Confirm": _ORDERS_HERE,
        f"{AGENT}.RegionAgent/Cancel": _ORDERS_HERE,
        f"{AGENT}.RegionAgent/GetStatus": Rule(EVERYONE, served_region=True),
        f"{AGENT}.RegionAgent/GetOrder": _ORDERS_HERE,
        # Every server: probes and grpcurl, for any authenticated identity.
        f"{HEALTH}/Check": Rule(EVERYONE),
        f"{HEALTH}/List": Rule(EVERYONE),
        f"{HEALTH}/Watch": Rule(EVERYONE),
        f"{REFLECTION}/ServerReflectionInfo": Rule(EVERYONE),
    }
)
"""The one role table. A method not in it is refused to everyone (deny by default), and a test holds
that every RPC of every service our servers register has a row."""

_WHY_REGION = {
    Role.AGENT: "an agent calls only for its own region",
    Role.ORDERS: "an order service calls only its own region's agent",
}
_PLAIN = re.compile(r"[A-Za-z0-9._-]{1,128}")


def role_refusal(table: Mapping[str, Rule], method: str, caller: Identity) -> str | None:
    """Why `caller` may not call `method` at all (no row, or not one of its roles); None if its role may."""
    rule = table.get(method)
    if rule is None:
        return f"{caller} may not call {method}: it is not in the authorization table, so nobody may call it"
    if caller.role not in rule.roles:
        needs = f"the role {_roles(rule.roles)}" if len(rule.roles) == 1 else f"one of the roles {_roles(rule.roles)}"
        return f"{caller} may not call {method}: it needs {needs}, not {caller.role}"
    return None


def region_refusal(table: Mapping[str, Rule], method: str, caller: Identity, region: str | None) -> str | None:
    """Why `caller` may not call `method` for `region` (the request's, or the serving agent's; None when
    the callee serves no region); None when the rule is not region-scoped or the caller has no region."""
    rule = table.get(method)
    if rule is None or not needs_region(rule, caller):
        return None
    if region is None:
        return f"{caller} may not call {method} here: this server serves no region, and {_WHY_REGION[caller.role]}"
    if region != caller.region:
        return f"{caller} may not call {method} for region {shown_region(region)}: {_WHY_REGION[caller.role]}"
    return None


def refusal(table: Mapping[str, Rule], method: str, caller: Identity, region: str | None = None) -> str | None:
    """Why `caller` may not call `method` for `region`; None when it may. Both steps of the decision."""
    return role_refusal(table, method, caller) or region_refusal(table, method, caller, region)


def needs_region(rule: Rule, caller: Identity) -> bool:
    """Whether the call's region decides: a region-scoped rule, and a caller that belongs to a region."""
    return rule.region_scoped and caller.role in REGIONAL


def shown_region(region: str) -> str:
    """A region as a message shows it: plain when it is a name, quoted and cut short when it is not."""
    return region if _PLAIN.fullmatch(region) else repr(region[:64]) + ("..." if len(region) > 64 else "")


def markdown(table: Mapping[str, Rule]) -> str:
    """The table as Markdown, one row per RPC in the table's order (for the README)."""
    rows = ["| RPC | who may call it | for which region |", "|---|---|---|"]
    for method, rule in table.items():
        rows.append(f"| `{method}` | {_roles(rule.roles)} | {_region_text(rule)} |")
    return "\n".join(rows) + "\n"


def _region_text(rule: Rule) -> str:
    regional = [role for role in REGIONAL if role in rule.roles]
    if not rule.region_scoped or not regional:
        return "any"
    who = " and ".join(f"{role}s" if role is Role.AGENT else "order services" for role in regional)
    if rule.served_region:
        return f"{who}: only their own region's agent"
    return f"{who}: only their own (`{rule.region_field}` of the request)"


def _roles(roles: Iterable[Role]) -> str:
    """In Role's order (center, agent, orders, owner, approver, operator), whatever the set's order."""
    present = set(roles)
    return "every role" if present == EVERYONE else ", ".join(role.value for role in Role if role in present)
