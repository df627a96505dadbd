"""go-micro's NATS registry messages, read leniently and written as go-micro writes them.

Two subjects, no storage anywhere (go-micro v5 `registry/nats`):

- `micro.nats.query`: a request `{"Service": {"name": ...}, "Action": "get"}` (or `"list"` with
  `"Service": null`) with a reply inbox; every process that registered a matching node answers
  with its Service JSON, one message per record, and the asker gathers replies for a window.
- `micro.nats.watch`: `{"Service": {...}, "Action": "create" | "update" | "delete"}`, published
  on every register (the heartbeat re-announces) and deregister.

Beyond go-micro, our records carry `"ttl"` (seconds; 0 for none) inside the Service JSON: Go's
JSON decoder ignores unknown fields, so go-micro still reads them, while our watchers learn when
a silent node is due to expire. go-micro writes `null` for empty maps and lists: we accept it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import Service

__all__ = [
    "MAX_MESSAGE",
    "QUERY",
    "WATCH",
    "Announce",
    "decode_announce",
    "decode_query",
    "decode_service",
    "encode_announce",
    "encode_query",
    "encode_service",
]

QUERY = "micro.nats.query"
WATCH = "micro.nats.watch"
#: the largest message we read from a peer (nats-server's default max_payload is 1 MiB)
MAX_MESSAGE = 1 << 20

_json = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class Announce(msgspec.Struct, frozen=True):
    """One `micro.nats.watch` message: the action, the record, and its TTL as announced.

    `ttl` is None when the announcer did not say (a go-micro peer), 0 when the record has none.
    """

    action: str
    service: Service
    ttl: float | None


def encode_service(service: Service, ttl: float | None) -> bytes:
    """A Service JSON as go-micro writes it, plus our `ttl` (0: none)."""
    data = msgspec.to_builtins(service)
    data["ttl"] = ttl or 0
    return _encoder.encode(data)


def encode_announce(action: str, service: Service, ttl: float | None) -> bytes:
    data = msgspec.to_builtins(service)
    data["ttl"] = ttl or 0
    return _encoder.encode({"Service": data, "Action": action})


def encode_query(name: str | None) -> bytes:
    """go-micro's query: `get` for one service, `list` for all."""
    if name is None:
        return _encoder.encode({"Service": None, "Action": "list"})
    empty = {"name": name, "version": "", "metadata": None, "endpoints": None, "nodes": None}
    return _encoder.encode({"Service": empty, "Action": "get"})


def decode_query(data: bytes) -> tuple[str, str] | None:
    """(action, service name) of a query, or None when it is not one we answer."""
    message = _object(data)
    if message is None:
        return None
    action = message.get("Action")
    service = message.get("Service")
    name = service.get("name") if isinstance(service, dict) else None
    if action == "get" and isinstance(name, str) and name:
        return action, name
    if action == "list":
        return action, ""
    return None


def decode_service(data: bytes) -> tuple[Service, float | None] | None:
    """A Service JSON (a query reply) and its TTL, or None when it is not one."""
    return _service(_object(data))


def decode_announce(data: bytes) -> Announce | None:
    message = _object(data)
    if message is None or not isinstance(message.get("Action"), str):
        return None
    decoded = _service(message.get("Service"))
    if decoded is None:
        return None
    return Announce(message["Action"], decoded[0], decoded[1])


def _object(data: bytes) -> dict[str, Any] | None:
    if len(data) > MAX_MESSAGE:
        return None
    try:
        message = _json.decode(data)
    except msgspec.DecodeError:
        return None
    return message if isinstance(message, dict) else None


def _service(data: object) -> tuple[Service, float | None] | None:
    if not isinstance(data, dict):
        return None
    ttl = data.pop("ttl", None)
    if not (ttl is None or (isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl >= 0)):
        ttl = None
    _no_nulls(data, ("metadata",), ("endpoints", "nodes"))
    for endpoint in data.get("endpoints") or ():
        if isinstance(endpoint, dict):
            _no_nulls(endpoint, ("metadata",), ())
    for node in data.get("nodes") or ():
        if isinstance(node, dict):
            _no_nulls(node, ("metadata",), ())
    try:
        service = msgspec.convert(data, Service)
    except msgspec.ValidationError:
        return None
    if not service.name:
        return None
    return service, (float(ttl) if ttl is not None else None)


def _no_nulls(data: dict[str, Any], maps: tuple[str, ...], lists: tuple[str, ...]) -> None:
    """go-micro writes nil maps and slices as null; ours are empty."""
    for key in maps:
        if key in data and data[key] is None:
            data[key] = {}
    for key in lists:
        if key in data and data[key] is None:
            data[key] = []
