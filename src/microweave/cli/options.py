"""Options shared by several commands, and the one rule for which registry a command uses.

The registry comes from the command's `--registry`, else the global `microweave --registry`,
else MICRO_REGISTRY / MICRO_REGISTRY_ADDRESS (read by `load_registry`, the one place the
environment is read), else `local://`.
"""

from __future__ import annotations

import math
from typing import Annotated

import typer

from .._backends import load_registry, settings
from ..client.call import MAX_TIMEOUT
from ..errors import ConfigurationError
from ..registry import Registry
from .hints import registry_help, registry_hint
from .output import CliError

__all__ = [
    "JsonFlag",
    "RegistryOption",
    "TimeoutOption",
    "VersionOption",
    "check_timeout",
    "open_registry",
    "registry_url",
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
