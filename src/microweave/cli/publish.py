"""`microweave publish TOPIC JSON`: publish one event from the shell, print its Micro-Id.

The body is JSON (given inline, `-` for stdin or `@path` for a file), checked before anything
connects, and published as written (surrounding whitespace trimmed) with
`Content-Type: application/json`: a subscriber reads the user's bytes, not a re-encoding that
could round a big number.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ..client import Client
from ..service import run_async
from .options import (
    BrokerOption,
    JsonFlag,
    RegistryOption,
    broker_url,
    open_broker,
    open_registry,
    registry_url,
    reporting_broker_errors,
)

__all__ = ["MAX_BODY", "parse_body", "parse_headers", "publish"]

#: the largest body the CLI publishes (a client's default message limit): bigger is a mistake
MAX_BODY = 4 * 1024 * 1024
_BODY = "'BODY'"


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not a JSON value")


def _bad_body(message: str) -> NoReturn:
    raise typer.BadParameter(message, param_hint=_BODY)


def _read(source: str) -> bytes:
    """The body's bytes from stdin (`-`) or a file (`@path`), at most MAX_BODY + 1 of them."""
    try:
        if source == "-":
            return sys.stdin.buffer.read(MAX_BODY + 1)
        with Path(source[1:]).expanduser().open("rb") as file:
            return file.read(MAX_BODY + 1)
    except OSError as exc:
        _bad_body(f"cannot read {source[1:]}: {exc.strerror or exc}")


def parse_body(text: str) -> bytes:
    """The body to publish: valid JSON (NaN and Infinity are not), at most MAX_BODY bytes."""
    where = ""
    if text == "-" or text.startswith("@"):
        where = " from stdin" if text == "-" else f" in {text[1:]}"
        raw = _read(text)
    else:
        raw = text.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_BODY:
        _bad_body(f"the body{where} is over {MAX_BODY // (1024 * 1024)} MiB; publish a smaller event")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _bad_body(f"the body{where} is not UTF-8 text, so not JSON")
    try:
        json.loads(text, parse_constant=_not_json)
    except ValueError as exc:
        quote = "" if where else '; quote it for the shell, e.g. \'{"name": "x"}\''
        _bad_body(f"the body{where} is not valid JSON ({exc}){quote}")
    return raw.strip()


def parse_headers(pairs: list[str]) -> dict[str, str]:
    """`-H Key=value` pairs, the key's case kept (a broker carries it as given); a later key
    replaces an earlier one that differs only in case, as headers are matched without case."""
    headers: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="'--header'")
        if not all(c.isprintable() and not c.isspace() and c != ":" for c in key):
            raise typer.BadParameter(
                f"header name {key!r} must be printable, without spaces or ':'", param_hint="'--header'"
            )
        if not value.isprintable():
            raise typer.BadParameter(
                f"the value of header {key} holds a control character (a newline?)", param_hint="'--header'"
            )
        for existing in [k for k in headers if k.lower() == key.lower()]:
            del headers[existing]
        headers[key] = value
    return headers


async def _publish(
    broker: str | None, registry: str | None, topic: str, body: bytes, headers: dict[str, str]
) -> str:
    events = open_broker(broker)
    async with contextlib.AsyncExitStack() as stack:
        # direct:// finds subscribers in the registry and calls them through this client
        client = await stack.enter_async_context(Client(registry=open_registry(registry), broker=events))
        stack.push_async_callback(events.aclose)  # closed before the client it uses
        message_id: str = await client.publish(topic, body, headers=headers)
        return message_id


def publish(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="The topic, e.g. user.created.")],
    body: Annotated[
        str,
        typer.Argument(
            metavar="BODY",
            help="The event as JSON; `-` reads it from stdin, `@path` from a file.",
        ),
    ],
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", metavar="KEY=VALUE", help="An event header; repeat for more."),
    ] = None,
    broker: BrokerOption = None,
    registry: RegistryOption = None,
    json_: JsonFlag = False,
) -> None:
    """Publish one event and print its Micro-Id.

    On direct:// (the default) it goes to the subscribers registered in the registry; a broker
    that cannot take it is an error naming its URL (exit 1).
    """
    data = parse_body(body)  # bad input fails here, before anything connects
    headers = parse_headers(header or [])
    url = broker_url(broker)
    with reporting_broker_errors(url):
        message_id = run_async(_publish(url, registry_url(ctx, registry), topic, data, headers))
    if json_:
        shown: dict[str, Any] = {"id": message_id, "topic": topic}
        sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(message_id + "\n")
    sys.stdout.flush()
