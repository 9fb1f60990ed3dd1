"""Every identity against every RPC, on a running center and a running agent of eu (real processes, mutual
TLS): the code the role table decides (or, where it lets the call through, the handler's answer to a
well-formed request), and after every call that is not answered OK, the state exactly as it was:
promotions, usage, the audit trail, the emergency switch, the live agent's incarnation and balances.

The callers: the center, the agents and order services of eu and us, owner alice, a second owner dave,
approver bob, operator carol, and a caller with no certificate. Each request is one a legitimate caller
would send, naming region eu where it names one, so what decides is who sends it. The RPCs are the ones
the servers register, as their reflection lists them; tests/unit/test_authz.py holds the same for the
generated descriptors, and tests/service/test_authz_matrix.py the same matrix against fake handlers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_common.roles import TABLE, refusal
from quota_testing.secure_stack import (
    APPROVER,
    CALL_TIMEOUT_S,
    DAVES_SALE,
    FROZEN_SALE,
    OPERATOR,
    OTHER_OWNER,
    OWNER,
    SALE,
    SALE_BUDGET,
    SEED_ORDER,
    SEED_RESERVATIONS,
    Rogue,
    SecureStack,
    identity,
    rogue_credentials,
    secure_stack,
    seed,
)
from quota_testing.support import now_ms, order, promotion
from region_agent.v1 import region_agent_pb2 as agent_pb

pytestmark = pytest.mark.e2e

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
NO_CERTIFICATE = "no certificate"
CALLERS = (
    "center",
    "agent-eu",
    "agent-us",
    "orders-eu",
    "orders-us",
    OWNER,
    OTHER_OWNER,
    APPROVER,
    OPERATOR,
    NO_CERTIFICATE,
)
CENTER, AGENT = "center", "agent"
"""The two servers: the center, and the agent of eu."""
SERVED_REGION = "eu"
ADMIN, CATALOG, ALLOCATION = (f"/quota_center.v1.{service}/" for service in ("PromotionAdmin", "Catalog", "Allocation"))
ORDERS, HEALTH = "/region_agent.v1.RegionAgent/", "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/"


@dataclass(frozen=True)
class Rpc:
    server: str
    method: str
    """The full method name, /package.Service/Method."""
    client_streaming: bool
    server_streaming: bool

    @property
    def short(self) -> str:
        return self.method.rpartition("/")[2]


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    """Expected: the whole message, or (with `part`) a part of it; "" when it is not ours to word."""
    part: bool = False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    with secure_stack(tmp_path_factory.mktemp("matrix")) as running:
        seed(running)
        yield running


def _registered(stack: SecureStack, server: str) -> list[Rpc]:
    """Every RPC the server registers, read from its reflection (as the owner, whom reflection admits)."""
    target = stack.center.address if server == CENTER else stack.agent.address
    reflect = reflection_pb2_grpc.ServerReflectionStub(stack.channel(OWNER, target)).ServerReflectionInfo

    def ask(request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
        return next(iter(reflect(iter([request]), timeout=CALL_TIMEOUT_S)))

    listed = ask(reflection_pb2.ServerReflectionRequest(list_services=""))
    rpcs = []
    for service in listed.list_services_response.service:
        found = ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=service.name))
        for raw in found.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for described in file.service:
                if f"{file.package}.{described.name}" != service.name:
                    continue
                for method in described.method:
                    name = f"/{service.name}/{method.name}"
                    rpcs.append(Rpc(server, name, method.client_streaming, method.server_streaming))
    return rpcs


@pytest.fixture(scope="module")
def rpcs(stack: SecureStack) -> list[Rpc]:
    return _registered(stack, CENTER) + _registered(stack, AGENT)


def test_every_rpc_the_running_servers_register_has_a_row(rpcs: list[Rpc]) -> None:
    """What the processes serve, not what the generated code declares: a service registered without a
    row would be refused to everyone; a row of an RPC nobody serves is a table that drifted."""
    served = {rpc.method for rpc in rpcs}

    assert sorted(served - set(TABLE)) == [], "RPCs served without a row in roles.TABLE"
    assert sorted(set(TABLE) - served) == [], "rows of RPCs neither server registers"
    by_server = {server: {rpc.short for rpc in rpcs if rpc.server == server} for server in (CENTER, AGENT)}
    assert {"SetBudget", "Acquire", "Watch", "ServerReflectionInfo"} <= by_server[CENTER]
    assert {"Deduct", "Refund", "GetStatus", "Check", "ServerReflectionInfo"} <= by_server[AGENT]
    assert "Deduct" not in by_server[CENTER]
    assert "SetBudget" not in by_server[AGENT]


# What the handler answers a caller the table lets through, where that is not OK.
_NOT_HIS = "it belongs to spiffe://quota/owner/alice, and owners change only their own promotions"
_DAVES = "it belongs to spiffe://quota/owner/dave, and owners change only their own promotions"
HANDLER_ANSWERS = {
    # grpcio's asyncio health servicer has no List (yet).
    (None, f"{HEALTH}List"): Answer(grpc.StatusCode.UNIMPLEMENTED, ""),
    # No alert was raised: the table lets every person through, and the book has none to answer.
    (None, f"{ADMIN}AcknowledgeAlert"): Answer(
        grpc.StatusCode.NOT_FOUND,
        "no alert 'A-404'; `quota alerts --all` lists them (the oldest acknowledged ones are dropped)",
    ),
    # Owners change only their own promotions: the table lets dave call, the center refuses him.
    (OTHER_OWNER, f"{ADMIN}SetBudget"): Answer(DENIED, f"SetBudget on promotion {SALE}: {_NOT_HIS}", part=True),
    (OTHER_OWNER, f"{ADMIN}SetFrozen"): Answer(DENIED, f"SetFrozen on promotion {FROZEN_SALE}: {_NOT_HIS}", part=True),
    (OTHER_OWNER, f"{ADMIN}UpdatePromotion"): Answer(
        DENIED, f"UpdatePromotion on promotion {SALE}: {_NOT_HIS}", part=True
    ),
    # EndPromotion ends dave's sale (alice's must keep selling for the order calls): alice is refused.
    (OWNER, f"{ADMIN}EndPromotion"): Answer(DENIED, f"EndPromotion on promotion {DAVES_SALE}: {_DAVES}", part=True),
    # Only a settled promotion is archived, and the sale runs for days yet (the message names dates).
    (OWNER, f"{ADMIN}ArchivePromotion"): Answer(grpc.StatusCode.FAILED_PRECONDITION, ""),
    (OTHER_OWNER, f"{ADMIN}ArchivePromotion"): Answer(
        DENIED, f"ArchivePromotion on promotion {SALE}: {_NOT_HIS}", part=True
    ),
}

WRITTEN_OUT = {
    ("center", AGENT, "Deduct"): DENIED,
    ("center", CENTER, "GetUsage"): OK,
    (OWNER, CENTER, "GetHistory"): OK,
    ("orders-eu", CENTER, "GetHistory"): DENIED,
    ("center", CENTER, "Acquire"): DENIED,
    ("agent-eu", CENTER, "Acquire"): OK,
    ("agent-eu", CENTER, "Renew"): OK,
    ("agent-eu", CENTER, "SetBudget"): DENIED,
    ("agent-eu", AGENT, "Deduct"): DENIED,
    ("agent-eu", CENTER, "Join"): OK,
    ("agent-us", CENTER, "Join"): DENIED,
    ("agent-us", CENTER, "Acquire"): DENIED,
    ("agent-us", CENTER, "Renew"): DENIED,
    ("agent-us", CENTER, "ListChanges"): DENIED,
    ("agent-us", CENTER, "GetPromotion"): OK,
    ("agent-us", AGENT, "GetStatus"): DENIED,
    ("orders-eu", AGENT, "Deduct"): OK,
    ("orders-eu", AGENT, "Refund"): OK,
    ("orders-eu", CENTER, "GetPromotion"): DENIED,
    ("orders-eu", CENTER, "Acquire"): DENIED,
    ("orders-us", AGENT, "Deduct"): DENIED,
    ("orders-us", AGENT, "Refund"): DENIED,
    ("orders-us", AGENT, "Check"): OK,
    ("orders-eu", AGENT, "GetOrder"): OK,
    ("orders-us", AGENT, "GetOrder"): DENIED,
    (OWNER, AGENT, "GetOrder"): DENIED,
    (OWNER, CENTER, "SetBudget"): OK,
    (OWNER, CENTER, "SetEmergencyFreeze"): DENIED,
    (OWNER, CENTER, "Acquire"): DENIED,
    (OWNER, AGENT, "Refund"): DENIED,
    (OWNER, AGENT, "GetStatus"): OK,
    (OTHER_OWNER, CENTER, "SetBudget"): DENIED,
    (OTHER_OWNER, CENTER, "CreatePromotion"): OK,
    (APPROVER, CENTER, "SetFrozen"): DENIED,
    (APPROVER, CENTER, "ListAudit"): OK,
    (APPROVER, CENTER, "ApprovePending"): OK,
    (OWNER, CENTER, "ApprovePending"): DENIED,
    (OPERATOR, CENTER, "RejectPending"): DENIED,
    (OPERATOR, CENTER, "SetEmergencyFreeze"): OK,
    (OPERATOR, CENTER, "SetBudget"): DENIED,
    (NO_CERTIFICATE, CENTER, "Check"): grpc.StatusCode.UNAVAILABLE,
    (NO_CERTIFICATE, AGENT, "GetStatus"): grpc.StatusCode.UNAVAILABLE,
    (NO_CERTIFICATE, CENTER, "ServerReflectionInfo"): grpc.StatusCode.UNAVAILABLE,
}
"""Cells written out by hand, apart from the table: the expectation below derives every cell from
roles.refusal, and must agree with these, so a table broken the same way as the code cannot pass."""


def _expected(stack: SecureStack, caller: str, rpc: Rpc) -> Answer:
    """What the servers must answer `caller`: no certificate fails the TLS handshake; the table's refusal,
    word for word; else the handler's answer to a well-formed request (OK unless HANDLER_ANSWERS says)."""
    if caller == NO_CERTIFICATE:
        return Answer(grpc.StatusCode.UNAVAILABLE, "")
    why = refusal(TABLE, rpc.method, identity(stack.dev, caller), SERVED_REGION)
    if why is not None:
        return Answer(DENIED, why)
    return HANDLER_ANSWERS.get((caller, rpc.method)) or HANDLER_ANSWERS.get((None, rpc.method), Answer(OK, ""))


def test_the_expectation_agrees_with_the_cells_written_out(stack: SecureStack, rpcs: list[Rpc]) -> None:
    found = {(caller, rpc.server, rpc.short): _expected(stack, caller, rpc).code for caller in CALLERS for rpc in rpcs}

    assert {cell: found[cell] for cell in WRITTEN_OUT} == WRITTEN_OUT


def _honest_counters(stack: SecureStack, promotion_id: str) -> center_pb.Counters:
    """The live agent's own cumulative counters for `promotion_id`, as its next renewal reports them."""
    [balance] = [b for b in stack.status().balances if b.promotion_id == promotion_id]
    return center_pb.Counters(
        promotion_id=promotion_id,
        granted=balance.granted,
        returned=balance.returned,
        deducted=balance.deducted,
        refunded=balance.refunded,
    )


def _request(stack: SecureStack, caller: str, rpc: Rpc) -> Message:
    """A request of `rpc` such as its rightful caller sends, read from the state now (revisions, the live
    agent's incarnation and counters); each caller's keys are its own."""
    tag = caller.replace(" ", "-")

    def eu() -> center_pb.AgentIdentity:
        return center_pb.AgentIdentity(region=SERVED_REGION, incarnation=stack.status().incarnation)

    builders: dict[str, Callable[[], Message]] = {
        f"{ADMIN}CreatePromotion": lambda: center_pb.CreatePromotionRequest(
            promotion=promotion(f"matrix-{tag}", regions=(SERVED_REGION,)), request_id=f"create-{tag}"
        ),
        f"{ADMIN}SetBudget": lambda: center_pb.SetBudgetRequest(
            promotion_id=SALE,
            budget=stack.usage(SALE).promotion.budget * 2,  # a raise the guard rules let through
            expected_revision=stack.usage(SALE).promotion.revision,
            request_id=f"budget-{tag}",
        ),
        f"{ADMIN}SetFrozen": lambda: center_pb.SetFrozenRequest(
            promotion_id=FROZEN_SALE, frozen=False, request_id=f"thaw-{tag}"
        ),
        f"{ADMIN}UpdatePromotion": lambda: center_pb.UpdatePromotionRequest(
            promotion=center_pb.Promotion(id=SALE, max_per_order=50),  # orders here take 1: they still pass
            update_mask=FieldMask(paths=["max_per_order"]),
            expected_revision=stack.usage(SALE).promotion.revision,
            request_id=f"update-{tag}",
        ),
        f"{ADMIN}EndPromotion": lambda: center_pb.EndPromotionRequest(promotion_id=DAVES_SALE, request_id=f"end-{tag}"),
        f"{ADMIN}GetPromotion": lambda: center_pb.GetPromotionRequest(promotion_id=DAVES_SALE),
        f"{ADMIN}ListPromotions": lambda: center_pb.ListPromotionsRequest(),
        f"{ADMIN}GetUsage": lambda: center_pb.GetUsageRequest(promotion_id=SALE),
        f"{ADMIN}GetHistory": lambda: center_pb.GetHistoryRequest(promotion_id=SALE),
        f"{ADMIN}GetStatement": lambda: center_pb.GetStatementRequest(promotion_id=SALE),
        f"{ADMIN}ArchivePromotion": lambda: center_pb.ArchivePromotionRequest(
            promotion_id=SALE, request_id=f"archive-{tag}"
        ),
        f"{ADMIN}SetEmergencyFreeze": lambda: center_pb.SetEmergencyFreezeRequest(
            region="us", frozen=True, request_id=f"switch-{tag}"
        ),
        f"{ADMIN}ListAudit": lambda: center_pb.ListAuditRequest(),
        f"{ADMIN}ListPending": lambda: center_pb.ListPendingRequest(),
        f"{ADMIN}ApprovePending": lambda: center_pb.DecidePendingRequest(pending_id="P-1", request_id=f"ok-{tag}"),
        f"{ADMIN}RejectPending": lambda: center_pb.DecidePendingRequest(pending_id="P-2", reason=f"no-{tag}"),
        f"{ADMIN}ListAlerts": lambda: center_pb.ListAlertsRequest(include_acknowledged=True),
        f"{ADMIN}AcknowledgeAlert": lambda: center_pb.AcknowledgeAlertRequest(
            alert_id="A-404", cause=center_pb.ALERT_CAUSE_FALSE_ALARM, note=f"matrix-{tag}"
        ),
        f"{CATALOG}Watch": lambda: center_pb.CatalogRequest(region=SERVED_REGION),
        f"{CATALOG}ListChanges": lambda: center_pb.CatalogRequest(region=SERVED_REGION),
        # As an agent whose Redis lost its data: the region is held by the running agent's life.
        f"{ALLOCATION}Join": lambda: center_pb.JoinRequest(region=SERVED_REGION, replaces=eu().incarnation),
        f"{ALLOCATION}Acquire": lambda: center_pb.AcquireRequest(
            agent=eu(), promotion_id=SALE, amount=5, request_id=f"acquire-{tag}", demand_per_minute=1
        ),
        f"{ALLOCATION}AcquireOpenings": lambda: center_pb.AcquireOpeningsRequest(
            agent=eu(), items=[center_pb.AcquireRequest(promotion_id=SALE, amount=5, request_id=f"opening-{tag}")]
        ),
        f"{ALLOCATION}Renew": lambda: center_pb.RenewRequest(agent=eu(), counters=[_honest_counters(stack, SALE)]),
        f"{ALLOCATION}Return": lambda: center_pb.ReturnRequest(agent=eu(), counters=_honest_counters(stack, SALE)),
        f"{ORDERS}Deduct": lambda: order(f"matrix-{tag}", SERVED_REGION, (SALE, 1)),
        f"{ORDERS}Refund": lambda: agent_pb.RefundRequest(
            order_key=SEED_ORDER, refund_id=f"refund-{tag}", lines=[agent_pb.RefundLine(promotion_id=SALE, amount=1)]
        ),
        f"{ORDERS}Reserve": lambda: agent_pb.ReserveRequest(
            order_key=f"matrix-hold-{tag}",
            region=SERVED_REGION,
            lines=[agent_pb.Line(promotion_id=SALE, amount=1, user_id="user-1")],
        ),
        f"{ORDERS}Confirm": lambda: agent_pb.SettleRequest(order_key=SEED_RESERVATIONS[0]),
        f"{ORDERS}Cancel": lambda: agent_pb.SettleRequest(order_key=SEED_RESERVATIONS[1]),
        f"{ORDERS}GetStatus": lambda: agent_pb.GetStatusRequest(),
        f"{ORDERS}GetOrder": lambda: agent_pb.GetOrderRequest(order_key=SEED_ORDER),
        f"{HEALTH}Check": lambda: health_pb2.HealthCheckRequest(),
        f"{HEALTH}List": lambda: health_pb2.HealthListRequest(),
        f"{HEALTH}Watch": lambda: health_pb2.HealthCheckRequest(),
        f"{REFLECTION}ServerReflectionInfo": lambda: reflection_pb2.ServerReflectionRequest(list_services=""),
    }
    assert rpc.method in builders, f"{rpc.method} is served but the matrix has no request for it: add one here"
    return builders[rpc.method]()


def _channel(stack: SecureStack, caller: str, rpc: Rpc) -> grpc.Channel:
    target = stack.center.address if rpc.server == CENTER else stack.agent.address
    if caller != NO_CERTIFICATE:
        return stack.channel(caller, target)
    return grpc.secure_channel(target, rogue_credentials(stack.dev, Rogue.NO_CERTIFICATE))


def _raw(answer: bytes) -> bytes:
    return answer


def _call(stack: SecureStack, caller: str, rpc: Rpc) -> Answer:
    """The server's answer to one call; a streaming answer is read up to its first message."""
    channel = _channel(stack, caller, rpc)
    request = _request(stack, caller, rpc)
    encode = type(request).SerializeToString
    try:
        if rpc.client_streaming:
            bidi = channel.stream_stream(rpc.method, request_serializer=encode, response_deserializer=_raw)
            stream = bidi(iter([request]), timeout=CALL_TIMEOUT_S)
            next(stream)
            stream.cancel()
        elif rpc.server_streaming:
            watch = channel.unary_stream(rpc.method, request_serializer=encode, response_deserializer=_raw)
            stream = watch(request, timeout=CALL_TIMEOUT_S)
            next(stream)
            stream.cancel()
        else:
            channel.unary_unary(rpc.method, request_serializer=encode, response_deserializer=_raw)(
                request, timeout=CALL_TIMEOUT_S
            )
    except grpc.RpcError as error:
        failed = error
    else:
        return Answer(OK, "")
    finally:
        if caller == NO_CERTIFICATE:
            channel.close()
    assert isinstance(failed, grpc.Call), "a failed call of a sync stub is its grpc.Call"
    return Answer(failed.code(), str(failed.details()))


def _cells(stack: SecureStack, rpcs: list[Rpc], answered_ok: bool) -> list[tuple[str, Rpc, Answer]]:
    return [
        (caller, rpc, expected)
        for caller in CALLERS
        for rpc in rpcs
        if ((expected := _expected(stack, caller, rpc)).code == OK) == answered_ok
    ]


def test_every_call_not_answered_ok_gets_its_code_and_changes_nothing(stack: SecureStack, rpcs: list[Rpc]) -> None:
    """The refusals, each followed by a read of the whole state: equal to the state before the first."""
    before = stack.settle()
    cells = _cells(stack, rpcs, answered_ok=False)

    for caller, rpc, expected in cells:
        answer = _call(stack, caller, rpc)

        where = f"{caller} -> {rpc.server} {rpc.method}"
        assert answer.code == expected.code, f"{where}: {answer.details}"
        if expected.part:
            assert answer.details.startswith(f"{identity(stack.dev, caller).uri} may not call "), where
            assert expected.details in answer.details, where
        elif expected.details:
            assert answer.details == expected.details, where
        assert stack.state() == before, f"{where} was refused ({answer.code.name}), yet the state changed"

    assert len(cells) > 150
    assert {caller for caller, _, _ in cells} == set(CALLERS), "everyone is refused something"


def test_every_call_the_table_lets_through_reaches_its_handler(stack: SecureStack, rpcs: list[Rpc]) -> None:
    """The rest of the matrix: each well-formed request answered OK, writes included (they run last, since
    they change the state the refusals are compared with)."""
    cells = _cells(stack, rpcs, answered_ok=True)

    answers = {(caller, rpc.server, rpc.method): _call(stack, caller, rpc) for caller, rpc, _ in cells}

    assert {cell: answer for cell, answer in answers.items() if answer.code != OK} == {}
    assert {caller for caller, _, _ in cells} == set(CALLERS) - {NO_CERTIFICATE}
    assert stack.usage(SALE).promotion.budget == 2 * SALE_BUDGET, "alice's SetBudget took effect"
    listed = stack.admin(APPROVER).ListPending(center_pb.ListPendingRequest(), timeout=CALL_TIMEOUT_S)
    decided = {change.id: change.state for change in listed.changes}
    assert decided == {"P-1": "approved", "P-2": "rejected"}, "bob's decisions took effect"
    assert not stack.usage(FROZEN_SALE).promotion.frozen, "alice lifted her own freeze"
    assert stack.usage(SALE).promotion.max_per_order == 50, "alice's UpdatePromotion took effect"
    assert stack.usage(DAVES_SALE).promotion.end_time.ToMilliseconds() <= now_ms(), "dave ended his sale"
    assert stack.center.alive
    assert stack.agent.alive
