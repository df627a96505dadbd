"""Options shared by several commands, and the one rule for which registry (and broker) a
command uses.

The registry comes from the command's `--registry`, else the global `microweave --registry`,
else MICRO_REGISTRY / MICRO_REGISTRY_ADDRESS (read by `load_registry`, the one place the
environment is read), else `local://`. The broker of `publish` and `subscribe` likewise comes
from `--broker`, else MICRO_BROKER / MICRO_BROKER_ADDRESS (read by `load_broker`), else
`direct://`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Annotated

import typer

from .._backends import DEFAULT_BROKER, load_broker, load_registry, settings
from ..broker import Broker
from ..client.call import MAX_TIMEOUT
from ..config.secret import mask_credentials
from ..errors import BrokerError, ConfigurationError
from ..registry import Registry
from .hints import registry_help, registry_hint
from .output import CliError, print_error, reporting_errors

__all__ = [
    "BrokerOption",
    "JsonFlag",
    "RegistryOption",
    "TimeoutOption",
    "VersionOption",
    "broker_hint",
    "broker_url",
    "check_timeout",
    "open_broker",
    "open_registry",
    "registry_url",
    "reporting_broker_errors",
]

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        "-r",
        metavar="URL",
        help=registry_help("Registry URL:"),
        show_default=False,
    ),
]

BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        metavar="URL",
        help="Broker URL, e.g. nats://127.0.0.1:4222, nats+jetstream://..., rabbitmq://..., redis://..., "
        "direct:// (no server: subscribers found in the registry). "
        "Default: MICRO_BROKER (+ MICRO_BROKER_ADDRESS), else direct://.",
        show_default=False,
    ),
]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]

VersionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--version",
        metavar="VERSION",
        help="Only nodes of this version of the service (repeat for several). "
        "Default: every version, sharing the calls.",
        show_default=False,
    ),
]


def check_timeout(value: str | float | None) -> float | None:
    """Seconds for the client: > 0; `inf` or more than the client's MAX_TIMEOUT (30 days)
    means no deadline (None).

    Parsed and checked here, at the boundary, so `--timeout nan` is a usage error that says what
    to give instead, not a traceback from deep inside a transport.
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a number of seconds (e.g. 2.5; for no deadline: inf)"
        ) from None
    if math.isnan(seconds) or seconds <= 0:
        raise typer.BadParameter(f"{value} is not a number of seconds > 0 (for no deadline: --timeout inf)")
    return None if seconds > MAX_TIMEOUT else seconds


TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        "-t",
        metavar="SECONDS",
        help="Seconds before the call gives up (> 0; inf or over 30 days: no deadline).",
        parser=check_timeout,
    ),
]


def registry_url(ctx: typer.Context, local: str | None) -> str | None:
    """The URL the user asked for (None: let the environment or the default decide)."""
    url = local
    if url is None and isinstance(ctx.obj, dict):
        url = ctx.obj.get("registry")
    if url and "://" not in url:
        url = f"{url}://"  # go-micro style: --registry etcd
    return url or None


def open_registry(url: str | None) -> Registry:
    """The registry a command uses; a URL it cannot build from is a usage error whose hint
    fits the URL (its scheme's docs page, or the schemes there are)."""
    try:
        return load_registry(url)
    except ConfigurationError as exc:
        raise CliError(exc.detail, hint=registry_hint(url or _from_environment()), code=2) from None


def _from_environment() -> str | None:
    """The URL `load_registry` builds when the command names none (for the hint only)."""
    env = settings()
    if env.registry is None:
        return None
    return env.registry if "://" in env.registry else f"{env.registry}://"


def broker_url(local: str | None) -> str | None:
    """The broker URL the user asked for (None: the environment or `direct://` decides)."""
    if local and "://" not in local:
        return f"{local}://"  # go-micro style: --broker nats
    return local or None


def open_broker(url: str | None) -> Broker:
    """The broker a command uses; a URL it cannot build from (unknown scheme, bad option,
    driver not installed) is a usage error."""
    try:
        return load_broker(url)
    except ConfigurationError as exc:
        hint = "e.g. --broker nats://127.0.0.1:4222, --broker redis://127.0.0.1:6379 or --broker direct://"
        raise CliError(exc.detail, hint=hint, code=2) from None


def broker_hint(url: str | None) -> str:
    """What to do when the broker failed: a server-backed one is probably not running;
    `direct://` has no server, it reaches subscribers found in the registry."""
    shown = mask_credentials(url or _broker_from_environment()).partition("?")[0]  # where, not how
    if shown.startswith("direct:"):
        return (
            "direct:// delivers to subscribers registered in the registry: are they running, "
            "on the same registry (--registry, MICRO_REGISTRY)? or name a broker server with --broker"
        )
    if shown.startswith("memory:"):
        return "memory:// lives inside one process; name a broker server with --broker (or MICRO_BROKER)"
    return f"start the broker at {shown}, or pick another with --broker URL (or MICRO_BROKER)"


def _broker_from_environment() -> str:
    """The URL `load_broker` builds when the command names none (for the hint only)."""
    env = settings()
    url = env.broker or DEFAULT_BROKER
    if "://" not in url:
        url = f"{url}://"
    if env.broker_address and url.endswith("://"):
        url += env.broker_address
    return url


@contextlib.contextmanager
def reporting_broker_errors(url: str | None) -> Iterator[None]:
    """`reporting_errors`, with a hint for a broker that failed (down, refused, not confirmed)."""
    with reporting_errors():
        try:
            yield
        except BrokerError as exc:
            print_error(exc, hint=broker_hint(url))
            raise typer.Exit(1) from None
