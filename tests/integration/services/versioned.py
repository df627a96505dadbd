"""A greeter whose version comes from $GREETER_VERSION and shows in every reply, so a test can
run two versions side by side and tell which one answered: `microweave run versioned.py`.
Replies also carry what the caller sent besides the body (its `x-` metadata, the seconds left
before its deadline), so tests can check that options reach the handler."""

from __future__ import annotations

import os

import msgspec

from microweave import Context, Service


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str
    version: str
    metadata: dict[str, str]
    seconds_left: float | None


service = Service("versioned", version=os.environ["GREETER_VERSION"])


@service.handler
class Greeter:
    async def say_hello(self, req: HelloRequest, ctx: Context) -> HelloReply:
        return HelloReply(
            message=f"Hello {req.name}",
            version=service.version,
            metadata={k: v for k, v in ctx.metadata.items() if k.startswith("x-")},
            seconds_left=ctx.time_remaining(),
        )


if __name__ == "__main__":
    service.run()
