"""Reading one service's records, for the commands that need its nodes or endpoints."""

from __future__ import annotations

from collections.abc import Sequence

from ..registry import Endpoint, Registry, Service
from ..server import grpc_path
from .output import CliError

__all__ = ["find_endpoint", "find_service", "not_found_hint"]


def not_found_hint(registry: Registry) -> str:
    if registry.scheme == "memory":
        return "memory:// lives inside one process; use local:// (the default) to reach other processes"
    return "is it running? on the same registry (--registry, MICRO_REGISTRY)? try `microweave services`"


async def find_service(registry: Registry, name: str, versions: Sequence[str] = ()) -> list[Service]:
    """The versions of `name` with live nodes (all, or those asked for); a CliError saying what
    to check when there are none."""
    records = [r for r in await registry.get_service(name) if r.nodes]
    if not records:
        raise CliError(f"service {name} not found in {registry!r}", hint=not_found_hint(registry))
    if versions:
        chosen = [r for r in records if r.version in versions]
        if not chosen:
            running = sorted({r.version or '""' for r in records})
            raise CliError(
                f"service {name} has no running node of version {', '.join(versions)} "
                f"(running: {', '.join(running)})",
                hint=f"pick a running version, e.g. --version {running[0]}, or leave --version out",
            )
        records = chosen
    return records


def find_endpoint(records: list[Service], name: str) -> Endpoint | None:
    """The endpoint as registered (by `Greeter.SayHello` or by gRPC path), from any version."""
    for record in records:
        for endpoint in record.endpoints:
            path = endpoint.metadata.get("path") or grpc_path(record.name, endpoint.name)
            if name in (endpoint.name, path):
                return endpoint
    return None
