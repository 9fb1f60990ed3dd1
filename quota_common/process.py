"""Running a gRPC server as a process: own its ports, announce, serve until SIGTERM (or until it
may no longer serve), stop gracefully.

Every server also answers the standard health service (Kubernetes gRPC probes, load balancers)
and server reflection (grpcurl lists and calls it without the .proto files).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from quota_common.authz import AuthorizationInterceptor
from quota_common.listen import cannot_bind, host_and_port
from quota_common.metrics_http import MetricsEndpoint
from quota_common.roles import TABLE
from quota_common.rpc_metrics import RpcMetrics
from quota_common.transport import Transport

log = logging.getLogger(__name__)

GRACE_S = 5.0
"""How long in-flight calls may finish after SIGTERM before they are cancelled."""

EXIT_RETIRED = 3
"""Exit status of a server that stopped because it may no longer serve (an agent another agent of
its region replaced). Settings that stop a process at start exit 2 (ConfigError)."""


def health_servicer() -> Any:
    """The grpc.aio health servicer: the whole server ("") SERVING until graceful shutdown."""
    return health.aio.HealthServicer()


def exclusive_server(interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    """A grpc.aio server that owns its port. gRPC shares ports by default (SO_REUSEPORT): a second
    center on the same port would start too, and the two would split the callers and the budget."""
    return grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])


STANDARD_SERVICES = (health.SERVICE_NAME, reflection.SERVICE_NAME)
"""What `serve` adds to every server beside its own services."""


def guarded_server(
    transport: Transport,
    service_region: str | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    calls: RpcMetrics | None = None,
) -> grpc.aio.Server:
    """An exclusive server that, with mutual TLS, checks every call against the role table before
    anything else sees it (`service_region`: the region an agent serves; None for the center) but
    `calls`, which counts every call, refused ones too. Plaintext has no identities to check: it is
    allowed on loopback only (quota_common.transport)."""
    counting = [] if calls is None else [calls]
    if transport.tls is None:
        return exclusive_server([*counting, *interceptors])
    authorization = AuthorizationInterceptor(transport.trust_domain, TABLE, service_region)
    return exclusive_server([*counting, authorization, *interceptors])


def bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Binds `server` (from exclusive_server) to host:port, with TLS when `credentials` are given, and
    returns the port; ConfigError when the port is taken or the address is not this machine's."""
    host, port = host_and_port(listen, "--listen")
    try:
        # gRPC's core logs a line of its own when its bind fails; probing first keeps a busy port to
        # our one line. The probe is not the guard: a process that takes the port in between is still
        # refused by gRPC's bind, since port sharing is off.
        _probe(host, port)
        if credentials is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, credentials)
    except OSError as error:
        raise cannot_bind("listen on", listen, "--listen", error) from None
    except RuntimeError:
        # gRPC's own bind failed after the probe passed: another process took the port in between.
        raise cannot_bind("listen on", listen, "--listen") from None


def _probe(host: str, port: int) -> None:
    """Binds and releases host:port as gRPC will (address reuse on, port sharing off); OSError if taken."""
    family, kind, protocol, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


async def serve(
    server: grpc.aio.Server,
    listen: str,
    *,
    transport: Transport,
    name: str,
    services: Sequence[str],
    on_stop: Callable[[], Awaitable[None]],
    on_start: Callable[[int], Awaitable[None]] | None = None,
    health_status: Any = None,
    metrics: MetricsEndpoint | None = None,
    retired: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Serves, secured as `transport` says, until SIGTERM or SIGINT, or until `retired()` completes.
    Prints one JSON line {"ready": name, "port": N} on stdout once it serves (with "metrics_port"
    when metrics are served), so a parent can use port 0 and learn the real one.

    The ports are bound before `on_start` (which gets the gRPC port) runs, so a process that cannot
    own them stops (ConfigError) before it has said anything to anyone. `services` (full names) are
    offered by reflection; `health_status` is the health servicer (a fresh one by default) for a
    caller that reports more than the whole server's status.

    On SIGTERM: health turns NOT_SERVING (probes and balancers stop sending), the server stops
    accepting and lets in-flight calls finish for up to GRACE_S, then `on_stop` runs. When
    `retired()` completes (this process may no longer serve), the same happens, its result (why)
    is logged as an error and the process exits with EXIT_RETIRED."""
    health_status = health_status or health_servicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_status, server)
    reflection.enable_server_reflection([*services, *STANDARD_SERVICES], server)
    port = bind(server, listen, transport.server_credentials())
    ready: dict[str, object] = {"ready": name, "port": port}
    stopping = False
    if metrics is not None:
        metrics.serving = lambda: not stopping
        ready["metrics_port"] = await metrics.start()
    if on_start is not None:
        await on_start(port)
    transport.announce()  # only now: a process refused at start says one line, the reason
    await server.start()
    print(json.dumps(ready), flush=True)
    why_retired = await _until_stopped(retired)
    stopping = True
    await health_status.enter_graceful_shutdown()
    if why_retired is None:
        log.info("%s stopping: finishing calls in flight (at most %.0f s)", name, GRACE_S)
    else:
        # The component that was retired logged the error; this line says what the process does about it.
        log.warning("%s", why_retired)
    await server.stop(GRACE_S)
    await on_stop()
    if metrics is not None:
        await metrics.close()
    if why_retired is not None:
        raise SystemExit(EXIT_RETIRED)
    log.info("%s stopped", name)
    print(json.dumps({"stopped": name}), file=sys.stderr, flush=True)


async def _until_stopped(retired: Callable[[], Awaitable[str]] | None) -> str | None:
    """Waits for SIGTERM or SIGINT (None) or for `retired()` (its reason), whichever comes first."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    signalled = asyncio.ensure_future(stopping.wait())
    waits: list[asyncio.Future[Any]] = [signalled]
    if retired is not None:
        waits.append(asyncio.ensure_future(retired()))
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    if signalled in done:
        return None
    reason: str = done.pop().result()
    return reason
