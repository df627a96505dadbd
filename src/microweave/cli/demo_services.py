"""The demo's services: the greeter of examples/greeter, and a frontend that calls it.

They live in the package so `microweave demo` works when microweave is installed from a wheel,
without the examples directory. They are importable targets too:
`microweave run microweave.cli.demo_services:greeter`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from ..context import Context
from ..registry import Registry
from ..service import Service

__all__ = [
    "Frontend",
    "Greeter",
    "HelloReply",
    "HelloRequest",
    "WelcomeReply",
    "build",
    "frontend",
    "greeter",
]


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str


class WelcomeReply(msgspec.Struct):
    text: str
    greeter_version: str


class Greeter:
    async def say_hello(self, req: HelloRequest, ctx: Context) -> HelloReply:
        return HelloReply(message=f"Hello {req.name}")

    async def say_hello_stream(self, req: HelloRequest) -> AsyncIterator[HelloReply]:
        """Server streaming: one greeting per letter of the name."""
        for letter in req.name:
            yield HelloReply(message=f"Hello {letter}")


class Frontend:
    """Calls the greeter through the registry, as one service calls another."""

    def __init__(self, service: Service) -> None:
        self._service = service  # its client is made on first use, with the service's registry

    async def welcome(self, req: HelloRequest, ctx: Context) -> WelcomeReply:
        reply = await self._service.client.call(
            "greeter", "Greeter.SayHello", HelloRequest(name=req.name), response=HelloReply
        )
        return WelcomeReply(text=f"{reply.message}, welcome aboard!", greeter_version="1.0.0")


def build(registry: Registry | str | None = None, *, drain_delay: float = 0.5) -> tuple[Service, Service]:
    """A fresh greeter and frontend on `registry` (the module-level pair is for `microweave run`)."""
    greeter = Service("greeter", version="1.0.0", registry=registry, drain_delay=drain_delay)
    greeter.handler(Greeter)
    frontend = Service("frontend", version="1.0.0", registry=registry, drain_delay=drain_delay)
    frontend.handler(Frontend(frontend))
    return greeter, frontend


greeter, frontend = build()
