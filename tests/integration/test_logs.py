"""Logs as a user runs them: `microweave run` processes with MICRO_LOG_FORMAT=json and
MICRO_ACCESS_LOG=1, called by the `microweave call` CLI with a W3C traceparent.

Every line a service writes must parse as JSON on its own, and the lines a call caused (the
handler's own, the access line, a traceback) must carry the trace id the caller sent, in the
process it called and in the process that one called in turn (no OpenTelemetry SDK configured:
the id comes from the traceparent the call carried).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import REPO, CliProcess, cli, registry_env, wait_for_service

SERVICES = "tests/integration/services/logged.py"
DIRECT = "11111111111111111111111111111111"
RELAYED = "22222222222222222222222222222222"
FAILED = "33333333333333333333333333333333"
TRACED = "44444444444444444444444444444444"
SPAN = "00f067aa0ba902b7"


def traceparent(trace_id: str) -> str:
    return f"traceparent=00-{trace_id}-{SPAN}-01"


class Node:
    """One running service process and its node id (as the registry lists it)."""

    def __init__(self, process: CliProcess, node_id: str) -> None:
        self.process = process
        self.node_id = node_id

    def lines(self) -> list[dict[str, Any]]:
        """Every line the process wrote, each parsed on its own (a line that is not one JSON
        object fails the test with the line in the message)."""
        parsed = []
        text = self.process.log_path.read_bytes().decode("utf-8")  # strict: valid UTF-8 too
        for line in text.removesuffix("\n").split("\n"):
            try:
                value = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
            assert isinstance(value, dict), line
            parsed.append(value)
        return parsed


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = registry_env(tmp_path_factory.mktemp("logs") / "registry")
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}  # no SDK: ids from traceparent
    env.update(MICRO_LOG_FORMAT="json", MICRO_ACCESS_LOG="1", MICRO_LOG_LEVEL="info")
    return env


@pytest.fixture(scope="module")
def nodes(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    """`logged-back` and `logged-front` (which calls back), called once each way, then stopped
    (SIGTERM: every line they had to write is written)."""
    logs = tmp_path_factory.mktemp("service-logs")
    started: dict[str, Node] = {}
    try:
        for name in ("back", "front"):
            process = CliProcess("run", f"{SERVICES}:{name}", env=env, log=logs / f"{name}.log")
            started[name] = Node(process, "")
            (record,) = wait_for_service(f"logged-{name}", env=env, process=process)
            started[name].node_id = record["nodes"][0]["id"]
        yield started
    finally:
        for node in started.values():
            node.process.stop()


@pytest.fixture(scope="module")
def calls(env: dict[str, str], nodes: dict[str, Node]) -> dict[str, str]:
    """Make the calls, stop the services; what the caller of the failing call was told."""
    direct = cli("call", "logged-back", "Back.Note", '{"text": "direct"}', "-m", traceparent(DIRECT), env=env)
    assert direct.returncode == 0, direct.stderr
    relayed = cli(
        "call", "logged-front", "Front.Relay", '{"text": "relayed"}', "-m", traceparent(RELAYED), env=env
    )
    assert relayed.returncode == 0, relayed.stderr
    assert json.loads(relayed.stdout) == {"text": "noted relayed"}
    failed = cli("call", "logged-back", "Back.Fail", '{"text": "x"}', "-m", traceparent(FAILED), env=env)
    assert failed.returncode == 1, failed.stderr
    for node in nodes.values():
        assert node.process.stop() == 0, node.process.output()
    return {"failed": failed.stderr}


def only(lines: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [line for line in lines if all(line.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_every_line_is_one_json_object_with_time_level_logger_message(
    nodes: dict[str, Node], calls: dict[str, str]
) -> None:
    for node in nodes.values():
        lines = node.lines()
        assert len(lines) >= 4  # started, the calls, stopping, stopped
        for line in lines:
            assert {"time", "level", "logger", "message"} <= set(line), line
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line


def test_handler_and_access_lines_carry_the_trace_id_sent(
    nodes: dict[str, Node], calls: dict[str, str]
) -> None:
    back = nodes["back"]
    lines = back.lines()
    handler = only(lines, logger="logged.handlers", trace_id=DIRECT)
    # the message kept its newline and unicode, inside the one line
    assert handler["message"] == "noted 'direct'\nsecond line é ✓ {'n': 1}"
    assert (handler["service"], handler["endpoint"], handler["node"]) == (
        "logged-back",
        "Back.Note",
        back.node_id,
    )
    assert handler["span_id"] == SPAN and handler["note_length"] == 6  # an `extra=` field
    assert handler["level"] == "INFO"
    access = only(lines, logger="microweave.access", trace_id=DIRECT)
    assert (access["service"], access["endpoint"], access["node"]) == (
        "logged-back",
        "Back.Note",
        back.node_id,
    )
    assert (access["code"], access["level"], access["transport"]) == (200, "INFO", "tcp")
    assert isinstance(access["duration_ms"], int | float) and access["caller"]


def test_a_calling_service_and_the_one_it_calls_both_log_the_trace_id(
    nodes: dict[str, Node], calls: dict[str, str]
) -> None:
    front, back = nodes["front"], nodes["back"]
    front_lines, back_lines = front.lines(), back.lines()
    relaying = only(front_lines, logger="logged.handlers", trace_id=RELAYED)
    assert relaying["message"] == "relaying relayed"
    assert (relaying["service"], relaying["endpoint"], relaying["node"]) == (
        "logged-front",
        "Front.Relay",
        front.node_id,
    )
    front_access = only(front_lines, logger="microweave.access", trace_id=RELAYED)
    assert (front_access["endpoint"], front_access["code"]) == ("Front.Relay", 200)
    noted = only(back_lines, logger="logged.handlers", trace_id=RELAYED)
    assert (noted["service"], noted["node"]) == ("logged-back", back.node_id)
    back_access = only(back_lines, logger="microweave.access", trace_id=RELAYED)
    assert (back_access["endpoint"], back_access["caller"], back_access["code"]) == (
        "Back.Note",
        "logged-front",
        200,
    )


def test_a_handler_that_raises_logs_its_traceback_under_the_callers_correlation_id(
    nodes: dict[str, Node], calls: dict[str, str]
) -> None:
    told = calls["failed"]
    assert "Traceback" not in told and "second line" not in told, told  # the caller gets no internals
    found = re.search(r"correlation id ([0-9a-f]+)", told)
    assert found, told
    correlation = found.group(1)
    back = nodes["back"]
    error = only(back.lines(), correlation_id=correlation)
    assert (error["level"], error["logger"]) == ("ERROR", "microweave.server")
    assert (error["service"], error["endpoint"], error["node"]) == ("logged-back", "Back.Fail", back.node_id)
    assert error["trace_id"] == FAILED
    assert error["exc_info"].startswith("Traceback (most recent call last):")
    assert error["exc_info"].endswith("RuntimeError: the handler broke on 'x'\nwith a second line")
    access = only(back.lines(), logger="microweave.access", trace_id=FAILED)
    assert (access["code"], access["level"]) == (500, "WARNING")


def test_a_bad_log_format_stops_the_service_naming_the_allowed_ones(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = {**env, "MICRO_LOG_FORMAT": "xml", "MICRO_REGISTRY_ADDRESS": str(tmp_path)}
    ran = cli("run", f"{SERVICES}:back", env=bad)
    assert ran.returncode == 2, ran.stderr
    assert "MICRO_LOG_FORMAT='xml'" in ran.stderr and "text or json" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr


def test_logging_the_service_set_up_itself_is_kept(env: dict[str, str], tmp_path: Path) -> None:
    own = {**env, "MICRO_REGISTRY_ADDRESS": str(tmp_path / "registry"), "LOGGED_OWN_LOGGING": "1"}
    with CliProcess("run", f"{SERVICES}:back", env=own, log=tmp_path / "own.log") as process:
        wait_for_service("logged-back", env=own, process=process)
        assert process.stop() == 0
    lines = (tmp_path / "own.log").read_text().splitlines()
    assert lines and all(line.startswith("OWN ") for line in lines), lines
    assert any("serving Back.Fail, Back.Note" in line for line in lines), lines


def test_with_tracing_on_lines_carry_the_span_the_node_recorded(env: dict[str, str], tmp_path: Path) -> None:
    """An OpenTelemetry SDK configured (OTEL_TRACES_EXPORTER=console: spans to stdout, logs stay
    on stderr): the handler's line and the access line carry the caller's trace id and the id
    of the server span the node exported for the call, a child of the caller's span."""
    traced = {**env, "MICRO_REGISTRY_ADDRESS": str(tmp_path / "registry"), "OTEL_TRACES_EXPORTER": "console"}
    stdout, stderr = tmp_path / "spans.out", tmp_path / "logs.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "microweave.cli", "run", f"{SERVICES}:back"],
            env=traced, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )  # fmt: skip
        try:
            wait_for_service("logged-back", env=traced, timeout=60)
            caller = {**env, "MICRO_REGISTRY_ADDRESS": traced["MICRO_REGISTRY_ADDRESS"]}  # traces nothing
            noted = cli(
                "call", "logged-back", "Back.Note", '{"text": "t"}', "-m", traceparent(TRACED), env=caller
            )
            assert noted.returncode == 0, noted.stderr
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(60)
    assert code == 0, stderr.read_text()
    lines = [json.loads(line) for line in stderr.read_text(encoding="utf-8").removesuffix("\n").split("\n")]
    spans = _console_spans(stdout.read_text(encoding="utf-8"))
    servers = [
        s for s in spans if s["context"]["trace_id"] == f"0x{TRACED}" and s.get("parent_id") == f"0x{SPAN}"
    ]
    assert len(servers) == 1, stdout.read_text()
    server_span = servers[0]["context"]["span_id"].removeprefix("0x")
    assert server_span != SPAN
    for logger in ("logged.handlers", "microweave.access"):
        line = only(lines, logger=logger, trace_id=TRACED)
        assert line["span_id"] == server_span, (line, servers)


def _console_spans(text: str) -> list[dict[str, Any]]:
    """The spans OpenTelemetry's console exporter printed: indented JSON objects, one after another."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) != -1:
        span, at = decoder.raw_decode(text, at)
        spans.append(span)
    return spans
