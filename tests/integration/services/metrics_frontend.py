"""The frontend of the observability tests, run as `microweave run metrics_frontend.py`.

`Front.Fetch` calls the backend (another process, found through the registry), so this node
counts calls it serves and calls its client makes (retries and registry lookups among them).
"""

from __future__ import annotations

import msgspec

from microweave import Service


class Item(msgspec.Struct):
    name: str


class Stock(msgspec.Struct):
    name: str
    count: int


service = Service("frontend", version="1.0.0", ttl=3.0)


@service.handler
class Front:
    async def fetch(self, req: Item) -> Stock:
        return await service.client.call("backend", "Store.Get", req, response=Stock)
