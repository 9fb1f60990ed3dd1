"""Group commit (region_agent/ledger/batching.py): every call is answered, in batches, never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from region_agent.ledger.batching import Batcher


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self._fail_on = fail_on

    async def send(self, calls: Sequence[int]) -> list[int]:
        self.batches.append(list(calls))
        await asyncio.sleep(0.001)
        if self._fail_on in calls:
            raise ConnectionError("down")
        return [call * 10 for call in calls]


async def test_calls_arriving_together_share_a_batch_and_get_their_own_answers() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.send, in_flight=1)

    answers = await asyncio.gather(*(batcher.submit(n) for n in range(100)))

    assert answers == [n * 10 for n in range(100)]
    assert len(recorder.batches) < 10
    assert sorted(call for batch in recorder.batches for call in batch) == list(range(100))


async def test_a_call_made_as_the_sender_stops_is_still_sent() -> None:
    batcher = Batcher(Recorder().send, in_flight=1)

    async def one_after_another() -> list[int]:
        # Each answer resumes this caller in the very step the sender finds nothing waiting and
        # ends, and the caller submits its next call at once.
        return [await batcher.submit(n) for n in range(20)]

    assert await asyncio.wait_for(one_after_another(), 2) == [n * 10 for n in range(20)]


async def test_a_failed_batch_fails_only_its_own_calls() -> None:
    recorder = Recorder(fail_on=3)
    batcher = Batcher(recorder.send, in_flight=1, most=4)

    results = await asyncio.gather(*(batcher.submit(n) for n in range(8)), return_exceptions=True)

    assert [isinstance(result, ConnectionError) for result in results] == [True] * 4 + [False] * 4
    assert results[4:] == [40, 50, 60, 70]


async def test_a_caller_that_gives_up_does_not_stop_the_others() -> None:
    batcher = Batcher(Recorder().send, in_flight=1)
    impatient = asyncio.ensure_future(batcher.submit(1))
    patient = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    impatient.cancel()

    assert await patient == 20
    with pytest.raises(asyncio.CancelledError):
        await impatient
