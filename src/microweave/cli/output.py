"""Where the CLI writes: data to stdout (so it pipes), everything said to a human to stderr.

User mistakes and remote errors end the command with a one-line message, a hint about what to
do next and a non-zero exit code: a traceback would only bury the part the user can act on.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ConfigurationError, MicroError, NotImplementedError_, ServiceNotFound, Unavailable
from .hints import configuration_hint

__all__ = ["CliError", "err", "fail", "out", "print_error", "reporting_errors"]

#: tables and panels for humans; JSON and call replies bypass it (see `call`) to stay byte-exact
out = Console(soft_wrap=False)
#: errors, hints and progress, so stdout stays clean for pipes
err = Console(stderr=True, soft_wrap=True, highlight=False)


class CliError(Exception):
    """A problem the user can fix: shown as `error: message` plus a hint, then exit `code`."""

    def __init__(self, message: str, *, hint: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


def print_hint(hint: str) -> None:
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}")


def print_error(exc: MicroError, *, hint: str = "") -> None:
    """`error 400 Bad Request: detail (id: greeter)`: code, status and the id to grep logs for."""
    where = f" (id: {exc.id})" if exc.id else ""
    err.print(f"[bold red]error {exc.code} {escape(exc.status)}:[/] {escape(exc.detail)}{escape(where)}")
    print_hint(hint)


def fail(message: str, *, hint: str = "", code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    print_hint(hint)
    raise typer.Exit(code)


def _hint_for(exc: MicroError, service: str) -> str:
    describe = f"`microweave describe {service or 'SERVICE'}`"
    if isinstance(exc, ServiceNotFound):
        return "is it running? on the same registry (--registry, MICRO_REGISTRY)? try `microweave services`"
    if isinstance(exc, NotImplementedError_):
        return f"list its endpoints with {describe}"
    if isinstance(exc, Unavailable):
        return f"the node may have just stopped; try again, or check {describe}"
    return ""


@contextlib.contextmanager
def reporting_errors(*, service: str = "") -> Iterator[None]:
    """Turn the errors a user can act on into a message and an exit code; `service` names hints."""
    try:
        yield
    except CliError as exc:
        fail(exc.message, hint=exc.hint, code=exc.code)
    except ConfigurationError as exc:  # a local mistake, not a remote 500
        fail(exc.detail, hint=configuration_hint(exc.detail), code=2)
    except MicroError as exc:
        print_error(exc, hint=_hint_for(exc, service))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # the reader left (`| head -1`); point stdout at devnull so the exit flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
