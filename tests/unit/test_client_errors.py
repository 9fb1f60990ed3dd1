"""The client reads why a call failed: from the rich error model (google.rpc.ErrorInfo, RetryInfo) when the
agent sends it, else from the older "quota-reject-reason" metadata and the status code."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status

import quota_client
from quota_client.errors import (
    DETAILS_KEY,
    DOMAIN,
    REJECT_REASON_KEY,
    DeadlineExceeded,
    Exhausted,
    InvalidRequest,
    LeaseExpired,
    LedgerLifeLost,
    OrderKeyReused,
    OrderUnknown,
    PermissionDenied,
    QuotaClientError,
    Refused,
    Unavailable,
    error_from_status,
)
from region_agent.v1 import region_agent_pb2 as agent_pb

FAILED = grpc.StatusCode.FAILED_PRECONDITION
REASONS = [name for name in agent_pb.RejectReason.DESCRIPTOR.values_by_name if name != "REJECT_REASON_UNSPECIFIED"]
"""Every reason the API names, each with an exception of its own named after it."""


def refusal(reason: str) -> type[Refused]:
    """REJECT_REASON_OVER_ORDER_LIMIT: OverOrderLimit."""
    cls: type[Refused] = getattr(quota_client, reason.removeprefix("REJECT_REASON_").title().replace("_", ""))
    return cls


def rich(code: grpc.StatusCode, reason: str, retry_after_s: int = 0, **metadata: str) -> tuple[tuple[str, bytes]]:
    """The trailing metadata of an agent that speaks the rich error model."""
    info = AnyPb()
    info.Pack(ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))
    details = [info]
    if retry_after_s:
        retry = AnyPb()
        retry.Pack(RetryInfo(retry_delay=Duration(seconds=retry_after_s)))
        details.append(retry)
    status = Status(code=code.value[0], message="the agent's words", details=details)
    return ((DETAILS_KEY, status.SerializeToString()),)


@pytest.mark.parametrize("reason", REASONS)
def test_each_reject_reason_in_error_info_raises_its_own_refusal_naming_the_promotion(reason: str) -> None:
    error = error_from_status(FAILED, "the agent's words", rich(FAILED, reason, promotion_id="p-2"), ("p-1", "p-2"))

    assert type(error) is refusal(reason)
    assert issubclass(refusal(reason), Refused)
    assert (error.message, error.reason, error.promotion_id) == ("the agent's words", reason, "p-2")


@pytest.mark.parametrize("reason", REASONS)
def test_an_older_agents_reject_reason_metadata_raises_the_same_refusal(reason: str) -> None:
    error = error_from_status(FAILED, "the agent's words", ((REJECT_REASON_KEY, reason),), ("p-1",))

    assert type(error) is refusal(reason)
    assert (error.reason, error.promotion_id, error.may_have_applied) == (reason, "p-1", False)


def test_an_older_agents_refusal_of_several_lines_names_no_promotion_it_cannot_know() -> None:
    metadata = ((REJECT_REASON_KEY, "REJECT_REASON_EXHAUSTED"),)
    error = error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "spent", metadata, ("p-1", "p-2"))

    assert type(error) is Exhausted
    assert error.promotion_id == ""


@pytest.mark.parametrize(
    ("reason", "cls"),
    [
        ("ORDER_KEY_REUSED", OrderKeyReused),
        ("ORDER_UNKNOWN", OrderUnknown),
        ("LEDGER_LIFE_LOST", LedgerLifeLost),
        ("NOT_PLACER", PermissionDenied),
        ("INVALID_REQUEST", InvalidRequest),
        ("LEDGER_UNAVAILABLE", Unavailable),
        ("NO_QUOTA_IN_TIME", Unavailable),
        ("NOT_SERVING", Unavailable),
    ],
)
def test_every_other_error_info_reason_has_its_exception(reason: str, cls: type[QuotaClientError]) -> None:
    error = error_from_status(FAILED, "words", rich(FAILED, reason), ())

    assert type(error) is cls


def test_may_have_applied_and_retry_after_come_from_the_agent() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    lost = error_from_status(
        unavailable, "lost mid-script", rich(unavailable, "LEDGER_UNAVAILABLE", may_have_applied="true")
    )
    waiting = error_from_status(
        unavailable, "no refill", rich(unavailable, "NO_QUOTA_IN_TIME", retry_after_s=2, may_have_applied="false")
    )
    lease = error_from_status(FAILED, "lease", rich(FAILED, "REJECT_REASON_LEASE_EXPIRED", retry_after_s=3))

    assert (lost.may_have_applied, lost.retry_after) == (True, None)
    assert (waiting.may_have_applied, waiting.retry_after) == (False, 2.0)
    assert (type(lease), lease.retry_after) == (LeaseExpired, 3.0)


def test_the_ledger_life_is_named_with_a_lost_one() -> None:
    metadata = rich(FAILED, "LEDGER_LIFE_LOST", ledger_life_started_ms="1700000000000")

    assert error_from_status(FAILED, "lost", metadata).ledger_life_started_ms == 1_700_000_000_000


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
        (grpc.StatusCode.NOT_FOUND, OrderUnknown),
        (grpc.StatusCode.FAILED_PRECONDITION, OrderKeyReused),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, Unavailable),
    ],
)
def test_without_a_reason_the_status_code_decides(code: grpc.StatusCode, cls: type[QuotaClientError]) -> None:
    assert type(error_from_status(code, "words", ())) is cls


def test_only_a_call_that_never_reached_an_agent_surely_applied_nothing() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    refused = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: Connection refused"

    assert not error_from_status(unavailable, refused, None).may_have_applied
    assert error_from_status(unavailable, "the region's Redis is unreachable", None).may_have_applied
    assert error_from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", None).may_have_applied
    assert not error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "bad", None).may_have_applied


def test_error_info_of_another_domain_or_undecodable_details_fall_back_to_the_code() -> None:
    other = AnyPb()
    other.Pack(ErrorInfo(reason="ORDER_UNKNOWN", domain="example.com"))
    foreign = ((DETAILS_KEY, Status(code=9, details=[other]).SerializeToString()),)

    assert type(error_from_status(FAILED, "words", foreign)) is OrderKeyReused
    assert type(error_from_status(FAILED, "words", ((DETAILS_KEY, b"\xff\xff"),))) is OrderKeyReused


def test_an_agent_without_the_call_says_to_upgrade() -> None:
    error = error_from_status(grpc.StatusCode.UNIMPLEMENTED, "Method not found!", ())

    assert type(error) is QuotaClientError
    assert "upgrade the region's agents" in error.message


def test_the_public_surface_is_pinned() -> None:
    exported = {name for name in dir(quota_client) if not name.startswith("_")}

    assert set(quota_client.__all__) <= exported
    assert {refusal(reason).__name__ for reason in REASONS} <= set(quota_client.__all__)
