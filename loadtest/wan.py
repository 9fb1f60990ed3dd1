"""A WAN emulator: an asyncio TCP proxy on loopback that delays, jitters and loses traffic, and can
cut the link (a partition) on command.

This machine's kernel has no `tc netem`, so delay cannot come from the kernel; the proxy adds it
per chunk of bytes, in each direction, keeping the byte order of the stream. What TCP does with loss
is retransmit, so a lost chunk here is delivered late (after `retransmit_s`), not dropped: the stream
stays intact, as a real connection would, and only its timing suffers. A partition holds every byte
(and every new connection) until the link heals, as a real network path that drops packets makes
TCP wait and retransmit; calls with deadlines time out meanwhile.

    proxy = WanProxy("127.0.0.1", center_port, Link(rtt_s=0.080, jitter_s=0.005))
    port = await proxy.start()          # clients dial 127.0.0.1:port instead of the center
    proxy.partition(); ...; proxy.heal()
    await proxy.close()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

_CHUNK = 65_536


@dataclass(frozen=True)
class Link:
    rtt_s: float = 0.0
    """Round trip the link adds: half on the way there, half on the way back."""
    jitter_s: float = 0.0
    """Each chunk's one-way delay varies by up to this much either way (never below zero)."""
    loss: float = 0.0
    """Share of chunks that are lost once and delivered after `retransmit_s` more."""
    retransmit_s: float = 0.2

    def __post_init__(self) -> None:
        if self.rtt_s < 0 or self.jitter_s < 0 or self.retransmit_s < 0 or not 0 <= self.loss <= 1:
            raise ValueError(f"a link needs non-negative delays and a loss within [0, 1]: {self}")


class WanProxy:
    def __init__(self, target_host: str, target_port: int, link: Link | None = None, seed: int = 0) -> None:
        self.link = link or Link()
        self._target = (target_host, target_port)
        self._random = random.Random(seed)
        self._healed = asyncio.Event()
        self._healed.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listens (port 0 picks a free one) and returns the port."""
        self._server = await asyncio.start_server(self._accept, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    def partition(self) -> None:
        """Cuts the link: nothing crosses it, in either direction, until `heal`."""
        self._healed.clear()

    def heal(self) -> None:
        self._healed.set()

    @property
    def partitioned(self) -> bool:
        return not self._healed.is_set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _one_way_delay(self) -> float:
        link = self.link
        delay = link.rtt_s / 2 + self._random.uniform(-link.jitter_s, link.jitter_s)
        if self._random.random() < link.loss:
            delay += link.retransmit_s
        return max(0.0, delay)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        try:
            await self._healed.wait()
            try:
                server_reader, server_writer = await asyncio.open_connection(*self._target)
            except OSError:
                return
            self._writers.add(server_writer)
            pipes = [
                self._spawn(self._pipe(client_reader, server_writer)),
                self._spawn(self._pipe(server_reader, client_writer)),
            ]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for writer in (client_writer, server_writer):
                writer.close()
            self._writers.discard(server_writer)
        finally:
            self._writers.discard(client_writer)
            client_writer.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads chunks as they come and delivers each at its own time, never before the one ahead."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        delivering = self._spawn(self._deliver(queue, writer))
        last_due = 0.0
        try:
            while chunk := await reader.read(_CHUNK):
                last_due = max(last_due, loop.time() + self._one_way_delay())
                queue.put_nowait((last_due, chunk))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((last_due, b""))
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await delivering

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self._healed.wait()
            if not chunk:
                return
            writer.write(chunk)
            await writer.drain()


async def _serve(target: str, link: Link, listen_port: int) -> None:
    host, _, port = target.rpartition(":")
    proxy = WanProxy(host, int(port), link)
    print(json.dumps({"ready": "wan", "port": await proxy.start(port=listen_port)}), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await proxy.close()


def main() -> None:
    """`python -m loadtest.wan --target HOST:PORT --rtt-ms 80`: the proxy as a process of its own, so
    a benchmark's load generator does not share its event loop with the link it measures."""
    parser = argparse.ArgumentParser(description="A WAN emulator: a TCP proxy that delays, jitters and loses.")
    parser.add_argument("--target", required=True, help="host:port the proxy forwards to")
    parser.add_argument("--listen-port", type=int, default=0, help="0 picks a free one (printed as JSON)")
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    options = parser.parse_args()
    link = Link(rtt_s=options.rtt_ms / 1000, jitter_s=options.jitter_ms / 1000, loss=options.loss)
    asyncio.run(_serve(options.target, link, options.listen_port))


if __name__ == "__main__":
    main()
