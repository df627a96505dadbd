"""The typer app: global options, and one command per module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from .. import __version__
from .call import call
from .config import config_app
from .demo import demo
from .describe import describe
from .hints import registry_help
from .new import new
from .prometheus_sd import prometheus_sd
from .publish import publish
from .run import run
from .services import services
from .stats import stats
from .subscribe import subscribe

__all__ = ["app"]

app = typer.Typer(
    name="microweave",
    help="microweave: go-micro for Python. Run services, find them, call them, publish and subscribe.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,  # locals can hold secrets; a bug report needs the trace only
)


def _version(value: bool) -> None:
    if value:
        print(f"microweave {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry",
            "-r",
            metavar="URL",
            help=registry_help("Registry for every command:"),
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    ctx.obj = {"registry": registry}


def _short_help(command: Callable[..., Any]) -> str:
    """The docstring's first paragraph on one line: the command list prints it as written, so a
    docstring wrapped at 100 columns would break mid-sentence there."""
    return " ".join((command.__doc__ or "").split("\n\n")[0].split())


for _name, _command in (
    ("run", run),
    ("services", services),
    ("describe", describe),
    ("call", call),
    ("publish", publish),
    ("subscribe", subscribe),
    ("demo", demo),
    ("stats", stats),
    ("prometheus-sd", prometheus_sd),
    ("new", new),
):
    app.command(_name, short_help=_short_help(_command))(_command)
app.add_typer(config_app, name="config")
