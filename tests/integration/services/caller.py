"""A service that calls the greeter from inside its handlers: `python caller.py`."""

from __future__ import annotations

import msgspec

from microweave import Context, Service


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str
    caller: str = ""
    node: str = ""


service = Service("caller", version="1.0.0")


@service.handler
class Caller:
    async def relay(self, req: HelloRequest) -> HelloReply:
        """Ask the greeter (another process, found through the registry) to greet."""
        return await service.client.call("greeter", "Greeter.SayHello", req, response=HelloReply)

    async def echo(self, req: HelloRequest, ctx: Context) -> HelloReply:
        return HelloReply(message=f"echo {req.name}", caller=ctx.caller, node=service.node_id)


if __name__ == "__main__":
    service.run()
