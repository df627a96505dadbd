"""The proto greeter: a grpcio-generated servicer served by microweave.

    microweave run examples/proto_greeter/service.py
    python examples/proto_greeter/client.py                        # through the generated stub
    microweave call proto-greeter Greeter.SayHello '{"name": "x"}'  # JSON, via gRPC reflection

The servicer is plain grpcio code; microweave registers it, serves it over gRPC (any grpcio or
go-micro client can call /helloworld.Greeter/SayHello) and finds it for `client.channel`.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
runpy.run_path(str(HERE / "build.py"))["ensure_generated"]()
sys.path.insert(0, str(HERE))  # generated modules import each other by top-level name

import greeter_pb2  # noqa: E402
import greeter_pb2_grpc  # noqa: E402

from microweave import Service  # noqa: E402


class GreeterServicer(greeter_pb2_grpc.GreeterServicer):
    async def SayHello(self, request: greeter_pb2.HelloRequest, context: Any) -> greeter_pb2.HelloReply:
        return greeter_pb2.HelloReply(message=f"Hello {request.name}")

    async def SayHelloStream(
        self, request: greeter_pb2.HelloRequest, context: Any
    ) -> AsyncIterator[greeter_pb2.HelloReply]:
        for letter in request.name:
            yield greeter_pb2.HelloReply(message=f"Hello {letter}")


service = Service("proto-greeter", version="1.0.0")
service.add_servicer(GreeterServicer(), greeter_pb2_grpc.add_GreeterServicer_to_server)

if __name__ == "__main__":
    service.run()
