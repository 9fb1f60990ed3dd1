"""A bare grpc.aio server answering Deduct with the same message shape and doing nothing else:
what gRPC itself costs per call, the yardstick for the agent's own work in `quota bench`.

With `--redis URL`, every call first makes one durable write to that Redis the way the agent's
Redis ledger does (a trivial Lua script over the ledger's own connection, calls that arrive while
one is on its way batched into the next): what gRPC plus the ledger's round trip cost, with none
of the agent's logic, so the benchmark can tell the two apart.

    python -m loadtest.echo --listen 127.0.0.1:0 [--redis redis://HOST:PORT/DB]   # prints {"ready": "echo", "port": N}
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Sequence

import grpc
import redis.asyncio as redis

from quota_center.process import serve
from quota_center.rpc import Context
from region_agent.ledger.batching import Batcher
from region_agent.ledger.script_link import LuaScript, ScriptLink
from region_agent.v1 import region_agent_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["RegionAgent"].full_name
COUNT_CALLS = LuaScript("return redis.call('INCRBY', KEYS[1], #ARGV)")
"""A write (so Redis appends and fsyncs it, as it does the ledger's) and nothing more."""


async def _echo(request: pb.DeductRequest, context: Context) -> pb.DeductResponse:
    return pb.DeductResponse(order_key=request.order_key, lines=request.lines)


def _after_a_write(link: ScriptLink) -> Callable[[pb.DeductRequest, Context], Awaitable[pb.DeductResponse]]:
    async def write(order_keys: Sequence[str]) -> list[None]:
        await link.run(COUNT_CALLS, ["echo:calls"], list(order_keys))
        return [None] * len(order_keys)

    writes = Batcher(write)

    async def echo_after_write(request: pb.DeductRequest, context: Context) -> pb.DeductResponse:
        await writes.submit(request.order_key)
        return await _echo(request, context)

    return echo_after_write


async def _main(listen: str, redis_url: str) -> None:
    link = ScriptLink(redis.Redis.from_url(redis_url)) if redis_url else None
    server = grpc.aio.server()
    deduct = grpc.unary_unary_rpc_method_handler(
        _after_a_write(link) if link else _echo,
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

    await serve(server, listen, name="echo", services=[SERVICE], on_stop=close)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--redis", default="", help="make one durable write to this Redis per call, batched")
    arguments = parser.parse_args()
    asyncio.run(_main(arguments.listen, arguments.redis))
