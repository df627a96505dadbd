"""`microweave services`: what is registered, as a table or as go-micro registry JSON."""

from __future__ import annotations

import asyncio
import json

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from ..registry import Service
from ..service import run_async
from .lookup import not_found_hint
from .options import JsonFlag, RegistryOption, open_registry, registry_url
from .output import err, out, reporting_errors

__all__ = ["services", "to_json"]


def to_json(records: list[Service]) -> str:
    """go-micro's Service records, as `micro list services`/registry tooling would read them."""
    return json.dumps(msgspec.to_builtins(records), indent=2)


#: lookups at once for backends whose listing leaves nodes out (Consul's catalog)
LOOKUPS_AT_ONCE = 16


async def _list(url: str | None) -> tuple[str, list[Service]]:
    async with open_registry(url) as registry:
        records = await registry.list_services()
        # some backends list names and versions only (Consul's catalog, as go-micro's does):
        # their live nodes come from a lookup, which also leaves out nodes whose check failed
        bare = sorted({r.name for r in records if not r.nodes})
        if bare:
            gate = asyncio.Semaphore(LOOKUPS_AT_ONCE)

            async def lookup(name: str) -> list[Service]:
                async with gate:
                    return await registry.get_service(name)

            found = await asyncio.gather(*(lookup(name) for name in bare))
            records = [*records, *(r for got in found for r in got)]
        return repr(registry), [r for r in records if r.nodes]


def services(ctx: typer.Context, registry: RegistryOption = None, json_: JsonFlag = False) -> None:
    """List the registered services: name, versions, node count."""
    url = registry_url(ctx, registry)
    with reporting_errors():
        where, records = run_async(_list(url))
    if json_:
        print(to_json(records))
        return
    if not records:
        err.print(f"no services in {escape(where)}")
        err.print("[dim]hint:[/] start one: `microweave run path/to/service.py`, or try `microweave demo`")
        if url and url.startswith("memory:"):
            err.print(f"[dim]hint:[/] {not_found_hint(open_registry(url))}")
        return
    by_name: dict[str, list[Service]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record)
    out.print(f"services in {escape(where)}")
    table = Table()
    table.add_column("service", style="bold cyan")
    table.add_column("versions")
    table.add_column("nodes", justify="right")
    for name in sorted(by_name):
        versions = by_name[name]
        nodes = {n.id for r in versions for n in r.nodes}
        table.add_row(name, ", ".join(sorted(r.version or "-" for r in versions)), str(len(nodes)))
    out.print(table)
