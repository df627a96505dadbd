"""A service that answers with what its config holds, for `microweave run --config` tests: the
sources come from outside (MICRO_CONFIG, or --config), unless $CONFIGURED_IN_CODE names them
here, as code that passes `Service(config=...)` does."""

from __future__ import annotations

import os

import msgspec

from microweave import Context, Service


class GetRequest(msgspec.Struct):
    key: str


class GetReply(msgspec.Struct):
    value: str | None
    sources: list[str]


service = Service("configured", config=os.environ.get("CONFIGURED_IN_CODE"))


@service.handler
class Settings:
    async def get(self, req: GetRequest, ctx: Context) -> GetReply:
        value = ctx.config.get(req.key)
        return GetReply(
            value=None if value is None else str(value),
            sources=[s.url for s in ctx.config.sources],
        )


if __name__ == "__main__":
    service.run()
