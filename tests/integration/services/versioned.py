"""A greeter whose version comes from $GREETER_VERSION and shows in every reply, so a test can
run two versions side by side and tell which one answered: `microweave run versioned.py`."""

from __future__ import annotations

import os

import msgspec

from microweave import Service


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str
    version: str


service = Service("versioned", version=os.environ["GREETER_VERSION"])


@service.handler
class Greeter:
    async def say_hello(self, req: HelloRequest) -> HelloReply:
        return HelloReply(message=f"Hello {req.name}", version=service.version)


if __name__ == "__main__":
    service.run()
