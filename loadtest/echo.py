"""A bare grpc.aio server answering Deduct with the same message shape and doing nothing else:
what gRPC itself costs per call, the yardstick for the agent's own work in `quota bench`.

    python -m loadtest.echo --listen 127.0.0.1:0     # prints {"ready": "echo", "port": N}
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from quota_center.process import serve
from quota_center.rpc import Context
from region_agent.v1 import region_agent_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["RegionAgent"].full_name


async def _deduct(request: pb.DeductRequest, context: Context) -> pb.DeductResponse:
    return pb.DeductResponse(order_key=request.order_key, lines=request.lines)


async def _main(listen: str) -> None:
    server = grpc.aio.server()
    deduct = grpc.unary_unary_rpc_method_handler(
        _deduct,
        request_deserializer=pb.DeductRequest.FromString,
        response_serializer=pb.DeductResponse.SerializeToString,
    )
    # Registered as the generated code registers the agent's servicer, so both take gRPC's same path.
    handlers = {"Deduct": deduct}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    server.add_registered_method_handlers(SERVICE, handlers)

    async def nothing() -> None:
        pass

    await serve(server, listen, name="echo", services=[SERVICE], on_stop=nothing)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    asyncio.run(_main(parser.parse_args().listen))
