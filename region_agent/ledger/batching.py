"""Group commit: calls that arrive while earlier ones are on their way go together in the next one.

At hundreds of orders a second, one Redis round trip per order costs the agent more than its gRPC
server does: encoding, the connection pool, the reply parser, an event-loop wake-up, all per order.
A batch pays them once. Nothing waits to fill a batch: a call goes out at once when fewer than
`in_flight` batches are out, and otherwise joins the next, which leaves as soon as one returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Call = TypeVar("Call")
Answer = TypeVar("Answer")


class Batcher(Generic[Call, Answer]):
    def __init__(
        self, send: Callable[[Sequence[Call]], Awaitable[Sequence[Answer]]], in_flight: int = 1, most: int = 64
    ) -> None:
        """`send` answers a batch, one answer per call in order, or raises for all of them."""
        self._send = send
        self._in_flight = in_flight
        self._most = most
        self._waiting: list[tuple[Call, asyncio.Future[Answer]]] = []
        self._senders: set[asyncio.Task[None]] = set()

    async def submit(self, call: Call) -> Answer:
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, answer))
        if len(self._senders) < self._in_flight:
            self._senders.add(asyncio.get_running_loop().create_task(self._sender()))
        return await answer

    async def _sender(self) -> None:
        try:
            await self._send_waiting()
        finally:
            # Here, not in a done callback: one runs later, and a call submitted meanwhile would
            # count a sender that has already stopped, and wait forever.
            self._senders.discard(asyncio.current_task())

    async def _send_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
            try:
                answers = await self._send([call for call, _ in batch])
            except Exception as error:
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            for (_, answer), value in zip(batch, answers, strict=True):
                # A caller that gave up (its deadline passed) is not waiting; its call is
                # applied all the same, and its retry with the same key replays the answer.
                if not answer.done():
                    answer.set_result(value)
