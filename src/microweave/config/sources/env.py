"""`env://PREFIX_`: the process environment, `PREFIX_DB__PORT=5432` read as `db.port`.

After the prefix, `__` separates levels and the names are lowercased; a single `_` stays part
of the name (`APP_DB_HOST` is `db_host`). Values stay text: a typed read or a bound model
converts them ("5432" reads as 5432 for an int). The environment does not change under a
running process, so this source is read once.
"""

from __future__ import annotations

from typing import Any

from ..._backends import BackendURL, environ
from ...errors import ConfigurationError
from .. import Item, Snapshot, Source

__all__ = ["EnvSource"]


class EnvSource(Source):
    scheme = "env"

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.url = f"env://{prefix}"

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> EnvSource:
        if url.query or url.path.strip("/") or len(url.hosts) > 1:
            raise ConfigurationError(f"env:// takes a prefix only, as in env://APP_ (got {url!r})")
        return cls(url.hosts[0] if url.hosts else "", **kwargs)

    async def read(self) -> Snapshot:
        items: Snapshot = {}
        for name, value in environ().items():
            if not name.startswith(self.prefix) or len(name) == len(self.prefix):
                continue
            parts = name[len(self.prefix) :].lower().split("__")
            if all(parts):
                items[".".join(parts)] = Item(value, "value")
        return items
