"""The greeter: a typed microweave service.

Run it, then call it from another terminal:

    microweave run examples/greeter/service.py
    microweave call greeter Greeter.SayHello '{"name": "x"}'    # -> {"message": "Hello x"}
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from microweave import Service


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str


service = Service("greeter", version="1.0.0")


@service.handler
class Greeter:
    async def say_hello(self, req: HelloRequest) -> HelloReply:
        return HelloReply(message=f"Hello {req.name}")

    async def say_hello_stream(self, req: HelloRequest) -> AsyncIterator[HelloReply]:
        """Server streaming: one greeting per letter of the name."""
        for letter in req.name:
            yield HelloReply(message=f"Hello {letter}")


if __name__ == "__main__":
    service.run()
