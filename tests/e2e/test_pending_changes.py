"""Second approval against a running center and agent (mutual TLS): the person who asked cannot approve,
and a held change that expired never reaches a region, however late an approver says yes."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from quota_center.v1 import quota_center_pb2 as center_pb
from quota_common.errors import PENDING_METADATA_KEY, trailing
from quota_testing.secure_stack import APPROVER, CALL_TIMEOUT_S, OWNER, SecureStack, refused, secure_stack
from quota_testing.support import order, promotion

pytestmark = pytest.mark.e2e

PENDING_TTL_S = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    with secure_stack(tmp_path_factory.mktemp("pending"), "--pending-ttl", str(PENDING_TTL_S)) as stack:
        yield stack


def _held(call: Callable[[], object]) -> str:
    """The pending id of a change the guard rules held."""
    error = refused(call)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    pending = trailing(error, PENDING_METADATA_KEY)
    assert pending, error.details()
    return pending


def _expired(stack: SecureStack, pending_id: str) -> None:
    while True:
        listed = stack.admin(APPROVER).ListPending(center_pb.ListPendingRequest(), timeout=CALL_TIMEOUT_S)
        if any(change.id == pending_id and change.state == "expired" for change in listed.changes):
            return
        time.sleep(PENDING_TTL_S / 4)


def _approve(stack: SecureStack, name: str, pending_id: str) -> grpc.Call:
    request = center_pb.DecidePendingRequest(pending_id=pending_id, reason="looks fine")
    return refused(lambda: stack.admin(name).ApprovePending(request, timeout=CALL_TIMEOUT_S))


def test_the_owner_who_asked_cannot_approve_their_own_change(stack: SecureStack) -> None:
    pending = _held(functools.partial(stack.create, promotion("own-approval", budget=100, face_value=10_000)))

    denied = _approve(stack, OWNER, pending)

    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ApprovePending: it needs the role approver, not owner" in str(denied.details())


def test_an_expired_create_and_an_expired_budget_raise_never_reach_a_region(stack: SecureStack) -> None:
    create = _held(functools.partial(stack.create, promotion("late-coupon", budget=100, face_value=10_000)))
    sale = stack.create(promotion("small-sale", budget=100))
    raise_request = center_pb.SetBudgetRequest(
        promotion_id="small-sale", budget=100_000, expected_revision=sale.revision
    )
    budget_raise = _held(functools.partial(stack.admin(OWNER).SetBudget, raise_request, timeout=CALL_TIMEOUT_S))
    _expired(stack, create)
    _expired(stack, budget_raise)

    for pending in (create, budget_raise):
        late = _approve(stack, APPROVER, pending)
        assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "expired" in str(late.details())
    unknown = refused(lambda: stack.orders().Deduct(order("late-1", "eu", ("late-coupon", 1)), timeout=CALL_TIMEOUT_S))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND, unknown.details()
    assert stack.usage("small-sale").promotion.budget == 100
    over = refused(lambda: stack.orders().Deduct(order("big-1", "eu", ("small-sale", 101)), timeout=CALL_TIMEOUT_S))
    # The region still knows the budget as 100: an order above it is refused as more than the whole budget.
    assert over.code() == grpc.StatusCode.FAILED_PRECONDITION, over.details()
    assert "more than its whole budget (100)" in str(over.details())
