"""`microweave stats SERVICE`: calls per second, errors and latency per endpoint, live.

Finds the service's nodes in the registry and reads each node's `/metrics` (the admin address
its node metadata advertises) every `--interval`; rates, error percentages and p50/p99 cover
the time between two reads, summed over the nodes. The registry is read again at every refresh,
so nodes that start or stop show up. A node that does not answer is a row saying so.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import aiohttp
import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..errors import MicroError
from ..logs import printable
from ..registry import Registry
from ..service import run_async
from .admin_nodes import AdminNode, list_records, split_admin_nodes
from .lookup import find_service
from .node_metrics import EndpointCounts, NodeMetrics, add, parse_node_metrics, quantile, since
from .options import JsonFlag, RegistryOption, VersionOption, open_registry, registry_url
from .output import err, out, reporting_errors
from .scrape import ScrapeFailed, fetch_metrics
from .signals import until_signal

__all__ = ["NodeRead", "render", "stats", "summarize"]

#: nodes read at once
SCRAPES_AT_ONCE = 32
#: endpoints the table shows, the busiest (a node's page may name any number; --json has all)
MAX_ROWS = 50


@dataclass(frozen=True, slots=True)
class NodeRead:
    """One node at one moment: its metrics, or why there are none."""

    node: AdminNode
    at: float
    metrics: NodeMetrics | None = None
    error: str = ""


async def _read(session: aiohttp.ClientSession, node: AdminNode, service: str, timeout: float) -> NodeRead:
    if node.admin_address is None:
        return NodeRead(node, time.monotonic(), error=node.reason)
    try:
        text = await fetch_metrics(session, node.admin_address, timeout=timeout)
    except ScrapeFailed as exc:
        return NodeRead(node, time.monotonic(), error=str(exc))
    at = time.monotonic()
    try:
        return NodeRead(node, at, metrics=parse_node_metrics(text, service))
    except ValueError as exc:
        return NodeRead(node, at, error=f"its /metrics page does not parse: {str(exc)[:200]}")


async def read_nodes(
    session: aiohttp.ClientSession, nodes: Sequence[AdminNode], service: str, timeout: float
) -> list[NodeRead]:
    gate = asyncio.Semaphore(SCRAPES_AT_ONCE)

    async def one(node: AdminNode) -> NodeRead:
        async with gate:
            return await _read(session, node, service, timeout)

    return list(await asyncio.gather(*(one(node) for node in nodes)))


def _count(value: float) -> float | int:
    """A counter's value as JSON shows it: an int when it is one (Prometheus sends floats)."""
    return int(value) if float(value).is_integer() else value


def _percent(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole > 0 else None


def _latency(counts: EndpointCounts) -> dict[str, float | None]:
    return {"p50_seconds": quantile(0.5, counts.buckets), "p99_seconds": quantile(0.99, counts.buckets)}


def summarize(
    service: str, where: str, now: Sequence[NodeRead], before: dict[str, NodeRead]
) -> dict[str, Any]:
    """The snapshot `--json` prints: per node, and per endpoint `total` (since the nodes
    started) and `window` (between the previous read of each node and this one; None on the
    first read). Rates are per node over its own window, then summed."""
    answered = [r for r in now if r.metrics is not None]
    total = add(r.metrics for r in answered if r.metrics is not None)
    windows: list[tuple[NodeMetrics, float]] = []
    for read in answered:
        old = before.get(read.node.node)
        if old is not None and old.metrics is not None and read.at > old.at:
            assert read.metrics is not None
            windows.append((since(read.metrics, old.metrics), read.at - old.at))
    window = add(w for w, _ in windows) if windows else None
    endpoints = []
    for name in sorted(total.endpoints):
        counts = total.endpoints[name]
        row: dict[str, Any] = {
            "endpoint": name,
            "total": {
                "calls": _count(counts.calls),
                "errors": _count(counts.errors),
                "error_percent": _percent(counts.errors, counts.calls),
                "errors_by_code": {code: _count(n) for code, n in sorted(counts.codes.items())},
                **_latency(counts),
            },
            "window": None,
        }
        if window is not None:
            moved = window.endpoints.get(name, EndpointCounts())
            rate = sum(w.endpoints[name].calls / seconds for w, seconds in windows if name in w.endpoints)
            row["window"] = {
                "calls": _count(moved.calls),
                "errors": _count(moved.errors),
                "calls_per_second": round(rate, 3),
                "error_percent": _percent(moved.errors, moved.calls),
                **_latency(moved),
            }
        endpoints.append(row)
    return {
        "service": service,
        "registry": where,
        "window_seconds": round(sum(s for _, s in windows) / len(windows), 3) if windows else None,
        "in_flight": _count(total.in_flight),
        "nodes": [_node_json(r) for r in now],
        "endpoints": endpoints,
    }


def _node_json(read: NodeRead) -> dict[str, Any]:
    node = read.node
    status = "ok" if read.metrics is not None else "unreachable" if node.admin_address else "no admin_address"
    return {
        "node": node.node,
        "version": node.version,
        "admin_address": node.admin_address,
        "status": status,
        "error": read.error or None,
        "in_flight": _count(read.metrics.in_flight) if read.metrics is not None else None,
        "calls": _count(read.metrics.calls()) if read.metrics is not None else None,
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1.0:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value == math.floor(value) else f"{value:,.2f}"


def render(snapshot: dict[str, Any]) -> RenderableType:
    """The tables a human sees: endpoints first, then the nodes."""
    nodes = snapshot["nodes"]
    answered = sum(1 for n in nodes if n["status"] == "ok")
    window = snapshot["window_seconds"]
    title = Text(f"{snapshot['service']}", style="bold")
    title.append(
        f"  {answered}/{len(nodes)} nodes answered, {_number(snapshot['in_flight'])} in flight", style=""
    )
    endpoints = Table(title=title, title_justify="left")
    endpoints.add_column("endpoint", style="bold cyan", overflow="fold")
    for column in ("calls/s", "error %", "p50", "p99", "calls", "errors"):
        endpoints.add_column(column, justify="right")
    rows = snapshot["endpoints"]
    if len(rows) > MAX_ROWS:
        busiest = sorted(rows, key=lambda row: row["total"]["calls"], reverse=True)[:MAX_ROWS]
        rows = sorted(busiest, key=lambda row: str(row["endpoint"]))
    for row in rows:
        total, moved = row["total"], row["window"]
        idle = moved is None or not moved["calls"]
        shown = total if idle else moved
        style = "dim" if idle and moved is not None else ""
        error_percent = shown["error_percent"]
        endpoints.add_row(
            Text(printable(row["endpoint"])),  # a peer's label value: no markup, no terminal escape
            "-" if moved is None else f"{moved['calls_per_second']:.2f}",
            Text("-" if error_percent is None else f"{error_percent:.1f}", style=style),
            Text(_seconds(shown["p50_seconds"]), style=style),
            Text(_seconds(shown["p99_seconds"]), style=style),
            _number(total["calls"]),
            _number(total["errors"]),
        )
    if window is None:
        endpoints.caption = "error %, p50 and p99 since the nodes started; calls/s from the next refresh on"
    else:
        endpoints.caption = (
            f"calls/s, error %, p50 and p99 over the last {window:.1f} s (dim: no call then, so since "
            "the start); calls and errors since the nodes started"
        )
    if not snapshot["endpoints"]:
        endpoints.caption = "no calls counted yet (or the nodes' metrics are off)"
    elif len(rows) < len(snapshot["endpoints"]):
        more = len(snapshot["endpoints"]) - len(rows)
        endpoints.caption = (
            f"the {len(rows)} busiest endpoints; {more:,} more endpoints not shown (--json has them); "
            f"{endpoints.caption}"
        )
    table = Table(title="nodes", title_justify="left")
    for column in ("node", "version", "admin address", "in flight", "status"):
        table.add_column(column, overflow="fold")
    for node in nodes:
        status = (
            Text("ok", style="green")
            if node["status"] == "ok"
            else Text(printable(node["error"] or "", 300), style="red")
        )
        table.add_row(
            Text(printable(node["node"])),  # the registry's strings: whoever registered chose them
            Text(printable(node["version"])),
            Text(node["admin_address"] or "-"),
            "-" if node["in_flight"] is None else _number(node["in_flight"]),
            status,
        )
    caption = f"{snapshot['registry']} at {time.strftime('%H:%M:%S')}"
    return Group(endpoints, table, Text(caption, style="dim"))


async def _nodes(registry: Registry, service: str, versions: Sequence[str]) -> list[AdminNode]:
    records = await list_records(registry, [service])
    if versions:
        records = [r for r in records if r.version in versions]
    return split_admin_nodes(records)


class Shower:
    """Puts each snapshot on stdout: JSON (indented once, a line each when live), a live
    table on a terminal, or a table after another when stdout is a file or a pipe."""

    def __init__(self, *, json_: bool, once: bool) -> None:
        self.json = json_
        self.once = once
        self.live: Live | None = None

    def show(self, snapshot: dict[str, Any]) -> None:
        if self.json:
            print(json.dumps(snapshot, indent=2 if self.once else None), flush=True)
        elif self.once or not out.is_terminal:
            out.print(render(snapshot))
        else:
            if self.live is None:
                self.live = Live(console=out, auto_refresh=False)
                self.live.start()
            self.live.update(render(snapshot), refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


async def _stats(
    url: str | None,
    service: str,
    versions: Sequence[str],
    *,
    interval: float,
    timeout: float,
    once: bool,
    shower: Shower,
) -> None:
    async with open_registry(url) as registry:
        where = repr(registry)
        await find_service(registry, service, versions)  # not found: a CliError naming what to check
        connector = aiohttp.TCPConnector(limit=SCRAPES_AT_ONCE)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            nodes = await _nodes(registry, service, versions)
            before: dict[str, NodeRead] = {}
            if once:  # two reads --interval apart: totals, and rates over the interval
                before = {r.node.node: r for r in await read_nodes(session, nodes, service, timeout)}
                await asyncio.sleep(interval)
            while True:
                started = time.monotonic()
                reads = await read_nodes(session, nodes, service, timeout)
                shower.show(summarize(service, where, reads, before))
                if once:
                    return
                before = {r.node.node: r for r in reads if r.metrics is not None}
                await asyncio.sleep(max(0.0, started + interval - time.monotonic()))
                try:
                    nodes = await _nodes(registry, service, versions)
                except MicroError as exc:  # keep reading the nodes we know
                    err.print(f"registry lookup failed: {exc.detail}; showing the nodes known before")


def _check_seconds(value: float) -> float:
    if not 0 < value < math.inf:
        raise typer.BadParameter(f"{value} is not a number of seconds > 0")
    return value


def stats(
    ctx: typer.Context,
    service: Annotated[
        str, typer.Argument(metavar="SERVICE", help="The service name, as `microweave services` lists it.")
    ],
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            "-i",
            metavar="SECONDS",
            help="Seconds between two reads of the nodes' /metrics (rates cover this time).",
            callback=_check_seconds,
        ),
    ] = 2.0,
    once: Annotated[
        bool,
        typer.Option("--once", help="Read twice, --interval apart, print one snapshot and exit."),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            "-t",
            metavar="SECONDS",
            help="Give up on a node that has not sent its /metrics within this time.",
            callback=_check_seconds,
        ),
    ] = 2.0,
    version: VersionOption = None,
    registry: RegistryOption = None,
    json_: JsonFlag = False,
) -> None:
    """Show calls/s, error % and p50/p99 latency per endpoint of SERVICE, read from its nodes'
    /metrics (admin endpoint), refreshed every --interval until Ctrl-C."""
    url = registry_url(ctx, registry)
    shower = Shower(json_=json_, once=once)
    with reporting_errors(service=service):
        try:

            async def main() -> None:
                work = _stats(
                    url, service, version or [], interval=interval, timeout=timeout, once=once, shower=shower
                )
                await until_signal(lambda: work)

            run_async(main())
        finally:
            shower.close()
