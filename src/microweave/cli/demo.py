"""`microweave demo`: start two services in this process, call them every way, stop cleanly.

It runs on the same registry as every other command (local:// unless told otherwise), so while
it runs `microweave services` in another terminal sees it; its calls go over loopback sockets
(tcp, else gRPC), not the in-process shortcut, so what it shows is what two processes would do.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import msgspec
import typer
from rich.markup import escape
from rich.panel import Panel

from ..client import Client
from ..errors import MicroError
from ..registry import Registry
from ..service import Service, run_async
from .describe import endpoints_table, nodes_table
from .options import RegistryOption, open_registry, registry_url
from .output import out, reporting_errors

__all__ = ["demo"]


def _activate_hint() -> str:
    """`source .venv/bin/activate` when this runs from a virtualenv whose `microweave` is not
    on PATH (as after ./scripts/demo): the commands suggested next would not be found."""
    if sys.prefix == sys.base_prefix:
        return ""
    bindir = Path(sys.prefix) / "bin"
    found = shutil.which("microweave")
    if found is not None and Path(found).parent.resolve() == bindir.resolve():
        return ""
    where = os.path.relpath(bindir) if bindir.is_relative_to(Path.cwd()) else str(bindir)
    return f"First put microweave on PATH: source {where}/activate\n"


def _step(number: int, title: str) -> None:
    out.print()
    out.rule(f"[bold]{number} · {escape(title)}", align="left")


def _show(label: str, value: Any) -> None:
    text = json.dumps(msgspec.to_builtins(value), ensure_ascii=False)
    out.print(f"  {label} {escape(text)}")


async def _tour(registry: Registry, services: tuple[Service, ...]) -> None:
    # imported here, not with the CLI: the module builds its Services as it is imported, and
    # a bad MICRO_* value (MICRO_ADMIN_ADDRESS=...) must fail `microweave demo`, not every command
    from .demo_services import HelloReply, HelloRequest

    # no in-process shortcut: the demo should cross a real socket, as calls between processes do
    transports = ("tcp", "grpc")
    async with Client(registry=registry, transports=transports, name="microweave-demo") as client:
        _step(1, "service lookup: what the registry knows about greeter")
        records = await registry.get_service("greeter")
        out.print(nodes_table(records))
        out.print(endpoints_table(records))

        _step(2, "unary call: Greeter.SayHello")
        request = HelloRequest(name="microweave")
        _show("→", request)
        reply = await client.call("greeter", "Greeter.SayHello", request, response=HelloReply, timeout=10)
        _show("←", reply)

        _step(3, "server stream: Greeter.SayHelloStream, one reply per letter")
        _show("→", HelloRequest(name="weave"))
        with out.status("streaming ..."):
            replies = [r async for r in client.stream("greeter", "Greeter.SayHelloStream", {"name": "weave"})]
        for item in replies:
            _show("←", item)

        _step(4, "service to service: frontend calls greeter through the registry")
        _show("→", {"name": "Ada"})
        _show("←", await client.call("frontend", "Frontend.Welcome", {"name": "Ada"}, timeout=10))

        _step(5, "a bad request: the error a caller gets (no traceback, no paths)")
        _show("→", {"name": 42})
        try:
            await client.call("greeter", "Greeter.SayHello", {"name": 42}, timeout=10)
        except MicroError as exc:
            out.print(
                Panel(
                    f"[bold red]{type(exc).__name__}[/]  code {exc.code} {escape(exc.status)}\n"
                    f"detail: {escape(exc.detail)}\nid: {escape(exc.id)}",
                    title="caught microweave.MicroError",
                    title_align="left",
                    expand=False,
                )
            )


async def _demo(url: str | None) -> None:
    registry = open_registry(url)
    out.print(
        Panel(
            "Two services start in this process — [bold]greeter[/] (the one in examples/greeter) "
            f"and [bold]frontend[/] — on the registry {escape(repr(registry))}.\n"
            "Then a lookup, a unary call, a stream, a service-to-service call and an error.",
            title="microweave demo",
            title_align="left",
        )
    )
    from .demo_services import build  # not at import: see _tour

    services = build(registry)
    with out.status("starting greeter and frontend (listen, register) ..."):
        for service in services:
            await service.start()
    for service in services:
        listening = ", ".join(f"{wire} {address}" for wire, address in service.addresses.items())
        out.print(f"[green]✓[/] {service.name} listening on {escape(listening)}")
    try:
        await _tour(registry, services)
    finally:
        out.print()
        with out.status("stopping: deregister, drain in-flight calls, close ..."):
            await asyncio.gather(*(s.stop() for s in services))
        out.print("[green]✓[/] stopped and deregistered")
    out.print()
    out.print(
        Panel(
            f"{escape(_activate_hint())}"
            "Across processes — in one terminal:\n"
            "  microweave run microweave.cli.demo_services:greeter\n"
            "  (or your copy of examples/greeter/service.py)\n"
            "and in another:\n"
            "  microweave services\n"
            "  microweave describe greeter\n"
            '  microweave call greeter Greeter.SayHello \'{"name": "you"}\'',
            title="next",
            title_align="left",
        )
    )


def demo(ctx: typer.Context, registry: RegistryOption = None) -> None:
    """Start a greeter and a frontend, call them (unary, stream, service to service, an error), stop."""
    url = registry_url(ctx, registry)
    with reporting_errors():
        run_async(_demo(url))
