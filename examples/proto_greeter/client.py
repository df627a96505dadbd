"""Call the proto greeter through its generated stub, with discovery behind the channel.

    python examples/proto_greeter/client.py [NAME]

`client.channel("proto-greeter")` looks the service up in the registry and balances over its
nodes; the stub is the unchanged grpcio one, and its calls are awaitables as with grpc.aio.
"""

from __future__ import annotations

import asyncio
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
runpy.run_path(str(HERE / "build.py"))["ensure_generated"]()
sys.path.insert(0, str(HERE))

import greeter_pb2  # noqa: E402
import greeter_pb2_grpc  # noqa: E402

from microweave import Client  # noqa: E402


async def main(name: str) -> None:
    async with Client() as client:
        stub = greeter_pb2_grpc.GreeterStub(client.channel("proto-greeter"))
        reply = await stub.SayHello(greeter_pb2.HelloRequest(name=name), timeout=10)
        print(reply.message)
        async for item in stub.SayHelloStream(greeter_pb2.HelloRequest(name=name), timeout=10):
            print(item.message)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "world"))
