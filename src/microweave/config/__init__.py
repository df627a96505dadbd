"""Config: layered settings read from sources, merged in order (later wins), watched live, typed.

    config = Config(["file://settings.yaml", "env://APP_", "etcd://10.0.0.1:2379/config/greeter"])
    async with config:
        port = config.get("db.port", int, default=5432)
        db = config.bind(Database, "db")        # db.value: a validated Database, swapped on change
        async for change in config.watch("db"):  # Change(key, old, new, source)
            ...

A source (`file`, `env`, `etcd`, `consul`, `memory`; third-party ones through the
`microweave.config_sources` entry point) hands the config a snapshot of what it holds: dotted
keys mapped to `Item`s, still unparsed. The config parses each item, builds the source's tree,
merges the trees in source order and validates every bound model against the result. An update
that does not parse or validate is rejected as a whole: the last good values stay, and one error
names the source and the keys. A source that becomes unreachable keeps its last good values; it
reconnects by itself with backoff and delivers a fresh snapshot when it is back.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .._backends import BackendURL

__all__ = [
    "MISSING",
    "Bound",
    "Change",
    "Config",
    "ConfigWatch",
    "Item",
    "Secret",
    "Snapshot",
    "Source",
]


class _Missing:
    """The value of a key that is not there (before it was added, after it was removed)."""

    _instance: ClassVar[_Missing | None] = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class Item(NamedTuple):
    """One entry of a source, not parsed yet.

    `format` says how to read `data`: "json", "yaml" or "toml" for a document (bytes or str,
    whose top level must be a mapping when it sits at the source's root); "text" for a value
    stored under a key of its own (a KV leaf: a JSON object, array or quoted string is
    decoded, anything else stays text for typed reads to convert); "value" for data that
    is already a Python value (env, memory).
    """

    data: Any
    format: str

    def __repr__(self) -> str:
        # never the data: it may hold a secret (a password in a document, a token leaf)
        size = f"{len(self.data)} bytes" if isinstance(self.data, bytes | str) else type(self.data).__name__
        return f"Item(format={self.format!r}, {size})"


#: dotted key ("" is the source's root) -> its item
Snapshot = dict[str, Item]


class Change(NamedTuple):
    """A key whose value changed: `old` is MISSING when it was added, `new` when removed.
    Keys are leaves (a mapping's keys are reported one by one); a secret key's values are
    `Secret`s. `source` is the public URL of the source whose update made the change."""

    key: str
    old: Any
    new: Any
    source: str


class Source(abc.ABC):
    """Where a layer of settings lives.

    `read()` returns everything the source holds now; `watch()` then yields a fresh snapshot
    each time that may have changed (a spurious one is harmless: the config compares). A
    source's watch never raises for an outage: it retries with backoff (`registry.outage`),
    logs once per state change, and yields a snapshot again when the engine is back. A source
    built from a URL is closed by whoever built it.
    """

    scheme: ClassVar[str] = ""
    #: whether `set()` and `delete()` write to it (etcd, Consul, memory)
    writable: ClassVar[bool] = False
    #: whether its values may name the process environment, `${VAR:default}`: yes for what
    #: this host controls (files, env, memory), no for shared engines (etcd, Consul), whose
    #: writers would otherwise read the service's environment out through its settings
    interpolates: ClassVar[bool] = True

    #: how the source is named in logs and errors: its URL without credentials
    url: str = ""
    #: an optional source that cannot be read at start is empty until it can
    optional: bool = False

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> Source:
        raise ConfigurationError(f"the {cls.scheme} config source cannot be built from a URL")

    @abc.abstractmethod
    async def read(self) -> Snapshot:
        """Everything the source holds; raises `ConfigurationError` (bad setup) or
        `Unavailable` (engine unreachable), naming the source."""

    def watch(self) -> AsyncIterator[Snapshot] | None:
        """Snapshots as the source changes, from after the last `read()`; None: it never changes."""
        return None

    async def set(self, key: str, value: str) -> None:
        """Store `value` (text, read back as a "text" item) under the dotted `key`."""
        raise ConfigurationError(f"{self.url} is read-only; set keys in etcd or Consul, or edit the file")

    async def delete(self, key: str) -> None:
        raise ConfigurationError(f"{self.url} is read-only; set keys in etcd or Consul, or edit the file")

    async def aclose(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing
        """Release what the source opened."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


from .core import Bound, Config, ConfigWatch  # noqa: E402 - they build on the interface above
from .secret import Secret  # noqa: E402
