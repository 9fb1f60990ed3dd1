"""A bare grpc.aio server answering Deduct with the same message shape and doing nothing else:
what gRPC itself costs per call, the yardstick for the agent's own work in `quota bench`.

With `--redis URL`, every call first makes one durable write to that Redis the way the agent's
Redis ledger does (a trivial Lua script over the ledger's own connection, calls that arrive while
one is on its way batched into the next): what gRPC plus the ledger's round trip cost, with none
of the agent's logic, so the benchmark can tell the two apart. With `--ledger URL` instead, every call
is the deduction the agent's Redis ledger makes for it (its script, once per call, batched as the agent
batches it) on a ledger funded beforehand, answered as the agent answers it (RESOURCE_EXHAUSTED when the
script refuses): the same durable write an agent makes per order, with none of its checks, cache or
supply (`quota bench embedded`). With `--wait-ms MS` instead, every
call waits that long, batched the same way, and touches nothing: the round trip's latency without
its work (`quota bench cost`).

Plaintext by default, as the agent runs in `quota bench`'s plaintext rows. With `--tls-cert`,
`--tls-key` and `--tls-ca` it serves mutual TLS as an agent does (a client certificate from the CA
required), so `quota bench` can tell what TLS alone costs per call; `--authz REGION` adds the
authorization interceptor every call to an agent of REGION passes with TLS on (the role table, the
caller's region), so the two costs are told apart.

    python -m loadtest.echo --listen 127.0.0.1:0 [--redis URL | --ledger URL | --wait-ms MS]
        [--tls-cert PEM --tls-key PEM --tls-ca PEM [--authz REGION]]
    # prints {"ready": "echo", "port": N}
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import redis.asyncio as redis

from quota_common.process import exclusive_server, guarded_server, serve
from quota_common.rpc import Context
from quota_common.tls import TlsFiles
from quota_common.transport import Security, open_transport
from region_agent.ledger.base import Line
from region_agent.ledger.batching import Batcher
from region_agent.ledger.redis import RedisLedger
from region_agent.ledger.script_link import LuaScript, ScriptLink
from region_agent.v1 import region_agent_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["RegionAgent"].full_name
COUNT_CALLS = LuaScript("return redis.call('INCRBY', KEYS[1], #ARGV)")
"""A write (so Redis appends and fsyncs it, as it does the ledger's) and nothing more."""


async def _echo(request: pb.DeductRequest, context: Context) -> pb.DeductResponse:
    return pb.DeductResponse(order_key=request.order_key, lines=request.lines)


def _after(
    step: Callable[[Sequence[str]], Awaitable[None]],
) -> Callable[[pb.DeductRequest, Context], Awaitable[pb.DeductResponse]]:
    """Echoes once `step` has run for the call, batched with the calls that arrive meanwhile."""

    async def run(order_keys: Sequence[str]) -> list[None]:
        await step(order_keys)
        return [None] * len(order_keys)

    steps = Batcher(run)

    async def echo_after(request: pb.DeductRequest, context: Context) -> pb.DeductResponse:
        await steps.submit(request.order_key)
        return await _echo(request, context)

    return echo_after


def _write_to(link: ScriptLink) -> Callable[[Sequence[str]], Awaitable[None]]:
    async def write(order_keys: Sequence[str]) -> None:
        await link.run(COUNT_CALLS, ["echo:calls"], list(order_keys))

    return write


def _deducting(ledger: RedisLedger) -> Callable[[pb.DeductRequest, Context], Awaitable[pb.DeductResponse]]:
    async def deduct(request: pb.DeductRequest, context: Context) -> pb.DeductResponse:
        lines = tuple(Line(line.promotion_id, line.amount, line.user_id) for line in request.lines)
        outcome = await ledger.deduct(request.order_key, lines)
        if not outcome.accepted:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the ledger holds too little")
        return await _echo(request, context)

    return deduct


def _wait(seconds: float) -> Callable[[Sequence[str]], Awaitable[None]]:
    async def wait(order_keys: Sequence[str]) -> None:
        await asyncio.sleep(seconds)

    return wait


async def _main(listen: str, redis_url: str, ledger_url: str, wait_ms: float, tls: TlsFiles | None, authz: str) -> None:
    link = ScriptLink(redis.Redis.from_url(redis_url)) if redis_url else None
    ledger = RedisLedger(redis.Redis.from_url(ledger_url), "echo", owns_client=True) if ledger_url else None
    handler: Callable[[pb.DeductRequest, Context], Awaitable[pb.DeductResponse]] = _echo
    if link:
        handler = _after(_write_to(link))
    elif ledger:
        await ledger.incarnation()  # the life the bench funded, which every deduction names
        handler = _deducting(ledger)
    elif wait_ms:
        handler = _after(_wait(wait_ms / 1000))
    # Plaintext on loopback only, or mutual TLS with any identity of the development set's trust domain.
    transport = open_transport(Security(tls, insecure=tls is None), None, listen=listen)
    # With --authz, every call passes the interceptor an agent of that region has (TLS only).
    server = guarded_server(transport, authz) if authz else exclusive_server()
    deduct = grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=pb.DeductRequest.FromString,
        response_serializer=pb.DeductResponse.SerializeToString,
    )
    # Registered as the generated code registers the agent's servicer, so both take gRPC's same path.
    handlers = {"Deduct": deduct}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    server.add_registered_method_handlers(SERVICE, handlers)

    async def close() -> None:
        if link:
            await link.aclose()
        if ledger:
            await ledger.aclose()

    await serve(server, listen, transport=transport, name="echo", services=[SERVICE], on_stop=close)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--redis", default="", help="make one durable write to this Redis per call, batched")
    step.add_argument("--ledger", default="", help="deduct each call on this Redis ledger, as an agent does")
    step.add_argument("--wait-ms", type=float, default=0.0, help="wait this long per call, batched, doing nothing")
    parser.add_argument("--tls-cert", type=Path, help="serve mutual TLS with this certificate (and the next two)")
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--tls-ca", type=Path, help="client certificates must come from this CA")
    parser.add_argument("--authz", default="", metavar="REGION", help="check every call as an agent of REGION does")
    arguments = parser.parse_args()
    files = (arguments.tls_cert, arguments.tls_key, arguments.tls_ca)
    if any(files) and not all(files):
        parser.error("--tls-cert, --tls-key and --tls-ca go together")
    if arguments.authz and not all(files):
        parser.error("--authz needs mutual TLS: the caller's identity comes from its certificate")
    tls = TlsFiles(*files) if all(files) else None
    asyncio.run(_main(arguments.listen, arguments.redis, arguments.ledger, arguments.wait_ms, tls, arguments.authz))
