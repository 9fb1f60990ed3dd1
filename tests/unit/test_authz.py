"""The role table and the decision over it, pure: every RPC our servers register has a row, every role
against every RPC (for its own region and another) is allowed or refused with the exact message, and
the table prints as Markdown for the README."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from quota_center.v1 import quota_center_pb2
from quota_common.authz import acting_as, caller
from quota_common.identity import Identity, Role, center, person, regional
from quota_common.roles import TABLE, Rule, markdown, refusal, region_refusal, role_refusal, shown_region
from region_agent.v1 import region_agent_pb2

DOMAIN = "quota"
SERVED = (quota_center_pb2.DESCRIPTOR, region_agent_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
"""Every API a server of ours answers: the center's, the agent's, health and reflection."""

CENTER, AGENT, ORDERS, OWNER, OPERATOR = Role.CENTER, Role.AGENT, Role.ORDERS, Role.OWNER, Role.OPERATOR
ALL = set(Role)
READ = ALL - {ORDERS}
REQUEST, SERVER = "request", "server"
EXPECTED: dict[str, tuple[set[Role], str | None]] = {
    "/quota_center.v1.PromotionAdmin/CreatePromotion": ({OWNER}, None),
    "/quota_center.v1.PromotionAdmin/SetBudget": ({OWNER}, None),
    "/quota_center.v1.PromotionAdmin/SetFrozen": ({OWNER}, None),
    "/quota_center.v1.PromotionAdmin/GetPromotion": (READ, None),
    "/quota_center.v1.PromotionAdmin/ListPromotions": (READ, None),
    "/quota_center.v1.PromotionAdmin/GetUsage": (READ, None),
    "/quota_center.v1.PromotionAdmin/SetEmergencyFreeze": ({OPERATOR}, None),
    "/quota_center.v1.PromotionAdmin/ListAudit": ({OWNER, Role.APPROVER, OPERATOR}, None),
    "/quota_center.v1.PromotionAdmin/ListPending": ({OWNER, Role.APPROVER, OPERATOR}, None),
    "/quota_center.v1.PromotionAdmin/ApprovePending": ({Role.APPROVER}, None),
    "/quota_center.v1.PromotionAdmin/RejectPending": ({Role.APPROVER}, None),
    "/quota_center.v1.PromotionAdmin/UpdatePromotion": ({OWNER}, None),
    "/quota_center.v1.PromotionAdmin/EndPromotion": ({OWNER}, None),
    "/quota_center.v1.PromotionAdmin/ArchivePromotion": ({OWNER}, None),
    "/quota_center.v1.PromotionAdmin/ListAlerts": ({OWNER, Role.APPROVER, OPERATOR}, None),
    "/quota_center.v1.PromotionAdmin/AcknowledgeAlert": ({OWNER, Role.APPROVER, OPERATOR}, None),
    "/quota_center.v1.PromotionAdmin/GetStatement": (READ, None),
    "/quota_center.v1.PromotionAdmin/GetHistory": (READ, None),
    "/quota_center.v1.Catalog/Watch": (READ, REQUEST),
    "/quota_center.v1.Catalog/ListChanges": (READ, REQUEST),
    "/quota_center.v1.Allocation/Join": ({AGENT}, REQUEST),
    "/quota_center.v1.Allocation/Acquire": ({AGENT}, REQUEST),
    "/quota_center.v1.Allocation/AcquireOpenings": ({AGENT}, REQUEST),
    "/quota_center.v1.Allocation/Renew": ({AGENT}, REQUEST),
    "/quota_center.v1.Allocation/Return": ({AGENT}, REQUEST),
    "/region_agent.v1.RegionAgent/Deduct": ({ORDERS}, SERVER),
    "/region_agent.v1.RegionAgent/Refund": ({ORDERS}, SERVER),
    "/region_agent.v1.RegionAgent/Reserve": ({ORDERS}, SERVER),
    "/region_agent.v1.RegionAgent/Confirm": ({ORDERS}, SERVER),
    "/region_agent.v1.RegionAgent/Cancel": ({ORDERS}, SERVER),
    "/region_agent.v1.RegionAgent/GetStatus": (ALL, SERVER),
    "/region_agent.v1.RegionAgent/GetOrder": ({ORDERS}, SERVER),
    "/grpc.health.v1.Health/Check": (ALL, None),
    "/grpc.health.v1.Health/List": (ALL, None),
    "/grpc.health.v1.Health/Watch": (ALL, None),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": (ALL, None),
}
"""The matrix, written out apart from the table: who may call each RPC, and where the region the call
acts for comes from (the request, or the agent that serves it; None: any region)."""

IDENTITIES = {
    CENTER: center(DOMAIN),
    AGENT: regional(DOMAIN, AGENT, "eu"),
    ORDERS: regional(DOMAIN, ORDERS, "eu"),
    OWNER: person(DOMAIN, OWNER, "alice"),
    Role.APPROVER: person(DOMAIN, Role.APPROVER, "bob"),
    OPERATOR: person(DOMAIN, OPERATOR, "carol"),
}
WHY_REGION = {
    AGENT: "an agent calls only for its own region",
    ORDERS: "an order service calls only its own region's agent",
}


def _rpcs(file: FileDescriptor) -> set[str]:
    return {
        f"/{service.full_name}/{method.name}"
        for service in file.services_by_name.values()
        for method in service.methods
    }


def test_every_rpc_our_servers_answer_has_exactly_one_row() -> None:
    """A new RPC without a row is refused to everyone; this names it, so nobody finds out in production."""
    served = set().union(*map(_rpcs, SERVED))

    assert sorted(served - set(TABLE)) == [], "RPCs without a row (nobody may call them)"
    assert sorted(set(TABLE) - served) == [], "rows of RPCs that no longer exist"
    assert set(EXPECTED) == set(TABLE)


def _expected(method: str, role: Role, region: str) -> str | None:
    roles, scope = EXPECTED[method]
    uri = IDENTITIES[role].uri
    if role not in roles:
        names = [r.value for r in Role if r in roles]
        needs = f"the role {names[0]}" if len(names) == 1 else f"one of the roles {', '.join(names)}"
        return f"{uri} may not call {method}: it needs {needs}, not {role}"
    if scope is not None and role in (AGENT, ORDERS) and region != "eu":
        return f"{uri} may not call {method} for region {region}: {WHY_REGION[role]}"
    return None


@pytest.mark.parametrize(("method", "role"), list(itertools.product(EXPECTED, Role)))
def test_every_role_against_every_rpc_for_its_own_region_and_another(method: str, role: Role) -> None:
    for region in ("eu", "us"):
        assert refusal(TABLE, method, IDENTITIES[role], region) == _expected(method, role, region)


def test_the_refusals_read_as_a_person_needs_them() -> None:
    us_agent = regional(DOMAIN, AGENT, "us")
    eu_orders = regional(DOMAIN, ORDERS, "eu")

    assert refusal(TABLE, "/quota_center.v1.Allocation/Acquire", us_agent, "eu") == (
        "spiffe://quota/region/us/agent may not call /quota_center.v1.Allocation/Acquire for region eu: "
        "an agent calls only for its own region"
    )
    assert refusal(TABLE, "/quota_center.v1.PromotionAdmin/SetBudget", eu_orders) == (
        "spiffe://quota/region/eu/orders may not call /quota_center.v1.PromotionAdmin/SetBudget: "
        "it needs the role owner, not orders"
    )
    assert refusal(TABLE, "/quota_center.v1.PromotionAdmin/GetUsage", eu_orders) == (
        "spiffe://quota/region/eu/orders may not call /quota_center.v1.PromotionAdmin/GetUsage: "
        "it needs one of the roles center, agent, owner, approver, operator, not orders"
    )
    assert refusal(TABLE, "/region_agent.v1.RegionAgent/Deduct", regional(DOMAIN, ORDERS, "us"), "eu") == (
        "spiffe://quota/region/us/orders may not call /region_agent.v1.RegionAgent/Deduct for region eu: "
        "an order service calls only its own region's agent"
    )


def test_a_method_not_in_the_table_is_refused_to_everyone() -> None:
    for identity in IDENTITIES.values():
        assert refusal(TABLE, "/quota_center.v1.PromotionAdmin/DropEverything", identity) == (
            f"{identity} may not call /quota_center.v1.PromotionAdmin/DropEverything: it is not in the "
            "authorization table, so nobody may call it"
        )


def test_the_region_step_alone() -> None:
    """The interceptor asks the role first and the region once the request is decoded."""
    agent = IDENTITIES[AGENT]
    acquire = "/quota_center.v1.Allocation/Acquire"

    assert role_refusal(TABLE, acquire, agent) is None
    assert region_refusal(TABLE, acquire, agent, "eu") is None
    assert region_refusal(TABLE, acquire, agent, "") == (
        f"{agent} may not call {acquire} for region '': an agent calls only for its own region"
    )
    assert region_refusal(TABLE, "/region_agent.v1.RegionAgent/Deduct", IDENTITIES[ORDERS], None) == (
        "spiffe://quota/region/eu/orders may not call /region_agent.v1.RegionAgent/Deduct here: this server "
        "serves no region, and an order service calls only its own region's agent"
    )
    # People and the center belong to no region: a region-scoped row does not narrow them.
    assert region_refusal(TABLE, "/quota_center.v1.Catalog/Watch", IDENTITIES[OPERATOR], "anywhere") is None
    assert region_refusal(TABLE, "/region_agent.v1.RegionAgent/GetStatus", IDENTITIES[CENTER], "us") is None


def test_a_region_that_is_no_name_is_shown_quoted_and_short() -> None:
    assert shown_region("eu-west_1.b") == "eu-west_1.b"
    assert shown_region("") == "''"
    assert shown_region("\U0010ffff" * 100) == repr("\U0010ffff" * 64) + "..."
    assert shown_region("eu\nus") == "'eu\\nus'"


def _field(message: object, path: str) -> FieldDescriptor:
    descriptor = message
    field = None
    for name in path.split("."):
        field = descriptor.fields_by_name[name]  # type: ignore[attr-defined]
        descriptor = field.message_type
    assert isinstance(field, FieldDescriptor)
    return field


def test_each_region_field_is_a_string_of_a_single_request_on_the_center() -> None:
    """The interceptor reads the field by name; a renamed or retyped field fails here, not in production."""
    services = {service.full_name: service for file in SERVED for service in file.services_by_name.values()}
    for method, rule in TABLE.items():
        service, _, name = method.lstrip("/").rpartition("/")
        descriptor = services[service].methods_by_name[name]
        if rule.region_field is not None:
            assert service.startswith("quota_center.v1."), method
            assert not descriptor.client_streaming, method
            assert _field(descriptor.input_type, rule.region_field).type == FieldDescriptor.TYPE_STRING, method
        if rule.served_region:
            assert service.startswith("region_agent.v1."), method


def test_a_rule_takes_its_region_from_one_place() -> None:
    with pytest.raises(ValueError, match="not from both"):
        Rule(frozenset({AGENT}), region_field="region", served_region=True)


def test_the_table_prints_as_markdown() -> None:
    table = {
        "/x.v1.S/Write": Rule(frozenset({OWNER})),
        "/x.v1.S/Grant": Rule(frozenset({AGENT}), region_field="agent.region"),
        "/x.v1.S/Order": Rule(frozenset({ORDERS}), served_region=True),
        "/x.v1.S/Read": Rule(frozenset(Role), served_region=True),
    }

    assert markdown(table) == (
        "| RPC | who may call it | for which region |\n"
        "|---|---|---|\n"
        "| `/x.v1.S/Write` | owner | any |\n"
        "| `/x.v1.S/Grant` | agent | agents: only their own (`agent.region` of the request) |\n"
        "| `/x.v1.S/Order` | orders | order services: only their own region's agent |\n"
        "| `/x.v1.S/Read` | every role | agents and order services: only their own region's agent |\n"
    )
    printed = markdown(TABLE)
    assert printed.count("\n") == len(TABLE) + 2
    assert "| `/quota_center.v1.PromotionAdmin/SetEmergencyFreeze` | operator | any |" in printed


def test_the_readme_prints_the_role_table_the_servers_enforce() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- role-table: generated by quota_common.roles.markdown(TABLE) -->\n")
    end = readme.index("<!-- /role-table -->", start)

    assert readme[readme.index("\n", start) + 1 : end] == markdown(TABLE)


def test_the_caller_is_known_only_inside_a_call() -> None:
    alice: Identity = IDENTITIES[OWNER]
    assert caller() is None
    with acting_as(alice):
        assert caller() == alice
    assert caller() is None
