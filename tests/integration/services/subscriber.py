"""A service with subscribers, for the CLI's broker tests: `python subscriber.py`.

It listens on `user.created` in the queue group `mailer` (a typed msgspec payload) and on
`audit` (every node, raw bytes), on the broker MICRO_BROKER names (default direct://), and
prints one JSON line per event it gets: {"subscriber", "id", "body"}.
"""

from __future__ import annotations

import json

import msgspec

from microweave import MessageContext, Service


class UserCreated(msgspec.Struct):
    id: int
    name: str


service = Service("accounts", version="1.0.0")


@service.subscriber("user.created", queue="mailer")
async def welcome(event: UserCreated, ctx: MessageContext) -> None:
    line = {"subscriber": "welcome", "id": ctx.id, "body": msgspec.to_builtins(event)}
    print(json.dumps(line), flush=True)


@service.subscriber("audit")
async def audit(body: bytes, ctx: MessageContext) -> None:
    line = {"subscriber": "audit", "id": ctx.id, "body": body.decode(errors="replace")}
    print(json.dumps(line), flush=True)


@service.handler
class Accounts:
    async def count(self, req: dict[str, int]) -> dict[str, int]:
        return {"count": 0}


if __name__ == "__main__":
    service.run()
