"""microweave.logs: the JSON and text formatters, the filter that tags records with the call,
the settings from the environment, and the access log of a service served in-process."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider

from microweave import Context, NotFound, Service, logs
from microweave.context import FROM_SERVICE, _set_current
from microweave.errors import ConfigurationError
from microweave.middleware.builtin import AccessLog
from microweave.middleware.defaults import server_middleware
from microweave.server import Router
from microweave.server.pipeline import Pipeline
from microweave.testing import serve

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[logging.Logger]:
    """Each test may configure logging: the root logger is put back as it was."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs._installed.clear()


def record(msg: object, *args: object, exc: BaseException | None = None, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("app.part", logging.INFO, __file__, 1, msg, args or None, None)
    if exc is not None:
        rec.exc_info = (type(exc), exc, exc.__traceback__)
    rec.__dict__.update(extra)
    return rec


def one_json_line(line: str) -> dict[str, Any]:
    assert "\n" not in line and "\r" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def in_call(fn: Any, ctx: Context) -> Any:
    """Run `fn` as the code serving `ctx` would: with `ctx` as the current context."""

    def run() -> Any:
        _set_current(ctx)
        return fn()

    return contextvars.copy_context().run(run)


# -- JSON ------------------------------------------------------------------------------------------


def test_json_line_has_the_core_fields_and_the_extras() -> None:
    out = one_json_line(logs.JsonFormatter().format(record("paid %s", "€12", order_id=7, tags=["a"])))
    assert RFC3339_MS_UTC.match(out["time"]), out["time"]
    assert (out["level"], out["logger"], out["message"]) == ("INFO", "app.part", "paid €12")
    assert (out["order_id"], out["tags"]) == (7, ["a"])
    assert "args" not in out and "msg" not in out and "pathname" not in out


def test_json_extras_named_like_core_keys_are_kept_apart() -> None:
    out = one_json_line(logs.JsonFormatter().format(record("x", time="soon", level=3, logger="mine")))
    assert RFC3339_MS_UTC.match(out["time"]) and (out["level"], out["logger"]) == ("INFO", "app.part")
    assert (out["extra_time"], out["extra_level"], out["extra_logger"]) == ("soon", 3, "mine")


def test_json_time_is_utc_with_milliseconds() -> None:
    rec = record("x")
    rec.created, rec.msecs = 0.25, 250.0
    assert one_json_line(logs.JsonFormatter().format(rec))["time"] == "1970-01-01T00:00:00.250Z"


def test_json_keeps_any_message_on_one_line() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd\nobject"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    formatter = logs.JsonFormatter()
    cases = [
        (record("line one\nline two\r\n\ttab"), "line one\nline two\r\n\ttab"),
        (record(Odd()), "odd\nobject"),
        (record("%s and %d", "one"), None),  # arguments that do not fit the format string
        (record(Broken()), None),
        (record("ünïcödé ✓ 😀 \u2028 \x00"), "ünïcödé ✓ 😀 \u2028 \x00"),
    ]
    for rec, message in cases:
        out = one_json_line(formatter.format(rec))
        if message is not None:
            assert out["message"] == message
        else:
            assert out["message"]  # something is said, not an exception


def test_json_survives_extras_json_cannot_hold() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    rec = record("x", nan=float("nan"), obj=object(), cyclic=cyclic, keyed={(1, 2): "t"}, raw=b"\xff")
    out = one_json_line(logs.JsonFormatter().format(rec))
    assert out["message"] == "x"
    assert out["nan"] == "nan" and out["obj"].startswith("<object object")


def test_json_lone_surrogate_still_valid_utf8() -> None:
    line = logs.JsonFormatter().format(record("bad \udcff byte"))
    line.encode("utf-8")  # would raise on a raw surrogate
    assert one_json_line(line)["message"] == "bad \udcff byte"


def test_json_exception_is_one_string_field() -> None:
    try:
        raise ValueError("broken\nbadly")
    except ValueError as exc:
        rec = record("failed", exc=exc)
    out = one_json_line(logs.JsonFormatter().format(rec))
    assert out["exc_info"].startswith("Traceback (most recent call last):")
    assert out["exc_info"].endswith("ValueError: broken\nbadly")


def test_json_handler_reports_its_own_failure_as_json() -> None:
    stream = io.StringIO()
    handler = logs.configure("info", "json", stream=stream)

    class Unwritable(io.StringIO):
        def write(self, text: str) -> int:
            if "boom" in text:
                raise OSError("disk full")
            return super().write(text)

    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(Unwritable())
    logging.getLogger("app").warning("boom")
    logging.getLogger("app").warning("after")
    written = handler.stream.getvalue().splitlines()
    assert [one_json_line(line)["message"] for line in written] == [
        "a log record from app could not be written: disk full",
        "after",
    ]


# -- the filter ------------------------------------------------------------------------------------


def filtered(rec: logging.LogRecord) -> logging.LogRecord:
    assert logs.CallFilter().filter(rec)
    return rec


def test_filter_takes_service_endpoint_and_trace_from_the_call() -> None:
    ctx = Context(service="billing", endpoint="Billing.Pay", metadata={"traceparent": TRACEPARENT})
    rec = in_call(lambda: filtered(record("x")), ctx)
    assert (rec.service, rec.endpoint, rec.trace_id, rec.span_id) == ("billing", "Billing.Pay", TRACE, SPAN)


def test_filter_leaves_what_the_record_says_and_adds_nothing_outside_a_call() -> None:
    ctx = Context(service="billing", endpoint="Billing.Pay", metadata={"traceparent": TRACEPARENT})
    rec = in_call(lambda: filtered(record("x", endpoint="Other.One", trace_id="t")), ctx)
    assert (rec.service, rec.endpoint, rec.trace_id) == ("billing", "Other.One", "t")
    plain = filtered(record("x"))
    assert not {"service", "endpoint", "trace_id", "span_id", "node"} & set(vars(plain))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE[:-1]}g-{SPAN}-01",
        f"00-{TRACE}-{SPAN}",
    ],
)
def test_filter_ignores_a_malformed_traceparent(value: str) -> None:
    rec = in_call(lambda: filtered(record("x")), Context(service="s", metadata={"traceparent": value}))
    assert "trace_id" not in vars(rec)


def test_filter_accepts_a_later_traceparent_version_and_upper_case() -> None:
    value = f"01-{TRACE.upper()}-{SPAN}-01-future"
    rec = in_call(lambda: filtered(record("x")), Context(service="s", metadata={"traceparent": value}))
    assert (rec.trace_id, rec.span_id) == (TRACE, SPAN)


def test_filter_prefers_the_active_opentelemetry_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    ctx = Context(service="s", metadata={"traceparent": TRACEPARENT})
    with tracer.start_as_current_span("work") as span:
        rec = in_call(lambda: filtered(record("x")), ctx)
        own = span.get_span_context()
    assert (rec.trace_id, rec.span_id) == (format(own.trace_id, "032x"), format(own.span_id, "016x"))
    assert rec.trace_id != TRACE


def test_filter_names_the_node_of_the_call() -> None:
    one = Pipeline(Router(package="solo"))
    logs.bind_node(one, "solo-node-1")
    rec = in_call(lambda: filtered(record("x")), Context(service="solo", endpoint="S.X"))
    assert rec.node == "solo-node-1"
    # two nodes of one service in a process: the one running the current task says
    twin = Pipeline(Router(package="twin"))
    other = Pipeline(Router(package="twin"))
    logs.bind_node(twin, "twin-a")
    logs.bind_node(other, "twin-b")

    async def served_by(pipeline: Pipeline) -> logging.LogRecord:
        task = asyncio.current_task()
        assert task is not None
        pipeline.inflight.add(task)
        try:
            return in_call(lambda: filtered(record("x")), Context(service="twin"))
        finally:
            pipeline.inflight.discard(task)

    assert asyncio.run(served_by(other)).node == "twin-b"
    assert asyncio.run(served_by(twin)).node == "twin-a"
    assert "node" not in vars(in_call(lambda: filtered(record("x")), Context(service="twin")))


# -- text ------------------------------------------------------------------------------------------


def test_text_is_plain_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    logs.configure("info", "text", stream=stream)
    ctx = Context(service="s", metadata={"traceparent": TRACEPARENT})
    in_call(lambda: logging.getLogger("app").info("hello %s", "there"), ctx)
    logging.getLogger("app").debug("not shown at info")
    text = stream.getvalue()
    assert "\x1b[" not in text
    assert re.search(rf" INFO app: hello there \[trace_id={TRACE}\]\n$", text), text


def test_text_is_colored_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    leader, follower = os.openpty()
    with open(follower, "w", encoding="utf-8") as terminal, open(leader, "rb", buffering=0) as reader:
        logs.configure("info", "text", stream=terminal)
        logging.getLogger("app").warning("on a terminal")
        terminal.flush()
        shown = reader.read(4096)
    assert b"on a terminal" in shown
    assert b"\x1b[" in shown


def test_configure_replaces_its_own_handler_and_keeps_the_users(root_logger: logging.Logger) -> None:
    users = logging.StreamHandler(io.StringIO())
    root_logger.addHandler(users)
    first = logs.configure("info", "json", stream=io.StringIO())
    second = logs.configure("debug", "text", stream=io.StringIO())
    assert first not in root_logger.handlers
    assert second in root_logger.handlers and users in root_logger.handlers
    assert root_logger.level == logging.DEBUG


# -- settings --------------------------------------------------------------------------------------


def test_environment_picks_level_and_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_LOG_LEVEL", "warn")  # go-micro's spelling
    monkeypatch.setenv("MICRO_LOG_FORMAT", "JSON")
    stream = io.StringIO()
    logs.configure(stream=stream)
    logging.getLogger("app").info("dropped")
    logging.getLogger("app").warning("kept")
    assert [one_json_line(line)["message"] for line in stream.getvalue().splitlines()] == ["kept"]


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("MICRO_LOG_LEVEL", "loud", "debug, info, warning, error, critical"),
        ("MICRO_LOG_FORMAT", "xml", "text or json"),
    ],
)
def test_bad_environment_names_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, allowed: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        logs.configure(stream=io.StringIO())
    assert f"{variable}={value!r}" in caught.value.detail and allowed in caught.value.detail


def test_bad_arguments_name_what_is_allowed() -> None:
    with pytest.raises(ConfigurationError, match=r"format='yaml'.*text or json"):
        logs.configure("info", "yaml", stream=io.StringIO())
    with pytest.raises(ConfigurationError, match="level='chatty'"):
        logs.configure("chatty", stream=io.StringIO())


def test_access_log_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("1", "true", "YES", "on"):
        monkeypatch.setenv("MICRO_ACCESS_LOG", value)
        assert logs.access_log_enabled()
        assert isinstance(server_middleware("s")[-1], AccessLog)
    for value in ("0", "false", "no", "off"):
        monkeypatch.setenv("MICRO_ACCESS_LOG", value)
        assert not logs.access_log_enabled()
        assert not any(isinstance(m, AccessLog) for m in server_middleware("s"))
    monkeypatch.delenv("MICRO_ACCESS_LOG")
    assert not logs.access_log_enabled()
    monkeypatch.setenv("MICRO_ACCESS_LOG", "sometimes")
    with pytest.raises(ConfigurationError, match=r"MICRO_ACCESS_LOG='sometimes'.*1, true, yes or on"):
        server_middleware("s")


# -- the access log, in a service served in-process --------------------------------------------------


class Req(msgspec.Struct):
    name: str = ""


async def test_access_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_ACCESS_LOG", "1")
    service = Service("ledger")

    @service.handler
    class Ledger:
        async def read(self, req: Req) -> Req:
            return req

        async def missing(self, req: Req) -> Req:
            raise NotFound(f"no entry {req.name}")

        async def broken(self, req: Req) -> Req:
            raise RuntimeError("bug")

    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    async with serve(service, transport="tcp") as client:
        await client.call("ledger", "Ledger.Read", {"name": "a"}, metadata={"traceparent": TRACEPARENT})
        with pytest.raises(NotFound):
            await client.call("ledger", "Ledger.Missing", {"name": "b"}, metadata={FROM_SERVICE: "audit"})
        with pytest.raises(Exception, match="correlation id"):
            await client.call("ledger", "Ledger.Broken", {})
    lines = [one_json_line(line) for line in stream.getvalue().splitlines()]
    access = {line["endpoint"]: line for line in lines if line["logger"] == "microweave.access"}
    assert set(access) == {"Ledger.Read", "Ledger.Missing", "Ledger.Broken"}
    read, missing, broken = access["Ledger.Read"], access["Ledger.Missing"], access["Ledger.Broken"]
    assert (read["level"], read["code"], read["service"], read["transport"]) == ("INFO", 200, "ledger", "tcp")
    assert (read["trace_id"], read["span_id"]) == (TRACE, SPAN)
    assert read["node"] == service.node_id
    assert isinstance(read["duration_ms"], float) and read["caller"]
    assert (missing["level"], missing["code"], missing["caller"]) == ("INFO", 404, "audit")  # not ours
    assert (broken["level"], broken["code"]) == ("WARNING", 500)
    assert "trace_id" not in broken
