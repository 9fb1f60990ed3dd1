"""Running a gRPC server as a process: bind, announce, serve until SIGTERM, stop gracefully."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable

import grpc

GRACE_S = 5.0
"""How long in-flight calls may finish after SIGTERM before they are cancelled."""


async def serve(
    server: grpc.aio.Server,
    listen: str,
    *,
    on_stop: Callable[[], Awaitable[None]],
    name: str,
    on_start: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT. Prints one JSON line {"ready": name, "port": N} on
    stdout once the port is bound, so a parent can use port 0 and learn the real one.
    `on_start` gets that port before the line is printed."""
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"{name}: cannot listen on {listen}")
    await server.start()
    if on_start is not None:
        await on_start(port)
    print(json.dumps({"ready": name, "port": port}), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(GRACE_S)
    await on_stop()
    print(json.dumps({"stopped": name}), file=sys.stderr, flush=True)
