"""When a call is tried again, where, and for how long: shared by the sync and the async client.

Every call is idempotent by its order key (and a refund by its refund id), so a call that got no answer
is sent again, the same request, to the region's next agent address (failover), after a jittered
exponential backoff, until the call's deadline. A refusal, or any answer the agent gave on purpose, is
never retried: the same request would get the same answer. What ends the call without an answer is an
Unavailable whose `may_have_applied` is true if any attempt may have reached the ledger.

A call's first attempt runs on its own; tenacity takes over only once it failed. Tenacity's retrying object
holds bound methods of itself (a reference cycle that only the garbage collector frees): one per call left
every order's caller with garbage that the collector's full passes freed in pauses of tens of milliseconds,
the caller's p99 (`quota bench embedded`). Most calls are answered at once, and now leave none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from quota_client.calls import Call
from quota_client.errors import QuotaClientError, Unavailable, error_from_status
from quota_common.clock import Clock

R = TypeVar("R")

RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""No agent answered, or one could not serve now: the same request may succeed elsewhere or later."""


def retried(error: BaseException) -> bool:
    """Whether a failed attempt is tried again: no agent answered, or one could not serve now."""
    return isinstance(error, Unavailable) and error.code in RETRIED


@dataclass(frozen=True)
class RetryPolicy:
    deadline_s: float = 5.0
    """How long one call may take in all, retries included."""
    attempt_timeout_s: float = 1.0
    """How long one attempt may take, so a hung agent leaves time to ask the region's others."""
    backoff_s: float = 0.02
    """The first pause between attempts; it doubles each time, with full jitter."""
    max_backoff_s: float = 0.5
    max_attempts: int | None = None
    """At most this many attempts per call; None: as many as the deadline allows. 1 makes no retries, for a
    caller that retries (and fails over) itself and must see each attempt's outcome."""

    def __post_init__(self) -> None:
        if self.deadline_s <= 0 or self.attempt_timeout_s <= 0:
            raise ValueError("deadline_s and attempt_timeout_s must be positive")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (or None: until the deadline), got {self.max_attempts}")


class Attempts:
    """One call's attempts: which address each goes to, how long it may take, and what the call ends with.
    The client makes the first; `retry()` and `retry_async()` make the rest with tenacity."""

    def __init__(
        self, policy: RetryPolicy, clock: Clock, addresses: int, first: int, deadline_s: float | None = None
    ) -> None:
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        self._policy = policy
        self._clock = clock
        self._deadline_s = policy.deadline_s if deadline_s is None else deadline_s
        self._deadline = clock.monotonic() + self._deadline_s
        self._addresses = addresses
        self._next = first
        self._may_have_applied = False

    def address(self) -> int:
        """The index of the address the next attempt goes to: the one that answered last, then the others."""
        index = self._next % self._addresses
        self._next += 1
        return index

    def timeout(self) -> float:
        return max(0.0, min(self._policy.attempt_timeout_s, self.remaining()))

    def remaining(self) -> float:
        return self._deadline - self._clock.monotonic()

    def failed(self, error: grpc.RpcError, call: Call[Any]) -> QuotaClientError:
        """The error an attempt's failure stands for, remembering whether it may have applied."""
        if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
            return Unavailable(f"the call failed before reaching an agent: {error}")
        found = error_from_status(error.code(), error.details() or "", error.trailing_metadata(), call.promotions)
        found.may_have_applied &= call.writes
        self._may_have_applied |= found.may_have_applied
        return found

    def retry(self, first: Unavailable, attempt: Callable[[], R]) -> R:
        """After the call's first attempt failed with `first`: `attempt` as often and as late as the policy says,
        `first` counted as the first attempt (the pause before the second, max_attempts, the deadline)."""
        retrying = Retrying(retry=self._retry, wait=self._wait, stop=self._stop, retry_error_callback=self._give_up)
        result: R = retrying(_AfterFirst(first, attempt))
        return result

    async def retry_async(self, first: Unavailable, attempt: Callable[[], Awaitable[R]]) -> R:
        """`retry` for an asyncio client."""
        again = _AfterFirst(first, attempt)

        async def attempted() -> R:  # tenacity awaits only what a coroutine function returns
            return await again()

        retrying = AsyncRetrying(
            retry=self._retry, wait=self._wait, stop=self._stop, retry_error_callback=self._give_up
        )
        result: R = await retrying(attempted)
        return result

    _retry = retry_if_exception(retried)

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_random_exponential(self._policy.backoff_s, self._policy.max_backoff_s)(state)
        error = state.outcome.exception() if state.outcome else None
        retry_after = error.retry_after if isinstance(error, QuotaClientError) and error.retry_after else 0.0
        return max(backoff, retry_after)

    def _stop(self, state: RetryCallState) -> bool:
        if self._policy.max_attempts is not None and state.attempt_number >= self._policy.max_attempts:
            return True
        return self.remaining() - state.upcoming_sleep <= 0

    def _give_up(self, state: RetryCallState) -> Any:
        """Raises what the last attempt failed with, saying whether any attempt may have applied."""
        last = state.outcome.exception() if state.outcome else None
        assert isinstance(last, Unavailable), "only Unavailable is retried"
        if state.attempt_number == self._policy.max_attempts:
            why = f" ({state.attempt_number} attempt(s), the policy's max_attempts)"
        else:
            why = f" ({state.attempt_number} attempts, then the call's {self._deadline_s} s deadline came)"
        raise type(last)(
            last.message + why,
            code=last.code,
            reason=last.reason,
            promotion_id=last.promotion_id,
            may_have_applied=self._may_have_applied,
            retry_after=last.retry_after,
        ) from last


class _AfterFirst(Generic[R]):
    """Tenacity's attempt function once the first attempt was made without it: its first run fails as that
    attempt did, so tenacity pauses, counts and gives up exactly as if it had made it; then `attempt`."""

    def __init__(self, first: Unavailable, attempt: Callable[[], R]) -> None:
        self._first: Unavailable | None = first
        self._attempt = attempt

    def __call__(self) -> R:
        if self._first is None:
            return self._attempt()
        try:
            raise self._first
        finally:
            self._first = None  # no local holds it: its traceback holds this frame
