"""What a server process shows of itself on /metrics, the center and the agent alike: every call it
answered, by method and status code, with its latency; and the process (CPU, memory, files, GC).

    registry = process_registry()             process_* (CPU seconds, RSS, open fds), python_gc_*, python_info
    calls = RpcMetrics(registry, services)    a server interceptor; put it first, so refusals count too
      grpc_server_handled_total{grpc_service, grpc_method, grpc_type, grpc_code}
      grpc_server_handling_seconds{grpc_service, grpc_method, grpc_type}      (a histogram)

The names are those of go-grpc-prometheus (and py-grpc-prometheus), so dashboards and alerts written for
them work here. Label values come from the services' descriptors and from grpc.StatusCode, never from what
a caller sends: a path that names no method of `services` passes through uncounted (gRPC answers it
UNIMPLEMENTED), so the series are bounded by methods x codes whatever the callers do.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry

from quota_common.hot_metrics import HotCounter, HotHistogram
from quota_common.rpc import stream_answers, with_behaviour

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
Labels = tuple[str, str, str]

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""From a fraction of a millisecond (a deduction served from the allotment) to the seconds an order
may wait for a refill across a WAN."""


def process_registry() -> CollectorRegistry:
    """A registry holding the process's own metrics, as prometheus_client's default registry has them:
    process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, process_max_fds,
    process_start_time_seconds (from /proc: Linux only), python_gc_*, python_info."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def _kind(method: MethodDescriptor) -> str:
    if method.client_streaming:
        return "bidi_stream" if method.server_streaming else "client_stream"
    return "server_stream" if method.server_streaming else "unary"


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every call to a method of `services` (full names, as the descriptor pool holds
    them) in `registry`; see the module's docstring."""

    def __init__(self, registry: CollectorRegistry, services: Iterable[str]) -> None:
        pool = descriptor_pool.Default()
        self._methods: dict[str, Labels] = {
            f"/{service}/{method.name}": (service, method.name, _kind(method))
            for service in services
            for method in pool.FindServiceByName(service).methods
        }
        # Every call counts in these two (every order, at an agent): hot_metrics' series, not prometheus_client's.
        self._handled = HotCounter(
            "grpc_server_handled",
            "Calls answered, by method and status code (refused, failed and cancelled ones too).",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
        )
        self._seconds = HotHistogram(
            "grpc_server_handling_seconds",
            "Time from a call's arrival until its answer (for a stream: until it ends).",
            ["grpc_service", "grpc_method", "grpc_type"],
            LATENCY_BUCKETS_S,
        )
        registry.register(self._handled)
        registry.register(self._seconds)
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        labels = self._methods.get(details.method)
        if handler is None or labels is None:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._timed(handler, labels)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _timed(self, handler: Handler, labels: Labels) -> Handler:
        behaviour: Any = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
            return handler  # a sync behaviour on an aio server; ours are all async
        # On every order's path at an agent: each code's labels are built once, not per call.
        handled = {code: (*labels, code.name) for code in grpc.StatusCode}

        def done(started: float, code: grpc.StatusCode) -> None:
            self._handled.inc(handled[code])
            self._seconds.observe(labels, time.perf_counter() - started)

        async def single(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            try:
                answer = await behaviour(request, context)
            except BaseException as error:
                done(started, _failed(error, context))
                raise
            done(started, context.code() or grpc.StatusCode.OK)
            return answer

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                async for answer in stream_answers(behaviour, request, context):
                    yield answer
            except BaseException as error:
                done(started, _failed(error, context))
                raise
            done(started, context.code() or grpc.StatusCode.OK)

        return with_behaviour(handler, streaming if handler.response_streaming else single)


def _failed(error: BaseException, context: Context) -> grpc.StatusCode:
    """The status a call that raised `error` ends with: the one the handler aborted with, CANCELLED for a
    call cancelled under it (or a stream its caller left), else UNKNOWN (what gRPC answers for an
    exception it did not expect)."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    ended = isinstance(error, (asyncio.CancelledError, GeneratorExit))
    return grpc.StatusCode.CANCELLED if ended else grpc.StatusCode.UNKNOWN
