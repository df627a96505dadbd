"""`microweave run TARGET`: serve a Service from a file or module until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from .. import logs
from ..admin.http import AdminListenError
from ..errors import ConfigurationError
from ..transport import advertise_host
from .options import RegistryOption, open_registry, registry_url
from .output import CliError, reporting_errors
from .target import load_service

__all__ = ["run"]


def _check_address(address: str) -> str:
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise typer.BadParameter(f"{address!r} is not host:port (port 0 picks a free one)")
    return address


def _log_to_stderr() -> None:
    """Service logs to stderr (MICRO_LOG_LEVEL, MICRO_LOG_FORMAT=text|json): colored in a
    terminal. Logging the service's module set up at import is left alone, as `Service.run`
    leaves it."""
    if not logging.getLogger().handlers:
        logs.configure(stream=sys.stderr)


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
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            metavar="HOST",
            help="The host callers dial, advertised for every listener instead of the bound one "
            "(a pod IP, a published host; default MICRO_ADVERTISE_ADDRESS).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            metavar="URL",
            help="A config source of the service (repeat: later wins), e.g. --config file://app.yaml "
            "--config etcd://127.0.0.1:2379/config/app; sets MICRO_CONFIG, so a service that names "
            "its sources in code (Service(config=...)) is an error. See docs/config.md.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a service; SIGTERM or Ctrl-C deregisters it, drains in-flight calls and exits 0."""
    with reporting_errors():
        if config and any(c.isspace() or c == ";" for url in config for c in url):
            raise CliError("--config: a URL cannot hold spaces or ';'", hint="write a space as %20", code=2)
        if config:
            # the service reads MICRO_CONFIG when its code names no sources: set it before
            # the target is imported (its module may bind models to the config at import)
            os.environ["MICRO_CONFIG"] = " ".join(config)
        service = load_service(target)
        if config and service._config_arg is not None:
            raise CliError(
                f"--config: {service.name} names its config sources in code (Service(config=...))",
                hint="drop --config, or the config= argument (then MICRO_CONFIG and --config apply)",
                code=2,
            )
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
        if advertise is not None:
            try:
                service.advertise_address = advertise_host(advertise, "--advertise")
            except ConfigurationError as exc:
                raise CliError(str(exc.detail), code=2) from None
        _log_to_stderr()
        try:
            service.run()
        except AdminListenError as exc:  # its message says what to set
            raise CliError(f"{service.name} could not start: {exc.strerror}") from None
        except OSError as exc:  # the address is taken, or not ours to bind
            raise CliError(f"{service.name} could not start: {exc}", hint="try another --address") from None
