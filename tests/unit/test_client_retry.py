"""How many times a call is tried, and where: a caller that retries itself (the chaos workload, which must see each
attempt's outcome) asks the client for one attempt and gets the agent's answer to it, unretried."""

from __future__ import annotations

import grpc
import pytest

from quota_client import Line, RetryPolicy, Unavailable, calls
from quota_client.retry import Attempts
from quota_common.clock import FakeClock

LOST = "the region's Redis is unreachable; retry with the same key"


def _tried(policy: RetryPolicy, addresses: int) -> tuple[list[int], Unavailable]:
    """Runs one call whose every attempt finds no agent; the addresses tried, and what the call raised."""
    attempts, tried = Attempts(policy, FakeClock(), addresses, first=0), []
    call = calls.deduct("order-1", "eu", [Line("coupon", 1, "user-1")])
    lost = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), LOST)

    def attempt() -> None:
        tried.append(attempts.address())
        raise attempts.failed(lost, call)

    with pytest.raises(Unavailable) as first:
        attempt()  # the client's first attempt, made without tenacity
    with pytest.raises(Unavailable) as raised:
        attempts.retry(first.value, attempt)
    return tried, raised.value


def test_one_attempt_answers_what_the_agent_said_without_a_retry() -> None:
    tried, error = _tried(RetryPolicy(max_attempts=1), addresses=2)

    assert tried == [0]
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert error.may_have_applied
    assert error.message.startswith(LOST)


def test_max_attempts_ends_the_failover_round_before_the_deadline_does() -> None:
    tried, error = _tried(RetryPolicy(backoff_s=0.001, max_backoff_s=0.001, max_attempts=3), addresses=2)

    assert tried == [0, 1, 0]
    assert error.may_have_applied


@pytest.mark.parametrize("attempts", [0, -1])
def test_a_policy_without_an_attempt_is_refused(attempts: int) -> None:
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        RetryPolicy(max_attempts=attempts)
