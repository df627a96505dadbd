"""`microweave run TARGET`: serve a Service from a file or module until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.logging import RichHandler

from .options import RegistryOption, open_registry, registry_url
from .output import CliError, err, reporting_errors
from .target import load_service

__all__ = ["run"]


def _check_address(address: str) -> str:
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise typer.BadParameter(f"{address!r} is not host:port (port 0 picks a free one)")
    return address


def _log_to_stderr() -> None:
    """Service logs to stderr, readable in a terminal; `Service.run` keeps handlers it finds."""
    handler = RichHandler(console=err, show_path=False, rich_tracebacks=True, markup=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", datefmt="[%X]", handlers=[handler])


def run(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="path/to/file.py or package.module, optionally with :attr naming the Service.",
            show_default=False,
        ),
    ],
    registry: RegistryOption = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            "-a",
            metavar="HOST:PORT",
            help="Listen here instead of the service's own address (port 0: any free port).",
            callback=lambda v: None if v is None else _check_address(v),
        ),
    ] = None,
    tcp_address: Annotated[
        str | None,
        typer.Option(
            "--tcp-address",
            metavar="HOST:PORT",
            help="Where microweave's own tcp transport listens (default: --address's host, a free port).",
            callback=lambda v: None if v is None else _check_address(v),
        ),
    ] = None,
) -> None:
    """Run a service; SIGTERM or Ctrl-C deregisters it, drains in-flight calls and exits 0."""
    with reporting_errors():
        service = load_service(target)
        url = registry_url(ctx, registry)
        if url is not None:
            service.registry = open_registry(url)  # fails here, before anything listens
        if address is not None:
            service.address = address
            if tcp_address is None and service.tcp_address and service.tcp_address.endswith(":0"):
                # the tcp listener follows the gRPC host unless it was given a port of its own
                service.tcp_address = f"{address.rpartition(':')[0]}:0"
        if tcp_address is not None:
            service.tcp_address = tcp_address
        _log_to_stderr()
        try:
            service.run()
        except OSError as exc:  # the address is taken, or not ours to bind
            raise CliError(f"{service.name} could not start: {exc}", hint="try another --address") from None
