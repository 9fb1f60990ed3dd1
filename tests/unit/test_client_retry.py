"""How many times a call is tried, and where: a caller that retries itself (the chaos workload, which must see each
attempt's outcome) asks the client for one attempt and gets the agent's answer to it, unretried."""

from __future__ import annotations

import grpc
import pytest

from quota_client import AsyncQuotaClient, Line, RetryPolicy, Unavailable, calls
from quota_client.retry import Attempts
from quota_common.clock import FakeClock
from quota_testing.support import left_in_cycles
from region_agent.v1 import region_agent_pb2 as pb

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


class _FlakyAgent:
    """Answers every other call, the first of each pair UNAVAILABLE: each call needs one retry."""

    def __init__(self) -> None:
        self.calls = 0

    async def Deduct(self, request: pb.DeductRequest, timeout: float) -> pb.DeductResponse:  # noqa: ASYNC109  # the stub's signature
        self.calls += 1
        if self.calls % 2:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), LOST)
        return pb.DeductResponse(order_key=request.order_key, lines=request.lines)


async def test_a_retried_call_leaves_only_tenacitys_own_cycle() -> None:
    """The failure the client retried holds the frames that held it in its traceback: none of them may keep it,
    or every failed-over call leaves its frames, tracebacks and request for the garbage collector."""
    agent = _FlakyAgent()
    quota = AsyncQuotaClient("127.0.0.1:1", "eu", policy=RetryPolicy(backoff_s=0.0001, max_backoff_s=0.0001))
    quota._stub = lambda index: agent  # type: ignore[method-assign]  # no channel: the attempts' outcomes are scripted
    await quota.deduct("warm", [Line("coupon", 1, "user-1")])
    with left_in_cycles() as garbage:
        answers = [await quota.deduct(f"order-{number}", [Line("coupon", 1, "user-1")]) for number in range(5)]
    left = {type(found).__name__ for found in garbage}

    assert agent.calls == 12
    assert [answer.replayed for answer in answers] == [False] * 5
    assert not left & {"frame", "traceback", "Unavailable", "Call", "DeductRequest"}
    assert "AsyncRetrying" in left  # tenacity's own, per retried call: this test would see any other
