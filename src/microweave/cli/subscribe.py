"""`microweave subscribe TOPIC`: print events as they arrive, for a human or a script.

A human gets each event's arrival time, id and attempt (headers with `--headers`) and its body
as indented JSON, or as bytes when it is not JSON, cut to a screenful; `--json` prints one
JSON object per event, whole, for scripts. The body comes from whoever published it, so
control characters are shown escaped: a terminal escape in an event cannot rewrite the screen.

One event is handled at a time, so lines come in arrival order and `--count N` stops after
exactly N: an event that arrives after the N-th is nacked for redelivery (an at-least-once
broker gives it to another member of the queue group), never acknowledged unseen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.highlighter import JSONHighlighter
from rich.markup import escape
from rich.text import Text

from ..broker import Event
from ..client import Client
from ..service import run_async
from .options import (
    BrokerOption,
    RegistryOption,
    broker_url,
    open_broker,
    open_registry,
    registry_url,
    reporting_broker_errors,
)
from .output import err, out
from .signals import until_signal

__all__ = ["MAX_SHOWN_CHARS", "MAX_SHOWN_LINES", "event_json", "render_body", "subscribe"]

#: what a human sees of one body at most; --json prints it whole
MAX_SHOWN_CHARS = 2000
MAX_SHOWN_LINES = 40
#: bytes of a body that is not JSON shown as a Python bytes literal
MAX_SHOWN_BYTES = 500
#: seconds running handlers (the one printing) get when the command stops
_GRACE = 2.0


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def json_body(event: Event) -> tuple[bool, Any]:
    """(True, value) when the event is JSON by its Content-Type and its body parses as such."""
    if not _is_json_type(event.content_type):
        return False, None
    try:
        return True, json.loads(event.body.decode("utf-8"), parse_constant=_not_json)
    except (ValueError, RecursionError):  # UnicodeDecodeError is one too
        return False, None


def event_json(event: Event) -> dict[str, Any]:
    """One event for a script: `body` when it is JSON, else `body_base64`."""
    shown: dict[str, Any] = {
        "id": event.id,
        "topic": event.topic,
        "attempt": event.attempt,
        "headers": event.headers,
    }
    is_json, value = json_body(event)
    if is_json:
        shown["body"] = value
    else:
        shown["body_base64"] = base64.b64encode(event.body).decode("ascii")
    return shown


def _printable(text: str) -> str:
    """`text` with every control character escaped but the newline (a peer's text)."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _cut(text: str) -> tuple[str, str]:
    """`text` cut to MAX_SHOWN_LINES lines and MAX_SHOWN_CHARS characters, and a note when it was."""
    lines = text.split("\n")
    shown = "\n".join(lines[:MAX_SHOWN_LINES])[:MAX_SHOWN_CHARS]
    if len(shown) == len(text):
        return text, ""
    return shown, f"... cut at {len(shown):,} of {len(text):,} characters; --json prints the whole body"


def render_body(event: Event) -> list[Text]:
    """The body for a human: indented and highlighted JSON, else a bytes literal; cut to size."""
    is_json, value = json_body(event)
    if is_json:
        text, note = _cut(_printable(json.dumps(value, indent=2, ensure_ascii=False)))
        rendered = [JSONHighlighter()(Text(text))]
    else:
        body = event.body
        text = repr(body[:MAX_SHOWN_BYTES])  # escapes every byte that is not printable ASCII
        note = ""
        if len(body) > MAX_SHOWN_BYTES:
            more = len(body) - MAX_SHOWN_BYTES
            note = f"... {more:,} more bytes of {len(body):,}; --json prints them (base64)"
        rendered = [Text(text)]
    if note:
        rendered.append(Text(note, style="dim"))
    return rendered


class Printer:
    """Writes each event to stdout: JSON lines for scripts, or a few lines for a human."""

    def __init__(self, *, json_lines: bool, headers: bool) -> None:
        self.json_lines = json_lines
        self.headers = headers

    def show(self, event: Event) -> None:
        if self.json_lines:
            # print, not rich: one exact JSON document per line, whatever the terminal width
            sys.stdout.write(json.dumps(event_json(event), ensure_ascii=False) + "\n")
            sys.stdout.flush()
            return
        when = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        line = f"[dim]{when}[/]  [bold cyan]{escape(_printable(event.id) or '(no id)')}[/]"
        line += f"  attempt {event.attempt}"
        if not _is_json_type(event.content_type):
            line += f"  [dim]{escape(_printable(event.content_type))}[/]"
        out.print(line, highlight=False)
        if self.headers:
            for key, value in sorted(event.headers.items(), key=lambda kv: kv[0].lower()):
                out.print(Text(f"  {_printable(key)}: {_printable(value)}", style="dim"))
        for text in render_body(event):
            out.print(text)
        out.file.flush()


async def _subscribe(
    broker: str | None,
    registry: str | None,
    topic: str,
    *,
    queue: str | None,
    count: int | None,
    printer: Printer,
) -> tuple[int, bool]:
    """Print events until `count` were shown or a signal came: (events shown, interrupted)."""
    shown = 0
    done = asyncio.Event()
    broken: list[BrokenPipeError] = []

    async def handle(event: Event) -> None:
        nonlocal shown
        if done.is_set():  # past --count, or stdout is gone: someone else may take it
            await event.nack(requeue=True, delay=0.0)
            return
        try:
            printer.show(event)
        except BrokenPipeError as exc:  # the reader left (`| head -1`): stop, keep the event for others
            broken.append(exc)
            done.set()
            await event.nack(requeue=True, delay=0.0)
            return
        await event.ack()
        shown += 1
        if count is not None and shown >= count:
            done.set()

    events = open_broker(broker)

    async def listen() -> None:
        async with contextlib.AsyncExitStack() as stack:
            # direct:// registers a node for this subscriber and serves it through this client
            client = await stack.enter_async_context(Client(registry=open_registry(registry), broker=events))
            stack.push_async_callback(events.aclose, grace=_GRACE)  # closed before its client
            await client.broker.subscribe(topic, handle, queue=queue, ack="manual", max_in_flight=1)
            where = f" (queue {queue})" if queue else ""
            err.print(
                f"listening on {escape(topic)}{escape(where)} at {escape(repr(events))}; Ctrl-C to stop"
            )
            await done.wait()

    interrupted = await until_signal(listen)
    if broken:
        raise broken[0]
    return shown, interrupted


def subscribe(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="The topic, e.g. user.created.")],
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            "-q",
            metavar="QUEUE",
            help="Join this queue group: its members share the events, each goes to one of them. "
            "Default: get every event.",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            "-n",
            metavar="N",
            min=1,
            help="Exit after N events. Default: until Ctrl-C.",
            show_default=False,
        ),
    ] = None,
    headers: Annotated[bool, typer.Option("--headers", help="Show each event's headers too.")] = False,
    broker: BrokerOption = None,
    registry: RegistryOption = None,
    json_: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object per event and line: id, topic, attempt, headers, and body "
            "(JSON) or body_base64 (anything else).",
        ),
    ] = False,
) -> None:
    """Print events on TOPIC as they arrive, until --count of them or Ctrl-C."""
    url = broker_url(broker)
    printer = Printer(json_lines=json_, headers=headers)
    with reporting_broker_errors(url):
        shown, interrupted = run_async(
            _subscribe(url, registry_url(ctx, registry), topic, queue=queue, count=count, printer=printer)
        )
    if interrupted:
        err.print(f"stopped after {shown} event{'' if shown == 1 else 's'}")
