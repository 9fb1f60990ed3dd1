"""The attacks issue 20 measured on a plaintext deployment, replayed against a running center and agent of eu
(real processes, mutual TLS on): each is refused, and nothing changed: the budget, the usage and leases
at the center, the audit trail, the live agent's incarnation and balances, compared before and after.

What an attacker had, measured from outside on loopback:
- a budget of 1,000 set to 2^53 - 1 and a freeze lifted, by an anonymous caller;
- an Acquire naming region eu with a made-up incarnation, which took everything unallocated and wrote off
  the real agent's quota;
- a Renew (or Return) with the real incarnation, which marked spent quota as returned;
- an Acquire with an incarnation sorting above every real one ("\\U0010ffff" * 32), after which the center
  refused all of the region's renewals;
- refunds of anyone's orders, and orders squatting on others' keys;
- reflection and GetStatus answering anyone (GetStatus handed out the live incarnation).

Incarnations are now issued by the center (Allocation.Join, bound to the region), so the region's own
agent certificate cannot invent one either.

Here the attacker is a caller with no identity of this deployment (plaintext, no certificate, an expired
one, one from another CA, one with no SAN URI), or a certificate of the wrong role or region: another
owner, an agent of us, an order service, an owner acting as an agent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_center.v1 import quota_center_pb2_grpc as center_grpc
from quota_common.incarnation import MAX_AHEAD_S, new_incarnation
from quota_testing.certs import issue, write_pair
from quota_testing.secure_stack import (
    APPROVER,
    CALL_TIMEOUT_S,
    FROZEN_SALE,
    OPERATOR,
    OTHER_OWNER,
    OWNER,
    RENEW_INTERVAL_S,
    SALE,
    SALE_BUDGET,
    SEED_ORDER,
    SEED_RESERVATIONS,
    SEED_SPENT,
    Rogue,
    SecureStack,
    State,
    code_of,
    details_of,
    dev_ca,
    identity,
    refused,
    rogue_credentials,
    secure_stack,
    seed,
)
from quota_testing.support import order
from region_agent.v1 import region_agent_pb2 as agent_pb
from region_agent.v1 import region_agent_pb2_grpc as agent_grpc

pytestmark = pytest.mark.e2e

MAX_AMOUNT = 2**53 - 1
DENIED = grpc.StatusCode.PERMISSION_DENIED
CHECKOUT = "orders-eu-checkout"
"""Another order service of eu, with an identity of its own (spiffe://quota/region/eu/orders/checkout)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    with secure_stack(tmp_path_factory.mktemp("attacks")) as running:
        leaf = issue(dev_ca(running.dev), datetime.now(UTC), 1, uris=["spiffe://quota/region/eu/orders/checkout"])
        write_pair(running.dev.directory, CHECKOUT, leaf)
        seed(running)
        yield running


@pytest.fixture
def before(stack: SecureStack) -> State:
    """The state before a test's attacks, settled; checked against the seed's story (eu may have sold
    a unit more since: one test shows it still sells)."""
    state = stack.settle()
    [eu, us] = state.usage[SALE]["regions"]
    assert int(eu["granted"]) > int(eu["consumed"]) >= SEED_SPENT
    assert "written_off" not in eu, "nothing written off"
    assert "granted" not in us, "nothing granted to us"
    assert state.incarnation, "the live agent of eu serves"
    return state


def _unchanged(stack: SecureStack, before: State, attack: str) -> None:
    """Everything as it was, and the live agent still holds its leases (its renewals go through)."""
    assert stack.state() == before, f"{attack}: refused, yet the state changed"
    status = stack.status()
    assert all(b.lease_remaining_ms > 0 for b in status.balances if b.granted), f"{attack}: a lease lapsed"


def _set_budget(channel: grpc.Channel, stack: SecureStack) -> Callable[[], object]:
    revision = stack.usage(SALE).promotion.revision
    request = center_pb.SetBudgetRequest(promotion_id=SALE, budget=MAX_AMOUNT, expected_revision=revision)
    return lambda: center_grpc.PromotionAdminStub(channel).SetBudget(request, timeout=CALL_TIMEOUT_S)


def _lift_freeze(channel: grpc.Channel) -> Callable[[], object]:
    request = center_pb.SetFrozenRequest(promotion_id=FROZEN_SALE, frozen=False)
    return lambda: center_grpc.PromotionAdminStub(channel).SetFrozen(request, timeout=CALL_TIMEOUT_S)


def _freeze_everything(channel: grpc.Channel) -> Callable[[], object]:
    request = center_pb.SetEmergencyFreezeRequest(region="", frozen=True)
    return lambda: center_grpc.PromotionAdminStub(channel).SetEmergencyFreeze(request, timeout=CALL_TIMEOUT_S)


def _made_up_acquire(channel: grpc.Channel, stack: SecureStack, incarnation: str = "") -> Callable[[], object]:
    """An Acquire of everything unallocated for region eu, as a newer incarnation than the live one."""
    made_up = incarnation or new_incarnation(time.time_ns())
    request = center_pb.AcquireRequest(
        agent=center_pb.AgentIdentity(region="eu", incarnation=made_up),
        promotion_id=SALE,
        amount=stack.usage(SALE).unallocated,
        request_id=f"grab-{made_up[-12:]}",
        demand_per_minute=MAX_AMOUNT,
    )
    return lambda: center_grpc.AllocationStub(channel).Acquire(request, timeout=CALL_TIMEOUT_S)


def _spent_marked_returned(stack: SecureStack) -> center_pb.Counters:
    """The live agent's counters, with everything it spent reported as given back instead."""
    [balance] = [b for b in stack.status().balances if b.promotion_id == SALE]
    return center_pb.Counters(promotion_id=SALE, granted=balance.granted, returned=balance.granted)


def _forged_renew(channel: grpc.Channel, stack: SecureStack, incarnation: str = "") -> Callable[[], object]:
    agent = center_pb.AgentIdentity(region="eu", incarnation=incarnation or stack.status().incarnation)
    request = center_pb.RenewRequest(agent=agent, counters=[_spent_marked_returned(stack)])
    return lambda: center_grpc.AllocationStub(channel).Renew(request, timeout=CALL_TIMEOUT_S)


def _forged_return(channel: grpc.Channel, stack: SecureStack) -> Callable[[], object]:
    agent = center_pb.AgentIdentity(region="eu", incarnation=stack.status().incarnation)
    request = center_pb.ReturnRequest(agent=agent, counters=_spent_marked_returned(stack))
    return lambda: center_grpc.AllocationStub(channel).Return(request, timeout=CALL_TIMEOUT_S)


def _refund_seed_order(channel: grpc.Channel) -> Callable[[], object]:
    request = agent_pb.RefundRequest(order_key=SEED_ORDER)
    return lambda: agent_grpc.RegionAgentStub(channel).Refund(request, timeout=CALL_TIMEOUT_S)


def _squat_seed_order(channel: grpc.Channel) -> Callable[[], object]:
    request = order(SEED_ORDER, "eu", (SALE, 1))
    return lambda: agent_grpc.RegionAgentStub(channel).Deduct(request, timeout=CALL_TIMEOUT_S)


def _confirm_seed_reservation(channel: grpc.Channel) -> Callable[[], object]:
    request = agent_pb.SettleRequest(order_key=SEED_RESERVATIONS[0])
    return lambda: agent_grpc.RegionAgentStub(channel).Confirm(request, timeout=CALL_TIMEOUT_S)


def _status(channel: grpc.Channel) -> Callable[[], object]:
    return lambda: agent_grpc.RegionAgentStub(channel).GetStatus(agent_pb.GetStatusRequest(), timeout=CALL_TIMEOUT_S)


def _reflection(channel: grpc.Channel) -> Callable[[], object]:
    def listed() -> object:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        return next(iter(reflect(iter([request]), timeout=CALL_TIMEOUT_S)))

    return listed


@dataclass(frozen=True)
class Nobody:
    """A caller with no identity of this deployment, and how each server refuses it."""

    name: str
    code: grpc.StatusCode
    says: str
    """Part of the refusal's message; "" when the TLS handshake fails (no message of ours)."""
    rogue: Rogue | None
    """What it presents over TLS; None: plaintext."""

    def channel(self, stack: SecureStack, target: str) -> grpc.Channel:
        if self.rogue is None:
            return grpc.insecure_channel(target)
        return grpc.secure_channel(target, rogue_credentials(stack.dev, self.rogue))


HANDSHAKE_FAILS = grpc.StatusCode.UNAVAILABLE
NOBODIES = [
    Nobody("plaintext", HANDSHAKE_FAILS, "", None),
    Nobody("no certificate", HANDSHAKE_FAILS, "", Rogue.NO_CERTIFICATE),
    Nobody("an expired certificate", HANDSHAKE_FAILS, "", Rogue.EXPIRED),
    Nobody("a certificate from another CA", HANDSHAKE_FAILS, "", Rogue.ANOTHER_CA),
    Nobody(
        "a certificate with no SAN URI",
        grpc.StatusCode.UNAUTHENTICATED,
        "the certificate has no URI SAN, so it names no identity",
        Rogue.NO_SAN_URI,
    ),
]


@pytest.mark.parametrize("nobody", NOBODIES, ids=lambda nobody: nobody.name)
def test_a_caller_without_an_identity_is_refused_every_attack(
    stack: SecureStack, before: State, nobody: Nobody
) -> None:
    """Every attack of the list, by a caller that presents no identity (an expired certificate and one
    from another CA name alice's; one with no SAN URI is issued by the deployment's own CA)."""
    center = nobody.channel(stack, stack.center.address)
    agent = nobody.channel(stack, stack.agent.address)
    attacks = {
        "budget raised to 2^53 - 1": _set_budget(center, stack),
        "freeze lifted": _lift_freeze(center),
        "every sale stopped with the emergency switch": _freeze_everything(center),
        "acquire with a made-up incarnation": _made_up_acquire(center, stack),
        "renew with the real incarnation": _forged_renew(center, stack),
        "return with the real incarnation": _forged_return(center, stack),
        "an order refunded": _refund_seed_order(agent),
        "an order key squatted": _squat_seed_order(agent),
        "a reservation confirmed": _confirm_seed_reservation(agent),
        "GetStatus (the live incarnation)": _status(agent),
        "reflection of the center": _reflection(center),
        "reflection of the agent": _reflection(agent),
    }
    try:
        for attack, call in attacks.items():
            refusal = refused(call)

            assert code_of(refusal) == nobody.code, f"{attack}: {details_of(refusal)}"
            assert nobody.says in details_of(refusal), attack
            _unchanged(stack, before, attack)
    finally:
        center.close()
        agent.close()


@pytest.mark.parametrize("caller", [OTHER_OWNER, APPROVER, OPERATOR])
def test_no_one_but_its_owner_raises_a_budget_or_lifts_a_freeze(stack: SecureStack, before: State, caller: str) -> None:
    """Alice's promotions, against another owner (the center's owner check), an approver and an operator
    (the role table)."""
    center = stack.channel(caller)
    who = identity(stack.dev, caller).uri
    for attack, call in {"budget raised": _set_budget(center, stack), "freeze lifted": _lift_freeze(center)}.items():
        refusal = refused(call)

        assert code_of(refusal) == DENIED, attack
        assert details_of(refusal).startswith(f"{who} may not call "), attack
        if caller == OTHER_OWNER:
            assert "it belongs to spiffe://quota/owner/alice, and owners change only their own" in details_of(refusal)
        _unchanged(stack, before, attack)

    assert before.usage[SALE]["promotion"]["budget"] == str(SALE_BUDGET)


@pytest.mark.parametrize("caller", ["agent-us", "orders-eu", OWNER])
def test_an_acquire_for_eu_with_a_made_up_incarnation_is_refused(
    stack: SecureStack, before: State, caller: str
) -> None:
    """The issue's 935 units taken and the live agent's 50 written off: the made-up incarnation is newer than
    the live agent's, so the center would have retired it, had it let the call through."""
    made_up = new_incarnation(time.time_ns())
    assert made_up > before.incarnation

    refusal = refused(_made_up_acquire(stack.channel(caller), stack, made_up))

    assert code_of(refusal) == DENIED
    uri = identity(stack.dev, caller).uri
    if caller == "agent-us":
        assert details_of(refusal) == (
            f"{uri} may not call /quota_center.v1.Allocation/Acquire for region eu: "
            "an agent calls only for its own region"
        )
    else:
        assert details_of(refusal).startswith(f"{uri} may not call /quota_center.v1.Allocation/Acquire: it needs")
    _unchanged(stack, before, "acquire with a made-up incarnation")

    join = center_grpc.AllocationStub(stack.channel(caller)).Join
    refusal = refused(lambda: join(center_pb.JoinRequest(region="eu"), timeout=CALL_TIMEOUT_S))
    assert code_of(refusal) == DENIED, "nor may it have the center issue one for eu"
    _unchanged(stack, before, "join as eu")


def test_a_renew_or_return_with_the_real_incarnation_from_agent_us_is_refused(
    stack: SecureStack, before: State
) -> None:
    """The real incarnation, which an owner may read from GetStatus, in an agent of us's report that says
    eu's spent quota was returned: then another region could have been granted it again."""
    us = stack.channel("agent-us")

    for attack, call in {"renew": _forged_renew(us, stack), "return": _forged_return(us, stack)}.items():
        refusal = refused(call)

        assert code_of(refusal) == DENIED, attack
        assert details_of(refusal).startswith("spiffe://quota/region/us/agent may not call "), attack
        assert details_of(refusal).endswith(" for region eu: an agent calls only for its own region"), attack
        _unchanged(stack, before, attack)

    assert before.usage[SALE]["unallocated"] == stack.state().usage[SALE]["unallocated"]


def test_an_incarnation_above_every_real_one_is_invalid_even_from_the_regions_own_agent(
    stack: SecureStack, before: State
) -> None:
    """Sent with eu's own agent certificate, so the role table lets it through: the center's edge refuses
    an incarnation that is not one agents make, and one dated beyond the clock skew it allows. The region
    stays lit: the live agent renews on, and sells."""
    eu = stack.channel("agent-eu")
    far_ahead = new_incarnation(time.time_ns() + 2 * MAX_AHEAD_S * 10**9)
    for incarnation in ("\U0010ffff" * 32, far_ahead):
        assert incarnation > before.incarnation
        for attack, call in {
            "acquire": _made_up_acquire(eu, stack, incarnation),
            "renew": _forged_renew(eu, stack, incarnation),
        }.items():
            refusal = refused(call)

            assert code_of(refusal) == grpc.StatusCode.INVALID_ARGUMENT, attack
            assert details_of(refusal).startswith("agent.incarnation "), attack
            _unchanged(stack, before, f"{attack} as {incarnation[:24]!r}")

    time.sleep(3 * RENEW_INTERVAL_S)
    _unchanged(stack, before, "after three renewals")
    sold = stack.orders().Deduct(order("after-the-attack", "eu", (SALE, 1)), timeout=CALL_TIMEOUT_S)
    assert [line.amount for line in sold.lines] == [1]
    assert stack.status().incarnation == before.incarnation


def test_an_incarnation_the_center_did_not_issue_to_eu_is_invalid_even_from_eus_own_agent(
    stack: SecureStack, before: State
) -> None:
    """The region's own agent certificate, so the role table lets the calls through: a well-formed
    incarnation it made up (newer than the live one, dated now), and one the center really issued, but to
    region us. Either would have retired the live agent and written off what it holds."""
    issued_to_us = center_grpc.AllocationStub(stack.channel("agent-us")).Join(
        center_pb.JoinRequest(region="us"), timeout=CALL_TIMEOUT_S
    )
    eu = stack.channel("agent-eu")
    for incarnation in (new_incarnation(time.time_ns()), issued_to_us.incarnation):
        assert incarnation > before.incarnation
        refusal = refused(_made_up_acquire(eu, stack, incarnation))

        assert code_of(refusal) == grpc.StatusCode.INVALID_ARGUMENT
        assert details_of(refusal).startswith(
            f"agent.incarnation {incarnation} was not issued to region eu by this deployment's center"
        )
        _unchanged(stack, before, f"acquire as {incarnation}")


@pytest.mark.parametrize("caller", ["orders-us", CHECKOUT, OWNER, "agent-eu"])
def test_only_the_order_service_that_placed_an_order_settles_it(stack: SecureStack, before: State, caller: str) -> None:
    """orders-eu placed the seed order and reservations. An order service of us, another order service of eu
    (an identity of its own), an owner and the region's agent may neither refund, confirm nor squat them."""
    agent = stack.channel(caller, stack.agent.address)
    attacks = {
        "refund": _refund_seed_order(agent),
        "squat": _squat_seed_order(agent),
        "confirm": _confirm_seed_reservation(agent),
    }
    uri = identity(stack.dev, caller).uri
    for attack, call in attacks.items():
        refusal = refused(call)

        assert code_of(refusal) == DENIED, attack
        assert details_of(refusal).startswith(f"{uri} may not "), attack
        if caller == CHECKOUT:
            assert "that order was placed by another identity" in details_of(refusal), attack
        _unchanged(stack, before, attack)
