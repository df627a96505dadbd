"""Registry: where services announce their nodes and callers look them up.

The records are go-micro's (Service/Node/Endpoint/Value, same JSON field names), so a go-micro
process reading the same etcd or Consul sees our nodes and we see theirs. A registration has a
TTL: the owner re-registers within it (the heartbeat) or the node disappears from lookups.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

import msgspec

__all__ = [
    "Action",
    "Endpoint",
    "Event",
    "Node",
    "Registry",
    "Service",
    "Value",
    "Watcher",
    "merge_nodes",
    "resync",
]


class Value(msgspec.Struct, omit_defaults=False):
    name: str
    type: str
    values: list[Value] | None = None


class Endpoint(msgspec.Struct):
    name: str
    request: Value | None = None
    response: Value | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class Node(msgspec.Struct):
    id: str
    address: str
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class Service(msgspec.Struct):
    name: str
    version: str = ""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    endpoints: list[Endpoint] = msgspec.field(default_factory=list)
    nodes: list[Node] = msgspec.field(default_factory=list)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> Service:
        """A go-micro Service JSON. Go writes a nil map or slice as `null`, and go-micro never
        sets a service's own metadata: `null` there (and in endpoint or node metadata, or the
        endpoint list) reads as empty."""
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.ValidationError:
            raw = msgspec.json.decode(data)
            if not isinstance(raw, dict):
                raise
            return msgspec.convert(_empty_for_null(raw), cls)

    def with_nodes(self, nodes: list[Node]) -> Service:
        return msgspec.structs.replace(self, nodes=nodes)


def _empty_for_null(raw: dict[str, Any]) -> dict[str, Any]:
    """Go's `null` for a nil map or slice, as empty, where go-micro's Service may hold one."""
    for key, empty in (("metadata", dict), ("endpoints", list), ("nodes", list)):
        if key in raw and raw[key] is None:
            raw[key] = empty()
    for key in ("endpoints", "nodes"):
        for item in raw.get(key) or ():
            if isinstance(item, dict) and "metadata" in item and item["metadata"] is None:
                item["metadata"] = {}
    return raw


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    #: the watcher lost events (fell behind, or lost its stream): re-read, then keep watching
    RESYNC = "resync"


class Event(msgspec.Struct, frozen=True):
    """One change seen by a watcher; what `service` holds depends on the action.

    - CREATE, UPDATE: the record (name, version, metadata, endpoints) with the node(s) added or
      changed, in full.
    - DELETE: the service's name and version with the node(s) removed, as last seen (at least
      their ids); deregistration and TTL expiry look the same.
    - RESYNC: a record with no nodes, named after the watched service ("" when watching all).
      Events were dropped: whoever mirrors the registry must re-read what it holds.
    """

    action: Action
    service: Service


def resync(service: str | None) -> Event:
    """The RESYNC event of a watcher on `service` (None: every service)."""
    return Event(Action.RESYNC, Service(name=service or ""))


class Watcher(abc.ABC):
    """An async iterator of events; close it to stop watching (iteration then ends).

    A failure to read the registry is raised from `__anext__`; the watcher may be iterated
    again afterwards, and if it could not keep track meanwhile it yields RESYNC first.
    """

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Event: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Watcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Registry(abc.ABC):
    """The interface every registry backend implements (go-micro's registry.Registry)."""

    #: the URL scheme the backend answers to
    scheme: str = ""
    #: whether the backend reports the node's per-endpoint call counts (NATS's $SRV.STATS): a
    #: service on such a registry counts its calls (server/stats.py); the others pay nothing
    counts_calls: bool = False

    @abc.abstractmethod
    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        """Add or refresh the service's nodes; with a TTL they expire unless registered again."""

    @abc.abstractmethod
    async def deregister(self, service: Service) -> None:
        """Remove the service's nodes (the others of the same service stay)."""

    @abc.abstractmethod
    async def get_service(self, name: str) -> list[Service]:
        """Every version of the service with its live nodes; empty when there is none."""

    @abc.abstractmethod
    async def list_services(self) -> list[Service]:
        """Every registered service (nodes may be left out by some backends)."""

    @abc.abstractmethod
    async def watch(self, service: str | None = None) -> Watcher:
        """Subscribe to changes of one service, or of every service when `service` is None.

        The subscription is complete when this returns: any change made after it is delivered.
        There is no initial snapshot: only changes after subscribing are events. To mirror the
        registry without a gap, subscribe first, then read (`get_service`), then apply events;
        an event about a node already read is harmless, since nodes are replaced by id.
        See `Event` for what each action carries. Polling backends may coalesce changes
        between two polls (a node created and removed in between yields nothing). A consumer
        that falls behind by more than the backend's buffer gets one RESYNC in place of the
        events it missed, then the events that follow.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections; registrations made through this instance may stay until TTL."""

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def merge_nodes(records: list[Service]) -> list[Service]:
    """Fold one-node records (as etcd and files hold them) into one Service per version."""
    by_version: dict[str, Service] = {}
    seen: dict[str, set[str]] = {}  # node ids per version: one set, not one per record
    for record in records:
        known = by_version.get(record.version)
        if known is None:
            known = by_version[record.version] = record.with_nodes([])
            seen[record.version] = set()
        ids = seen[record.version]
        for node in record.nodes:
            if node.id not in ids:
                ids.add(node.id)
                known.nodes.append(node)
    return list(by_version.values())


def from_url(url: str | None = None, **kwargs: Any) -> Registry:
    """A registry from a URL such as `local://`, `memory://` or `etcd://host:2379`."""
    from .._backends import load_registry

    return load_registry(url, **kwargs)
