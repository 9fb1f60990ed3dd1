"""Shared gRPC plumbing: QuotaError -> status translation for servicers, and requests decoded
where an undecodable one can be answered INVALID_ARGUMENT."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from quota_common.errors import (
    LEADER_METADATA_KEY,
    PENDING_METADATA_KEY,
    REJECT_REASON_METADATA_KEY,
    SUPERSEDED_METADATA_KEY,
    Held,
    NotLeader,
    QuotaError,
    Rejected,
    Superseded,
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


async def abort_with(error: Exception, context: Context, where: str) -> NoReturn:
    """Ends the call with the error's status (streams too); raises, like `context.abort`."""
    if isinstance(error, Rejected):
        context.set_trailing_metadata(((REJECT_REASON_METADATA_KEY, error.reason.value),))
    if isinstance(error, NotLeader) and error.leader:
        context.set_trailing_metadata(((LEADER_METADATA_KEY, error.leader),))
    if isinstance(error, Superseded):
        context.set_trailing_metadata(((SUPERSEDED_METADATA_KEY, "1"),))
    if isinstance(error, Held):
        context.set_trailing_metadata(((PENDING_METADATA_KEY, error.pending_id),))
    if isinstance(error, QuotaError):
        await context.abort(error.code, cut(error.message, MAX_STATUS_BYTES))
    log.error("%s failed", where, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server logged the details")


class _Registrations:
    """Stands in for a server while a generated add_*_to_server registers a servicer, and keeps
    its method handlers by service."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, MethodHandler]] = {}

    def add_generic_rpc_handlers(self, generic_rpc_handlers: object) -> None:
        """The generated code registers each handler twice; the copy by name below is the one kept."""

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, MethodHandler]) -> None:
        self.services[service_name] = method_handlers


def add_decoding(add: Callable[[S, Any], None], servicer: S, server: grpc.aio.Server) -> None:
    """Registers `servicer` as the generated `add` does, except that each request is decoded inside
    its handler. gRPC decodes before the handler runs and answers bytes that are not the request
    message with UNKNOWN and a Python class name, where the caller needs INVALID_ARGUMENT."""
    registrations = _Registrations()
    add(servicer, registrations)
    for service, handlers in registrations.services.items():
        decoding = {name: _decoding(f"{service}.{name}", handler) for name, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, decoding),))
        server.add_registered_method_handlers(service, decoding)


def _decoding(method: str, handler: MethodHandler) -> MethodHandler:
    """`handler` taking the request's bytes (no deserializer), decoded by the handler itself."""
    request_type = descriptor_pool.Default().FindMethodByName(method).input_type.full_name
    decode = handler.request_deserializer
    serialize = handler.response_serializer

    async def request(raw: bytes, context: Context) -> Any:
        try:
            return decode(raw) if decode else raw
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request could not be decoded as {request_type}: send that message, built from this "
                "server's .proto files",
            )

    if handler.unary_stream is not None:
        stream: Any = handler.unary_stream

        async def streaming(raw: bytes, context: Context) -> AsyncIterator[Any]:
            async for answer in stream(await request(raw, context), context):
                yield answer

        return grpc.unary_stream_rpc_method_handler(streaming, response_serializer=serialize)
    unary: Any = handler.unary_unary
    if unary is None:
        raise TypeError(f"{method} streams its requests; only single requests are decoded here")

    async def single(raw: bytes, context: Context) -> Any:
        return await unary(await request(raw, context), context)

    return grpc.unary_unary_rpc_method_handler(single, response_serializer=serialize)
