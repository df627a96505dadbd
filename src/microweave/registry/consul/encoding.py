"""go-micro's Consul encoding of a registry record, both ways.

One Consul service instance per node: ID = node id, Name = service name, Address/Port = the
node's address. Everything else travels in tags, as go-micro writes and reads them:

    t-<hex(zlib(JSON {k: v}))>   one per node metadata pair
    e-<hex(zlib(endpoint JSON))> one per endpoint, in order
    v-<hex(zlib(version))>       the version, raw text
    s-<hex(zlib(JSON {...}))>    the service's own metadata: ours; go-micro has no place for
                                 it in Consul and skips tags it does not know

Legacy go-micro wrote `e=`/`t=`/`v=` followed by plain JSON (plain text for the version); both
are read. As go-micro does, the first `e` (or `t`) tag decides which of the two forms the rest
of them must use. A tag that does not decode is skipped, not fatal: one bad writer must not
hide the other nodes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ...errors import RegistryError
from .. import Endpoint, Node, Service
from ..packed import pack, pack_raw, unpack, unpack_raw

__all__ = ["Entry", "HealthCheck", "decode_entries", "decode_version", "registration", "split_address"]

#: Consul removes a critical service no sooner than this after it turned critical
_MIN_DEREGISTER = 60.0
#: added on top, as go-micro does, so a watcher sees the node go critical before it is removed
_SPLAY = 5.0


class HealthCheck(msgspec.Struct):
    node: str = msgspec.field(name="Node", default="")
    check_id: str = msgspec.field(name="CheckID", default="")
    status: str = msgspec.field(name="Status", default="")
    service_name: str = msgspec.field(name="ServiceName", default="")
    modify_index: int = msgspec.field(name="ModifyIndex", default=0)


class _CatalogNode(msgspec.Struct):
    address: str = msgspec.field(name="Address", default="")


class _Instance(msgspec.Struct):
    id: str = msgspec.field(name="ID")
    service: str = msgspec.field(name="Service")
    tags: list[str] | None = msgspec.field(name="Tags", default=None)
    address: str = msgspec.field(name="Address", default="")
    port: int = msgspec.field(name="Port", default=0)


class Entry(msgspec.Struct):
    """One element of `/v1/health/service/<name>`: an instance, its node, their checks."""

    node: _CatalogNode = msgspec.field(name="Node")
    service: _Instance = msgspec.field(name="Service")
    checks: list[HealthCheck] | None = msgspec.field(name="Checks", default=None)


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as Consul wants it: Address and Port apart."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise RegistryError(f"node address {address!r} is not host:port; Consul needs a port")
    return host.strip("[]"), int(port)


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"  # a Go duration, without float exponents


def registration(service: Service, node: Node, ttl: float | None) -> dict[str, Any]:
    """The body of `PUT /v1/agent/service/register` for one node, as go-micro sends it.

    With a TTL, one TTL check (Consul names it `service:<node id>`) that starts passing, so the
    node is visible as soon as the call returns (go-micro registers it critical, then passes).
    """
    host, port = split_address(node.address)
    tags = [pack({key: value}) for key, value in node.metadata.items()]
    tags = ["t-" + tag for tag in tags]
    tags += ["e-" + pack(endpoint) for endpoint in service.endpoints]
    tags.append("v-" + pack_raw(service.version.encode()))
    if service.metadata:
        tags.append("s-" + pack(service.metadata))
    body: dict[str, Any] = {"ID": node.id, "Name": service.name, "Tags": tags, "Address": host, "Port": port}
    if ttl:
        body["Check"] = {
            "TTL": _duration(ttl),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": _duration(max(ttl, _MIN_DEREGISTER) + _SPLAY),
        }
    return body


def decode_version(tags: list[str]) -> str | None:
    """The version in the first `v-`/`v=` tag; None when there is none (or it is unreadable)."""
    for tag in tags:
        if len(tag) < 2 or tag[0] != "v":
            continue
        if tag[1] == "=":
            return tag[2:]
        if tag[1] == "-":
            try:
                return unpack_raw(tag[2:]).decode("utf-8", "replace")
            except ValueError:
                return None
    return None


def _decode_tags(tags: list[str], letter: str, type: Any) -> list[Any]:
    values: list[Any] = []
    form = ""  # the first tag of this letter decides the form all of them must have
    for tag in tags:
        if len(tag) < 2 or tag[0] != letter or tag[1] not in "=-" or (form and tag[1] != form):
            continue
        form = tag[1]
        try:
            if form == "-":
                values.append(unpack(tag[2:], type))
            else:
                values.append(msgspec.json.decode(tag[2:], type=type))
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            continue
    return values


def _decode_entry(entry: Entry) -> Service:
    tags = entry.service.tags or []
    metadata: dict[str, str] = {}
    for pair in _decode_tags(tags, "t", dict[str, str]):
        metadata.update(pair)
    service_metadata: dict[str, str] = {}
    for pair in _decode_tags(tags, "s", dict[str, str]):
        service_metadata.update(pair)
    host = entry.service.address or entry.node.address
    if ":" in host:
        host = f"[{host}]"
    return Service(
        name=entry.service.service,
        version=decode_version(tags) or "",
        metadata=service_metadata,
        endpoints=_decode_tags(tags, "e", Endpoint),
        nodes=[Node(id=entry.service.id, address=f"{host}:{entry.service.port}", metadata=metadata)],
    )


_entries = msgspec.json.Decoder(list[Entry])


def decode_entries(name: str, body: bytes) -> dict[str, Service]:
    """Node id -> one-node record, for the live instances of `name` in a health answer.

    An instance with any critical check (its own TTL, or its Consul node's health) is left out,
    as go-micro does: a dead node disappears once its TTL check expires, long before Consul
    removes it.
    """
    try:
        entries = _entries.decode(body) if body.strip() else []
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RegistryError(f"unexpected answer from Consul for {name}: {exc}") from None
    out: dict[str, Service] = {}
    for entry in entries:
        if entry.service.service != name:
            continue
        if any(check.status == "critical" for check in entry.checks or ()):
            continue
        out[entry.service.id] = _decode_entry(entry)
    return out
