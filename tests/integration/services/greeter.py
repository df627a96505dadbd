"""A greeter for the lifecycle tests, run as `python greeter.py [--ttl SECONDS]`.

Besides greeting it tells who called it (to prove caller identity crosses processes) and can
call back the `caller` service (so two processes call each other in both directions).
"""

from __future__ import annotations

import argparse

import msgspec

from microweave import Context, Service


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str
    caller: str = ""
    node: str = ""


parser = argparse.ArgumentParser()
parser.add_argument("--ttl", type=float, default=15.0)
options = parser.parse_args()

service = Service("greeter", version="1.0.0", ttl=options.ttl)


@service.handler
class Greeter:
    async def say_hello(self, req: HelloRequest, ctx: Context) -> HelloReply:
        return HelloReply(message=f"Hello {req.name}", caller=ctx.caller, node=service.node_id)

    async def call_back(self, req: HelloRequest, ctx: Context) -> HelloReply:
        """Call the `caller` service from inside this handler, as this service."""
        return await service.client.call("caller", "Caller.Echo", req, response=HelloReply)


if __name__ == "__main__":
    service.run()
