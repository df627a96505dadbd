"""A service whose settings hold secrets, for tests/integration/test_config_service.py: its
config sources come from MICRO_CONFIG (as `microweave run` gives them); a bound model has a
`Secret` field; an api key from the environment is registry metadata; every change and the
bound model are logged, so a test can show that none of those shows a secret."""

from __future__ import annotations

import logging
import os

import msgspec

from microweave import Context, Secret, Service
from microweave.config import Change

log = logging.getLogger("secretive")


class Database(msgspec.Struct):
    host: str
    port: int
    password: Secret


class GetRequest(msgspec.Struct):
    key: str


class GetReply(msgspec.Struct):
    value: str | None
    sources: list[str]
    password_length: int


service = Service("secretive", metadata={"api_key": Secret(os.environ.get("SECRETIVE_API_KEY", ""))})


def logged(changes: list[Change]) -> None:
    log.info("config changed: %s; settings: %r", changes, service.config.dump())


@service.handler
class Settings:
    def __init__(self) -> None:
        self.db = service.config.bind(Database, "db")
        service.config.on_change(logged)

    async def get(self, req: GetRequest, ctx: Context) -> GetReply:
        value = ctx.config.get(req.key)
        db = self.db.value
        log.info("get %s from %r: db=%r, password=%s", req.key, ctx.config, db, db.password)
        return GetReply(
            value=None if value is None else str(value),
            sources=[s.url for s in ctx.config.sources],
            password_length=len(db.password.reveal()),
        )


if __name__ == "__main__":
    service.run()
