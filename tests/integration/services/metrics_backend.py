"""The backend of the observability tests, run as `microweave run metrics_backend.py`.

`Store.Get` answers, or fails with 404 for the name `missing` (a call counted as failed). A
short TTL makes its heartbeat (a registration every second) show a registry outage quickly.
"""

from __future__ import annotations

import msgspec

from microweave import Service
from microweave.errors import NotFound


class Item(msgspec.Struct):
    name: str


class Stock(msgspec.Struct):
    name: str
    count: int


service = Service("backend", version="2.1.0", ttl=3.0)


@service.handler
class Store:
    async def get(self, req: Item) -> Stock:
        if req.name == "missing":
            raise NotFound(f"no item {req.name}")
        return Stock(name=req.name, count=len(req.name))
