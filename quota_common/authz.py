"""The authorization interceptor: every call to a server is checked against the role table
(`quota_common.roles.TABLE`) before its handler runs, and the handler learns who called.

    AuthorizationInterceptor(trust_domain, table, service_region)   one per server
    caller() -> Identity | None        inside a handler: who is calling (None outside an authorized call,
                                       and in a sync streaming handler, which our servers do not have)
    acting_as(identity)                sets caller() for code run outside a server (tests, in process)

Each call, in order:

1. the caller's identity, from its verified client certificate (`quota_common.identity.peer_identity`):
   none, or one this system does not accept -> UNAUTHENTICATED, naming what was presented;
2. the method's row: none (deny by default), or not one of its roles -> PERMISSION_DENIED;
3. on a region-scoped row, for an agent or an order service: the region the call acts for must be the
   caller's -> PERMISSION_DENIED naming both. On an agent (`service_region` set) that is the region it
   serves; on the center it is the request's field the row names (`agent.region`), read once the
   request is decoded;
4. the handler runs, with `caller()` set to the identity.

gRPC shows a server interceptor only the method name and metadata, not the call's certificate or its
request, so the interceptor returns the method's handler wrapped: the wrapper gets the request and
the call's context, decides, and only then hands both to the handler. A refused call never reaches it.
A handler registered with `quota_common.rpc.add_decoding` takes the request undecoded; the wrapper
then decodes its own copy to read the region (only for region-scoped rows and regional callers:
Allocation and Catalog calls at the center, never on the order path), with the message class the
protobuf descriptor pool holds for the method's input, so nothing here imports the generated stubs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from quota_common.identity import Identity, IdentityError, peer_identity, require_trust_domain
from quota_common.roles import Rule, needs_region, region_refusal, role_refusal
from quota_common.rpc import stream_answers, with_behaviour

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]

_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("quota_caller", default=None)


def caller() -> Identity | None:
    """Who is calling the handler running now, as the interceptor authorized it; None when no
    interceptor ran (a server without TLS, or code called directly)."""
    return _CALLER.get()


@contextlib.contextmanager
def acting_as(identity: Identity | None) -> Iterator[None]:
    """`caller()` is `identity` inside the block: for code that runs a handler's logic without gRPC."""
    token = _CALLER.set(identity)
    try:
        yield
    finally:
        _CALLER.reset(token)


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call against `table` (see the module's docstring). `service_region`: the region an
    agent serves; None for the center, which serves every region and reads it from each request."""

    def __init__(self, trust_domain: str, table: Mapping[str, Rule], service_region: str | None = None) -> None:
        self._trust_domain = require_trust_domain(trust_domain)
        self._table = table
        self._service_region = service_region
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None  # no such method here: gRPC answers UNIMPLEMENTED
        method = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, functools.partial(self._decide, method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _decide(self, method: str, request: Any, context: Any) -> Identity | _Refused:
        """The caller, if it may make this call with `request` (None: a request stream, not read yet);
        otherwise the status to end the call with. Never awaits, so sync handlers are checked the same way;
        `context` is either kind of servicer context (both have the same `auth_context`)."""
        try:
            identity = peer_identity(context.auth_context(), self._trust_domain)
        except IdentityError as error:
            return _Refused(grpc.StatusCode.UNAUTHENTICATED, error.message)
        why = role_refusal(self._table, method, identity)
        if why is None and needs_region(rule := self._table[method], identity):
            region = self._service_region if rule.served_region else _request_region(rule, method, request)
            if isinstance(region, _Refused):
                return region
            why = region_refusal(self._table, method, identity, region)
        return identity if why is None else _Refused(grpc.StatusCode.PERMISSION_DENIED, why)


@dataclass(frozen=True)
class _Refused:
    code: grpc.StatusCode
    message: str


def _request_region(rule: Rule, method: str, request: Any) -> str | _Refused:
    """The region the request names at `rule.region_field`, read by name from the decoded message."""
    if request is None:
        return _Refused(
            grpc.StatusCode.PERMISSION_DENIED, f"{method} takes a request stream, whose region cannot be checked"
        )
    if isinstance(request, bytes):
        request_class = _request_class(method)
        try:
            request = request_class.FromString(request)
        except DecodeError:
            return _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request could not be decoded as {request_class.DESCRIPTOR.full_name}: send that message, "
                "built from this server's .proto files",
            )
    value: Any = request
    for name in (rule.region_field or "").split("."):
        value = getattr(value, name)
    return str(value)


@functools.cache
def _request_class(method: str) -> type[Message]:
    """The message class of `method`'s request (`/package.Service/Method`), from the descriptor pool
    the generated stubs registered it in."""
    service, _, name = method.lstrip("/").rpartition("/")
    found = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    return message_factory.GetMessageClass(found.input_type)


Decide = Callable[[Any, Any], "Identity | _Refused"]


def _wrap(handler: Handler, decide: Decide) -> Handler:
    """`handler` behind `decide`, which sees the request (None for a request stream) and the context
    before the behaviour does; a refusal ends the call there. Async and sync behaviours alike."""
    behaviour: Any = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    stream_in, stream_out = handler.request_streaming, handler.response_streaming

    async def single(request: Any, context: Context) -> Any:
        token = _CALLER.set(await _admitted(decide(None if stream_in else request, context), context))
        try:
            return await behaviour(request, context)
        finally:
            _CALLER.reset(token)

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        # Each call runs in a task of its own, so the identity set here ends with the call.
        _CALLER.set(await _admitted(decide(None if stream_in else request, context), context))
        async for answer in stream_answers(behaviour, request, context):
            yield answer

    def sync_single(request: Any, context: grpc.ServicerContext) -> Any:
        token = _CALLER.set(_admitted_sync(decide(None if stream_in else request, context), context))
        try:
            return behaviour(request, context)
        finally:
            _CALLER.reset(token)

    def sync_streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # Checked, but caller() stays unset: gRPC runs each step of a sync stream on whichever pool
        # thread is free, and a context variable set in one would outlive the call there.
        _admitted_sync(decide(None if stream_in else request, context), context)
        yield from behaviour(request, context)

    if inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour):
        wrapper: Callable[..., Any] = streaming if stream_out else single
    else:
        wrapper = sync_streaming if stream_out else sync_single
    return with_behaviour(handler, wrapper)


async def _admitted(decision: Identity | _Refused, context: Context) -> Identity:
    if isinstance(decision, _Refused):
        await context.abort(decision.code, decision.message)
    return decision


def _admitted_sync(decision: Identity | _Refused, context: grpc.ServicerContext) -> Identity:
    if isinstance(decision, _Refused):
        context.abort(decision.code, decision.message)
    return decision
