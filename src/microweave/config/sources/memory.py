"""`memory://`: settings held in this process, for tests and for code that sets its own.

source = MemorySource({"db": {"port": 5432}})
await source.set("db.port", "5433")        # text, read as a KV leaf is
source.put("db", {"port": 5434})           # a value (a mapping merges, deeper keys win)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..._backends import BackendURL
from ...errors import ConfigurationError
from .. import Item, Snapshot, Source

__all__ = ["MemorySource"]


class MemorySource(Source):
    scheme = "memory"
    writable = True

    def __init__(self, data: Mapping[str, Any] | None = None, *, name: str = "") -> None:
        self.url = f"memory://{name}"
        self._items: Snapshot = {"": Item(dict(data), "value")} if data else {}
        self._version = 0
        self._read_version = 0  # what the last read() saw: the watch starts from there
        self._changed = asyncio.Event()

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> MemorySource:
        if url.query:
            raise ConfigurationError(f"memory:// takes no options (got {', '.join(url.query)})")
        return cls(kwargs.get("data"), name=",".join(url.hosts))

    async def read(self) -> Snapshot:
        self._read_version = self._version
        return dict(self._items)

    def put(self, key: str, value: Any, format: str = "value") -> None:
        """Store a value (or a document: format json/yaml/toml) at a dotted key."""
        self._items[key] = Item(value, format)
        self._bump()

    async def set(self, key: str, value: str) -> None:
        # as in etcd and Consul: the root ("") holds a document, any other key a KV leaf
        self.put(key, value, "yaml" if key == "" else "text")

    async def delete(self, key: str) -> None:
        if self._items.pop(key, None) is not None:
            self._bump()

    def _bump(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _changes(self) -> AsyncIterator[Snapshot]:
        seen = self._read_version
        while True:
            if self._version == seen:
                await self._changed.wait()
            seen = self._version
            yield dict(self._items)

    def watch(self) -> AsyncIterator[Snapshot]:
        return self._changes()
