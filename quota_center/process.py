"""Running a gRPC server as a process: bind, announce, serve until SIGTERM, stop gracefully.

Every server also answers the standard health service (Kubernetes gRPC probes, load balancers)
and server reflection (grpcurl lists and calls it without the .proto files).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from quota_center.metrics_http import MetricsEndpoint

log = logging.getLogger(__name__)

GRACE_S = 5.0
"""How long in-flight calls may finish after SIGTERM before they are cancelled."""


def health_servicer() -> Any:
    """The grpc.aio health servicer: the whole server ("") SERVING until graceful shutdown."""
    return health.aio.HealthServicer()


async def serve(
    server: grpc.aio.Server,
    listen: str,
    *,
    name: str,
    services: Sequence[str],
    on_stop: Callable[[], Awaitable[None]],
    on_start: Callable[[int], Awaitable[None]] | None = None,
    health_status: Any = None,
    metrics: MetricsEndpoint | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT. Prints one JSON line {"ready": name, "port": N} on
    stdout once the port is bound (with "metrics_port" when metrics are served), so a parent
    can use port 0 and learn the real one. `on_start` gets that port before the line is printed.

    `services` (full names) are offered by reflection; `health_status` is the health servicer
    (a fresh one by default) for a caller that reports more than the whole server's status.
    On SIGTERM: health turns NOT_SERVING (probes and balancers stop sending), the server stops
    accepting and lets in-flight calls finish for up to GRACE_S, then `on_stop` runs."""
    health_status = health_status or health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_status, server)
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"{name}: cannot listen on {listen}")
    await server.start()
    if on_start is not None:
        await on_start(port)
    ready: dict[str, object] = {"ready": name, "port": port}
    if metrics is not None:
        ready["metrics_port"] = await metrics.start()
    print(json.dumps(ready), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("%s stopping: finishing calls in flight (at most %.0f s)", name, GRACE_S)
    await health_status.enter_graceful_shutdown()
    await server.stop(GRACE_S)
    await on_stop()
    if metrics is not None:
        await metrics.close()
    log.info("%s stopped", name)
    print(json.dumps({"stopped": name}), file=sys.stderr, flush=True)
