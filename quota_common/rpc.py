"""Shared gRPC plumbing: QuotaError -> status translation for servicers (with gRPC's rich error model
where the service describes its errors), and requests decoded where an undecodable one can be answered
INVALID_ARGUMENT."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError
from google.rpc.error_details_pb2 import ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from quota_common.errors import (
    LEADER_METADATA_KEY,
    PENDING_METADATA_KEY,
    REGION_HELD_METADATA_KEY,
    REJECT_REASON_METADATA_KEY,
    SHARD_OWNER_METADATA_KEY,
    SHARD_VERSION_METADATA_KEY,
    SUPERSEDED_METADATA_KEY,
    Held,
    InvalidArgument,
    NotLeader,
    QuotaError,
    RegionHeld,
    Rejected,
    Superseded,
    WrongGroup,
)
from quota_common.validation import cut

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[S, Req, Context], Awaitable[Resp]]
MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

MAX_STATUS_BYTES = 2048
"""gRPC carries a status message in metadata, refused above 16 KB (percent-encoding may triple
it): a longer message turns the answer into RESOURCE_EXHAUSTED, so it is cut to this."""


@dataclass(frozen=True)
class ErrorDetail:
    """An error in gRPC's rich error model: one google.rpc.ErrorInfo, and a google.rpc.RetryInfo when
    `retry_after_ms` is set (a refusal that clears by itself)."""

    domain: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after_ms: int = 0


Describe = Callable[[QuotaError], ErrorDetail]
"""How a service describes its errors in the rich model."""


def rich_status(code: grpc.StatusCode, message: str, detail: ErrorDetail) -> grpc.Status:
    """The status a call ends with, `detail` packed into its trailing "grpc-status-details-bin"."""
    metadata = tuple(sorted(detail.metadata.items()))
    return _rich_status(code, message, detail.domain, detail.reason, metadata, detail.retry_after_ms)


@functools.lru_cache(maxsize=4096)
def _rich_status(
    code: grpc.StatusCode,
    message: str,
    domain: str,
    reason: str,
    metadata: tuple[tuple[str, str], ...],
    retry_after_ms: int,
) -> grpc.Status:
    """Kept: a sold-out promotion refuses every order alike, and packing the detail anew for each would cost
    more than serving the order."""
    status = Status(code=code.value[0], message=message)
    status.details.add().Pack(ErrorInfo(domain=domain, reason=reason, metadata=dict(metadata)))
    if retry_after_ms:
        retry = RetryInfo()
        retry.retry_delay.FromMilliseconds(retry_after_ms)
        status.details.add().Pack(retry)
    answer: grpc.Status = rpc_status.to_status(status)
    return answer


def translate_errors(handler: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
    """Answers a QuotaError with its status code and message; a rejected deduction also
    carries its reason in the trailing metadata."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: Req, context: Context) -> Resp:
        try:
            return await handler(self, request, context)
        except Exception as error:
            await abort_with(error, context, handler.__qualname__)

    return wrapper


async def abort_with(error: Exception, context: Context, where: str, describe: Describe | None = None) -> NoReturn:
    """Ends the call with the error's status (streams too); raises, like `context.abort`. With `describe`,
    a QuotaError's status also carries its rich error detail."""
    if isinstance(error, QuotaError):
        message, trailing = _ending(error, describe)
        # Passed to abort, not set before it: abort's own trailing metadata would replace what was set.
        await context.abort(error.code, message, trailing)
    log.error("%s failed", where, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server logged the details")


def end_with(error: QuotaError, context: Context, describe: Describe | None = None) -> None:
    """Sets the status a unary call ends with, as `abort_with` would, without raising: the handler then
    returns no answer, which gRPC does not send. On the order path a refusal is an everyday answer, and
    raising it through grpc.aio costs several times what serving an order does."""
    message, trailing = _ending(error, describe)
    context.set_code(error.code)
    context.set_details(message)
    context.set_trailing_metadata(trailing)


def _ending(error: QuotaError, describe: Describe | None) -> tuple[str, tuple[tuple[str, str | bytes], ...]]:
    """The status message and trailing metadata `error` ends a call with."""
    trailing: list[tuple[str, str | bytes]] = []
    if isinstance(error, Rejected):
        trailing.append((REJECT_REASON_METADATA_KEY, error.reason.value))
    if isinstance(error, NotLeader) and error.leader:
        trailing.append((LEADER_METADATA_KEY, error.leader))
    if isinstance(error, Superseded):
        trailing.append((SUPERSEDED_METADATA_KEY, "1"))
    if isinstance(error, RegionHeld):
        trailing.append((REGION_HELD_METADATA_KEY, str(math.ceil(error.retry_after_s * 1000))))
    if isinstance(error, Held):
        trailing.append((PENDING_METADATA_KEY, error.pending_id))
    if isinstance(error, WrongGroup):
        trailing.append((SHARD_OWNER_METADATA_KEY, error.owner))
        trailing.append((SHARD_VERSION_METADATA_KEY, str(error.map_version)))
    message = cut(error.message, MAX_STATUS_BYTES)
    if describe is not None:
        trailing.extend(rich_status(error.code, message, describe(error)).trailing_metadata)
    return message, tuple(trailing)


_MAKERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
"""The handler maker for each shape: (request streaming, response streaming)."""


def with_behaviour(handler: MethodHandler, behaviour: Callable[..., Any]) -> MethodHandler:
    """A handler of `handler`'s shape and (de)serializers whose behaviour is `behaviour`: what an
    interceptor returns when it wraps a call."""
    make = _MAKERS[handler.request_streaming, handler.response_streaming]
    wrapped: MethodHandler = make(
        behaviour, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
    return wrapped


async def stream_answers(behaviour: Callable[..., Any], request: Any, context: Context) -> AsyncIterator[Any]:
    """What a response-streaming behaviour answers: its async iterator's items, or none for a handler that
    writes with context.write and returns nothing."""
    answers = behaviour(request, context)
    if isinstance(answers, AsyncIterator):
        async for answer in answers:
            yield answer
    else:
        await answers


class _Registrations:
    """Stands in for a server while a generated add_*_to_server registers a servicer, and keeps
    its method handlers by service."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, MethodHandler]] = {}

    def add_generic_rpc_handlers(self, generic_rpc_handlers: object) -> None:
        """The generated code registers each handler twice; the copy by name below is the one kept."""

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, MethodHandler]) -> None:
        self.services[service_name] = method_handlers


def add_decoding(
    add: Callable[[S, Any], None], servicer: S, server: grpc.aio.Server, describe: Describe | None = None
) -> None:
    """Registers `servicer` as the generated `add` does, except that each request is decoded inside
    its handler. gRPC decodes before the handler runs and answers bytes that are not the request
    message with UNKNOWN and a Python class name, where the caller needs INVALID_ARGUMENT (with
    `describe`, in the service's rich error detail too, as its other refusals carry it)."""
    registrations = _Registrations()
    add(servicer, registrations)
    for service, handlers in registrations.services.items():
        decoding = {name: _decoding(f"{service}.{name}", handler, describe) for name, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, decoding),))
        server.add_registered_method_handlers(service, decoding)


def _decoding(method: str, handler: MethodHandler, describe: Describe | None) -> MethodHandler:
    """`handler` taking the request's bytes (no deserializer), decoded by the handler itself."""
    request_type = descriptor_pool.Default().FindMethodByName(method).input_type.full_name
    decode = handler.request_deserializer
    serialize = handler.response_serializer

    def decoded(raw: bytes) -> Any:
        """The request, or None when it is not one (a message is never None). Not a coroutine: every order
        comes this way."""
        try:
            return decode(raw) if decode else raw
        except DecodeError:
            return None

    undecodable = InvalidArgument(
        f"the request could not be decoded as {request_type}: send that message, built from this server's .proto files"
    )

    async def refuse(context: Context) -> NoReturn:
        await abort_with(undecodable, context, method, describe)

    if handler.unary_stream is not None:
        stream: Any = handler.unary_stream

        async def streaming(raw: bytes, context: Context) -> AsyncIterator[Any]:
            if (message := decoded(raw)) is None:
                await refuse(context)
            async for answer in stream(message, context):
                yield answer

        return grpc.unary_stream_rpc_method_handler(streaming, response_serializer=serialize)
    unary: Any = handler.unary_unary
    if unary is None:
        raise TypeError(f"{method} streams its requests; only single requests are decoded here")

    async def single(raw: bytes, context: Context) -> Any:
        if (message := decoded(raw)) is None:
            await refuse(context)
        return await unary(message, context)

    return grpc.unary_unary_rpc_method_handler(single, response_serializer=serialize)
