"""Shared gRPC plumbing: QuotaError -> status translation for servicers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from quota_center.errors import LEADER_METADATA_KEY, REJECT_REASON_METADATA_KEY, NotLeader, QuotaError, Rejected

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[S, Req, Context], Awaitable[Resp]]


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
    if isinstance(error, QuotaError):
        await context.abort(error.code, error.message)
    log.error("%s failed", where, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server logged the details")
