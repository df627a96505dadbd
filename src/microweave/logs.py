"""Logs: text for people, one JSON object per line for machines, every record tagged with the call.

    from microweave import logs
    logs.configure()  # MICRO_LOG_LEVEL, MICRO_LOG_FORMAT=text|json; Service.run() does it for you

`configure` puts one handler on the root logger, so the records of every logger (ours, the user's,
third-party libraries') go through it. Its `CallFilter` adds what the call being served knows:
service, node, endpoint, the trace and span ids (of the active OpenTelemetry span, else of the
caller's W3C `traceparent`, so a node without an SDK still logs the caller's trace id) and a
correlation id where the error boundary set one. A filter on a handler runs only for records that
are emitted: a disabled `log.debug(...)` costs what it always did.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, TextIO

from ._backends import settings
from .context import current_context
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .server.pipeline import Pipeline

__all__ = [
    "CallFilter",
    "JsonFormatter",
    "TextFormatter",
    "access_log_enabled",
    "bind_node",
    "configure",
    "printable",
    "trace_ids",
    "unbind_node",
]

#: what MICRO_LOG_LEVEL may say (go-micro's names too: trace, warn, fatal)
LEVELS: Final = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}
FORMATS: Final = ("text", "json")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})

#: the call's identifiers, in the order a JSON line shows them
FIELDS: Final = ("service", "node", "endpoint", "trace_id", "span_id", "correlation_id")
_JSON_CORE: Final = ("time", "level", "logger", "message", *FIELDS, "exc_info", "stack_info")
#: attributes every LogRecord has: anything else on a record came from `extra=`
_RECORD_ATTRS: Final = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message", "asctime", "taskName"}
)
_SKIP: Final = _RECORD_ATTRS | frozenset(_JSON_CORE)
_RENAMED: Final = frozenset({"time", "level", "logger"})


# -- settings --------------------------------------------------------------------------------------


def _level(value: str | int, source: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    level = LEVELS.get(str(value).strip().lower())
    if level is None:
        raise ConfigurationError(
            f"{source}={value!r} is not a log level; use one of debug, info, warning, error, critical"
        )
    return level


def _format(value: str, source: str) -> str:
    name = value.strip().lower()
    if name not in FORMATS:
        raise ConfigurationError(f"{source}={value!r} is not a log format; use text or json")
    return name


def access_log_enabled(value: str | None = None) -> bool:
    """Whether MICRO_ACCESS_LOG (or `value`) turns the access log on: 1/true/yes/on."""
    raw = settings().access_log if value is None else value
    word = (raw or "").strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigurationError(
        f"MICRO_ACCESS_LOG={raw!r} is not a switch; use 1, true, yes or on (0, false, no or off: off)"
    )


def configure(
    level: str | int | None = None, format: str | None = None, *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records to `stream` (stderr) at `level` (MICRO_LOG_LEVEL, else info),
    as `format` (MICRO_LOG_FORMAT, else text): colored when the stream is a terminal, plain
    otherwise; `json` writes one object per line. A second call replaces the handler the first
    one installed; handlers the user added stay. Returns the handler."""
    env = settings()
    levelno = _level(
        level if level is not None else env.log_level or "info",
        "level" if level is not None else "MICRO_LOG_LEVEL",
    )
    kind = _format(
        format if format is not None else env.log_format or "text",
        "format" if format is not None else "MICRO_LOG_FORMAT",
    )
    out = sys.stderr if stream is None else stream
    handler: logging.Handler
    if kind == "json":
        encoding = (getattr(out, "encoding", None) or "utf-8").lower().replace("_", "-")
        handler = _JsonHandler(out, JsonFormatter(ascii_only=encoding not in ("utf-8", "utf8")))
    elif _is_terminal(out):
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(file=out), show_path=False, rich_tracebacks=True, markup=False)
        handler.setFormatter(TextFormatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(CallFilter())
    root = logging.getLogger()
    for old in _installed:  # what an earlier call installed
        root.removeHandler(old)
    _installed[:] = [handler]
    root.addHandler(handler)
    root.setLevel(levelno)
    return handler


#: the handler `configure` installed last
_installed: list[logging.Handler] = []


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# -- what the current call knows -------------------------------------------------------------------

#: the nodes served by this process (node id -> its pipeline), for the log filter
_nodes: dict[str, weakref.ref[Pipeline]] = {}


def bind_node(pipeline: Pipeline, node_id: str) -> None:
    """Say which node serves `pipeline`, so its calls' records carry the node id. Costs nothing
    per call: the filter looks it up only when a record is written."""
    for key, ref in list(_nodes.items()):
        if ref() is None:
            del _nodes[key]
    _nodes[node_id] = weakref.ref(pipeline)


def unbind_node(node_id: str) -> None:
    """The node stopped: records written after this are no longer its (a stopped Service object
    can live on, and would tag a later node's or the process's records)."""
    _nodes.pop(node_id, None)


def _node_of(service: str | None) -> tuple[str, str] | None:
    """(service, node id) of the node writing: the only node of `service` in this process, or
    the one running the current task; any service when `service` is None and only one serves."""
    found = [(n, p) for n, ref in tuple(_nodes.items()) if (p := ref()) is not None]
    if service is not None:
        found = [(n, p) for n, p in found if p.service == service]
    if len(found) == 1:
        return found[0][1].service, found[0][0]
    if service is None or not found:
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no loop in this thread (a blocking handler's worker)
        return None
    for node_id, pipeline in found:
        if task in pipeline.inflight:
            return pipeline.service, node_id
    return None


def trace_ids(metadata: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(trace id, span id) as lowercase hex: the active OpenTelemetry span's when there is one,
    else those of the W3C `traceparent` in `metadata` (the caller's span), else None."""
    otel = sys.modules.get("opentelemetry.trace")  # never imported: no span can be active
    if otel is not None:
        span = otel.get_current_span().get_span_context()
        if span.is_valid:
            return format(span.trace_id, "032x"), format(span.span_id, "016x")
    if metadata:
        return _parse_traceparent(metadata.get("traceparent", ""))
    return None


def _parse_traceparent(value: str) -> tuple[str, str] | None:
    # version-traceid-parentid-flags; a later version may append fields (W3C says: accept it)
    parts = value.strip().lower().split("-")
    if len(parts) < 4 or parts[0] == "ff" or len(parts[0]) != 2:
        return None
    trace, span = parts[1], parts[2]
    if len(trace) != 32 or len(span) != 16 or not _hex(trace + span + parts[0] + parts[3]):
        return None
    if trace == "0" * 32 or span == "0" * 16:
        return None
    return trace, span


def _hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


class CallFilter(logging.Filter):
    """Adds the serving call's service, node, endpoint, trace_id and span_id to each record that
    lacks them (a record's own `extra=` wins). Outside a call, a process serving one node still
    tags records with its service and node."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        ctx = current_context()
        if ctx is not None:
            if "service" not in fields and ctx.service:
                record.service = ctx.service
            if "endpoint" not in fields and ctx.endpoint:
                record.endpoint = ctx.endpoint
        if "trace_id" not in fields:
            ids = trace_ids(ctx.metadata if ctx is not None else None)
            if ids is not None:
                record.trace_id, record.span_id = ids
        if "node" not in fields:
            known = _node_of(fields.get("service"))
            if known is not None:
                if "service" not in fields:
                    record.service = known[0]
                record.node = known[1]
        return True


# -- formatting ------------------------------------------------------------------------------------


def printable(text: str, limit: int = 200) -> str:
    """`text` fit for a log line when a peer chose it (a path, a caller's name): control and
    line-breaking characters escaped as Python writes them (`\\n`, `\\x1b`, `\\u2028`), so it can
    neither start a line of its own nor colour or clear a terminal; cut after `limit` characters."""
    if len(text) > limit:
        text = f"{text[:limit]}..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _message(record: logging.LogRecord) -> str:
    """The record's message; a call whose arguments do not fit its format string still logs."""
    try:
        return record.getMessage()
    except Exception:
        args = _safe_str(record.args) if record.args else ""
        return f"{_safe_str(record.msg)} {args} (the log call's arguments did not fit its message)"


class TextFormatter(logging.Formatter):
    """The usual `logging` text, plus the call's trace id when there is one (to grep a trace)."""

    def format(self, record: logging.LogRecord) -> str:
        # logging.Formatter.format, with a message that cannot raise
        record.message = _message(record)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        return text

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        trace = getattr(record, "trace_id", None)
        return f"{text} [trace_id={trace}]" if trace else text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line whatever the message holds (newlines are escaped
    inside strings): time (RFC 3339, UTC, milliseconds), level, logger, message, the call's
    fields when known, `exc_info` (the traceback as a string) and every `extra=` field."""

    def __init__(self, *, ascii_only: bool = False) -> None:
        super().__init__()
        self.ascii_only = ascii_only

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        for key in FIELDS:
            value = fields.get(key)
            if value is not None and value != "":
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        for key, value in fields.items():
            if key not in _SKIP:
                out[key] = value
            elif key in _RENAMED:  # an extra named like a core key: kept, under another name
                out[f"extra_{key}"] = value
        return self.dumps(out)

    def dumps(self, out: dict[str, Any]) -> str:
        try:
            line = self._dumps(out, self.ascii_only)
        except (TypeError, ValueError, RecursionError):  # NaN, a cycle, a key JSON cannot hold
            out = {
                k: v if isinstance(v, str | int | bool) or v is None else _safe_str(v) for k, v in out.items()
            }
            line = self._dumps(out, self.ascii_only)
        if not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: escaped, so the line stays valid UTF-8
                line = self._dumps(out, True)
        return line

    @staticmethod
    def _dumps(out: dict[str, Any], ascii_only: bool) -> str:
        return json.dumps(out, ensure_ascii=ascii_only, default=_safe_str, allow_nan=False)


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose own failures are one JSON line too, never a multi-line report
    that would break a reader parsing the stream line by line."""

    def __init__(self, stream: TextIO, formatter: JsonFormatter) -> None:
        super().__init__(stream)
        self.setFormatter(formatter)
        self.json = formatter

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        line = self.json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "level": "ERROR",
                "logger": "microweave.logs",
                "message": f"a log record from {record.name} could not be written: {_safe_str(exc)}",
            }
        )
        try:
            self.stream.write(line + "\n")
            self.flush()
        except Exception:  # the stream itself is broken: nothing left to tell
            pass
