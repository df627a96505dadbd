"""`microweave describe SERVICE`: its nodes, endpoints and subscriptions, as tables or registry JSON.

A subscriber is registered as an endpoint whose metadata says `subscriber=true` (go-micro's
way, which `direct://` reads to find it): the tables show it as a subscription (topic, queue
group, payload type), not as an endpoint to call. The JSON is the registry record as it is.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..registry import Endpoint, Service, Value
from ..service import run_async
from .lookup import find_service
from .options import JsonFlag, RegistryOption, VersionOption, open_registry, registry_url
from .output import out, reporting_errors
from .services import to_json

__all__ = [
    "describe",
    "endpoints_table",
    "format_value",
    "is_subscriber",
    "nodes_table",
    "subscriptions_table",
]


def format_value(value: Value | None) -> str:
    """`HelloRequest {name: str}`: the type and its fields, one level deep as go-micro shows."""
    if value is None:
        return "-"
    if not value.values:
        return value.type
    fields = ", ".join(f"{v.name}: {v.type}" for v in value.values)
    return f"{value.type} {{{fields}}}"


def nodes_table(records: list[Service]) -> Table:
    table = Table(title="nodes", title_justify="left")
    table.add_column("id", style="bold cyan", overflow="fold")
    table.add_column("version")
    table.add_column("address")
    table.add_column("metadata", overflow="fold")
    for record in records:
        for node in record.nodes:
            metadata = "\n".join(f"{k}={v}" for k, v in sorted(node.metadata.items()))
            table.add_row(escape(node.id), escape(record.version), escape(node.address), escape(metadata))
    return table


def is_subscriber(endpoint: Endpoint) -> bool:
    return endpoint.metadata.get("subscriber") == "true"


def endpoints_table(records: list[Service]) -> Table:
    table = Table(title="endpoints", title_justify="left")
    table.add_column("endpoint", style="bold cyan", no_wrap=True)
    table.add_column("request", overflow="fold")
    table.add_column("response", overflow="fold")
    table.add_column("stream")
    seen: set[str] = set()
    for record in records:
        for endpoint in record.endpoints:
            if endpoint.name in seen or is_subscriber(endpoint):
                continue
            seen.add(endpoint.name)
            table.add_row(
                escape(endpoint.name),
                escape(format_value(endpoint.request)),
                escape(format_value(endpoint.response)),
                escape(endpoint.metadata.get("stream", "")),
            )
    return table


def subscriptions_table(records: list[Service]) -> Table | None:
    """The topics the service listens to (None when it has no subscriber): a queue group
    shares each event among its nodes; `-` means every node gets each event."""
    table = Table(title="subscriptions", title_justify="left")
    table.add_column("topic", style="bold cyan", overflow="fold")
    table.add_column("queue", overflow="fold")
    table.add_column("subscriber", overflow="fold")
    table.add_column("payload", overflow="fold")
    seen: set[tuple[str, str, str]] = set()
    for record in records:
        for endpoint in record.endpoints:
            if not is_subscriber(endpoint):
                continue
            topic, queue = endpoint.metadata.get("topic", ""), endpoint.metadata.get("queue", "")
            if (topic, queue, endpoint.name) in seen:
                continue
            seen.add((topic, queue, endpoint.name))
            table.add_row(
                escape(topic or "-"),
                escape(queue or "-"),
                escape(endpoint.name),
                escape(format_value(endpoint.request)),
            )
    return table if seen else None


async def _lookup(url: str | None, name: str, versions: list[str]) -> tuple[str, list[Service]]:
    async with open_registry(url) as registry:
        return repr(registry), await find_service(registry, name, versions)


def describe(
    ctx: typer.Context,
    service: Annotated[
        str, typer.Argument(metavar="SERVICE", help="The service name, as `microweave services` lists it.")
    ],
    version: VersionOption = None,
    registry: RegistryOption = None,
    json_: JsonFlag = False,
) -> None:
    """Show a service's nodes (id, address, metadata), endpoints (request and response types) and
    subscriptions (topic, queue group, payload type)."""
    url = registry_url(ctx, registry)
    with reporting_errors():
        where, records = run_async(_lookup(url, service, version or []))
    if json_:
        print(to_json(records))
        return
    versions = ", ".join(r.version or "-" for r in records)
    out.print(f"[bold]{escape(service)}[/] (versions {escape(versions)}) in {escape(where)}")
    out.print(nodes_table(records))
    endpoints = endpoints_table(records)
    subscriptions = subscriptions_table(records)
    if endpoints.row_count or subscriptions is None:  # a subscriber-only node: no empty table
        out.print(endpoints)
    if subscriptions is not None:
        out.print(subscriptions)
