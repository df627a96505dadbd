"""Options shared by several commands, and the one rule for which registry a command uses.

The registry comes from the command's `--registry`, else the global `microweave --registry`,
else MICRO_REGISTRY / MICRO_REGISTRY_ADDRESS (read by `load_registry`, the one place the
environment is read), else `local://`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .._backends import load_registry
from ..errors import ConfigurationError
from ..registry import Registry
from .output import CliError

__all__ = ["JsonFlag", "RegistryOption", "open_registry", "registry_url"]

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        "-r",
        metavar="URL",
        help="Registry URL: local:// (default, files on this host), local:///some/dir, memory://. "
        "Default: $MICRO_REGISTRY (+ $MICRO_REGISTRY_ADDRESS), else local://.",
        show_default=False,
    ),
]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]


def registry_url(ctx: typer.Context, local: str | None) -> str | None:
    """The URL the user asked for (None: let the environment or the default decide)."""
    url = local
    if url is None and isinstance(ctx.obj, dict):
        url = ctx.obj.get("registry")
    if url and "://" not in url:
        url = f"{url}://"  # go-micro style: --registry etcd
    return url or None


def open_registry(url: str | None) -> Registry:
    try:
        return load_registry(url)
    except ConfigurationError as exc:
        raise CliError(exc.detail, hint="e.g. --registry local:// or --registry memory://", code=2) from None
