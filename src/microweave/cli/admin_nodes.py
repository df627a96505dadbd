"""The nodes a registry lists and where their admin HTTP endpoint (`/metrics`, `/health`) is.

A node advertises its admin endpoint in its metadata as `admin_address` (host:port). Nodes
without it (the admin endpoint turned off, or a go-micro node) cannot be scraped: they are
returned apart, so a command can say so instead of dropping them silently.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..registry import Registry, Service

__all__ = ["AdminNode", "admin_address_of", "list_records", "split_admin_nodes"]

#: registry lookups at once, for backends whose listing leaves nodes out (Consul's catalog)
LOOKUPS_AT_ONCE = 16
#: the metadata key a node advertises its admin endpoint under
ADMIN_KEY = "admin_address"
#: a host name or an IPv4 address, as an admin address may name it
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")


@dataclass(frozen=True, slots=True)
class AdminNode:
    """One node of a service and its admin address (None when it has no usable one)."""

    service: str
    version: str
    node: str
    admin_address: str | None
    #: why `admin_address` is None, for the note a command prints
    reason: str = ""


def admin_address_of(metadata: dict[str, str]) -> tuple[str | None, str]:
    """(host:port, "") when the metadata holds a usable admin address, else (None, why not).

    The value comes from whoever registered the node: only a plain host:port (IPv6 in
    brackets) is taken, so a target file or a scrape URL cannot be steered elsewhere by it.
    """
    value = metadata.get(ADMIN_KEY)
    if not value:
        return None, "no admin_address in its metadata (admin endpoint off, or not a microweave node)"
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or len(value) > 300
        or not _plain_host(host)
        or not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536)
    ):
        return None, f"admin_address {value[:80]!r} is not host:port"
    if host in ("0.0.0.0", "[::]"):
        return None, f"admin_address {value!r} is a wildcard, not an address to dial"
    return value, ""


def _plain_host(host: str) -> bool:
    """A host name or IPv4 address (letters, digits, `.`, `-`, `_`), or an IPv6 address in
    brackets: what Prometheus and a URL take as a host, nothing that escapes or steers either."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return "%" not in host  # no zone: its name could be anything
    return _HOST_NAME.fullmatch(host) is not None


async def list_records(registry: Registry, names: Sequence[str] = ()) -> list[Service]:
    """The records with live nodes of the services named (every service when none is)."""
    gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)

    async def lookup(name: str) -> list[Service]:
        async with gate:
            return await registry.get_service(name)

    if names:
        found = await asyncio.gather(*(lookup(name) for name in dict.fromkeys(names)))
        return [r for got in found for r in got if r.nodes]
    records = await registry.list_services()
    # some backends list names and versions only (Consul's catalog): their live nodes come
    # from a lookup, which also leaves out nodes whose health check failed
    bare = sorted({r.name for r in records if not r.nodes})
    if bare:
        found = await asyncio.gather(*(lookup(name) for name in bare))
        records = [*records, *(r for got in found for r in got)]
    return [r for r in records if r.nodes]


def split_admin_nodes(records: list[Service]) -> list[AdminNode]:
    """One AdminNode per node (by service and node id, the first record seen wins), sorted."""
    seen: dict[tuple[str, str], AdminNode] = {}
    for record in records:
        for node in record.nodes:
            key = (record.name, node.id)
            if key in seen:
                continue
            address, reason = admin_address_of(node.metadata)
            seen[key] = AdminNode(record.name, record.version, node.id, address, reason)
    return [seen[key] for key in sorted(seen)]
