"""The `microweave` command as a user runs it: real processes on a private local:// registry."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import REPO, CliProcess, assert_clean, cli, registry_env, wait_for_service
from helpers import free_port

GREETER = "examples/greeter/service.py"
PROTO_GREETER = "examples/proto_greeter/service.py"
VERSIONED = "tests/integration/services/versioned.py"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return registry_env(tmp_path_factory.mktemp("cli") / "registry")


@pytest.fixture(scope="module")
def greeter(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliProcess]:
    """One `microweave run examples/greeter/service.py` shared by the read-only tests."""
    log = tmp_path_factory.mktemp("logs") / "greeter.log"
    with CliProcess("run", GREETER, env=env, log=log) as process:
        wait_for_service("greeter", env=env, process=process)
        yield process


# -- services, describe ----------------------------------------------------------------


def test_services_lists_the_running_greeter(greeter: CliProcess, env: dict[str, str]) -> None:
    listed = cli("services", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (record,) = [r for r in json.loads(listed.stdout) if r["name"] == "greeter"]
    assert record["version"] == "1.0.0"
    assert len(record["nodes"]) == 1

    table = cli("services", env=env)
    assert table.returncode == 0, table.stderr
    assert "greeter" in table.stdout
    assert "1.0.0" in table.stdout


def test_describe_json_has_nodes_and_endpoints(greeter: CliProcess, env: dict[str, str]) -> None:
    described = cli("describe", "greeter", "--json", env=env)
    assert described.returncode == 0, described.stderr
    (record,) = json.loads(described.stdout)
    (node,) = record["nodes"]
    assert node["id"].startswith("greeter-")
    host, _, port = node["address"].rpartition(":")
    assert host and port.isdigit() and int(port) > 0
    assert node["metadata"]["protocol"] == "grpc"
    endpoints = {e["name"]: e for e in record["endpoints"]}
    assert set(endpoints) == {"Greeter.SayHello", "Greeter.SayHelloStream"}
    assert endpoints["Greeter.SayHello"]["request"]["values"] == [
        {"name": "name", "type": "str", "values": None}
    ]
    assert endpoints["Greeter.SayHelloStream"]["metadata"]["stream"] == "server_stream"


def test_describe_table_shows_endpoints_with_fields(greeter: CliProcess, env: dict[str, str]) -> None:
    described = cli("describe", "greeter", env=env)
    assert described.returncode == 0, described.stderr
    assert "Greeter.SayHello" in described.stdout
    assert "HelloRequest {name: str}" in described.stdout
    assert "HelloReply {message: str}" in described.stdout


def test_describe_unknown_service_says_what_to_check(env: dict[str, str]) -> None:
    described = cli("describe", "nobody", env=env)
    assert described.returncode == 1
    assert "service nobody not found" in described.stderr
    assert "microweave services" in described.stderr
    assert_clean(described.stdout + described.stderr)


# -- call ------------------------------------------------------------------------------


def test_call_prints_the_json_reply(greeter: CliProcess, env: dict[str, str]) -> None:
    called = cli("call", "greeter", "Greeter.SayHello", '{"name": "x"}', env=env)
    assert called.returncode == 0, called.stderr
    assert called.stdout == '{"message": "Hello x"}\n'


def test_call_by_grpc_path(greeter: CliProcess, env: dict[str, str]) -> None:
    called = cli("call", "greeter", "/greeter.Greeter/SayHello", '{"name": "y"}', env=env)
    assert called.returncode == 0, called.stderr
    assert called.stdout == '{"message": "Hello y"}\n'


def _reply(*args: str, env: dict[str, str]) -> dict[str, Any]:
    called = cli("call", "versioned", "Greeter.SayHello", '{"name": "o"}', *args, env=env)
    assert called.returncode == 0, called.stderr
    reply: dict[str, Any] = json.loads(called.stdout)
    return reply


def test_call_options_reach_the_handler(two_versions: None, env: dict[str, str]) -> None:
    reply = _reply("--timeout", "3", "--metadata", "x-trace=abc", "-m", "X-User=me", "-m", "x-e=", env=env)
    assert reply["metadata"] == {"x-trace": "abc", "x-user": "me", "x-e": ""}
    assert 0 < reply["seconds_left"] <= 3  # the handler's deadline is the one given
    # the default is 30 s, so more than that left proves --timeout was used, not the default
    assert _reply("--timeout", "1000", env=env)["seconds_left"] > 30
    # inf, or more than 30 days: the handler sees no deadline at all
    for huge in ("inf", "1e300", "2592001"):
        assert _reply("--timeout", huge, env=env)["seconds_left"] is None, huge
    assert _reply("--timeout", "2592000", env=env)["seconds_left"] > 29 * 24 * 3600  # 30 days is a deadline


def test_call_streams_one_json_line_per_reply(greeter: CliProcess, env: dict[str, str]) -> None:
    for endpoint in ("Greeter.SayHelloStream", "/greeter.Greeter/SayHelloStream"):
        called = cli("call", "greeter", endpoint, '{"name": "ab"}', env=env)
        assert called.returncode == 0, called.stderr
        assert called.stdout.splitlines() == ['{"message": "Hello a"}', '{"message": "Hello b"}']


def test_call_unknown_endpoint_prints_the_code(greeter: CliProcess, env: dict[str, str]) -> None:
    called = cli("call", "greeter", "Greeter.Nope", "{}", env=env)
    assert called.returncode == 1
    assert called.stdout == ""
    assert "error 501 Not Implemented" in called.stderr
    assert "Greeter.SayHello" in called.stderr  # the endpoints it does have
    assert "id: greeter" in called.stderr
    assert_clean(called.stderr)


def test_call_bad_request_prints_code_detail_and_id(greeter: CliProcess, env: dict[str, str]) -> None:
    called = cli("call", "greeter", "Greeter.SayHello", '{"name": 1}', env=env)
    assert called.returncode == 1
    assert "error 400 Bad Request: invalid request body" in called.stderr
    assert "$.name" in called.stderr
    assert "id: greeter" in called.stderr
    assert_clean(called.stderr)


def test_call_malformed_json_fails_before_any_lookup(env: dict[str, str]) -> None:
    called = cli("call", "nobody", "X.Y", "{bad", env=env)
    assert called.returncode == 2
    assert "not valid JSON" in called.stderr
    assert "not found" not in called.stderr  # the registry was never asked
    assert_clean(called.stdout + called.stderr)


def test_call_malformed_metadata_is_a_usage_error(env: dict[str, str]) -> None:
    called = cli("call", "greeter", "Greeter.SayHello", "{}", "--metadata", "novalue", env=env)
    assert called.returncode == 2
    assert "key=value" in called.stderr


def test_call_unknown_service_says_what_to_check(env: dict[str, str]) -> None:
    called = cli("call", "nobody", "X.Y", "{}", env=env)
    assert called.returncode == 1
    assert "service nobody not found" in called.stderr
    assert "is it running?" in called.stderr
    assert "microweave services" in called.stderr
    assert_clean(called.stdout + called.stderr)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nan", "nan is not a number of seconds > 0"),
        ("0", "0 is not a number of seconds > 0"),
        ("-1", "-1 is not a number of seconds > 0"),
        ("soon", "'soon' is not a number of seconds"),
    ],
)
def test_call_refuses_a_timeout_that_is_not_seconds(value: str, message: str, env: dict[str, str]) -> None:
    called = cli("call", "nobody", "X.Y", "{}", "--timeout", value, env=env)
    assert called.returncode == 2, called.stderr
    assert message in called.stderr
    assert "not found" not in called.stderr  # refused before the registry was asked
    assert_clean(called.stdout + called.stderr)


@pytest.mark.parametrize("value", ["inf", "1e300", "1e10", "2592001"])
def test_call_with_a_huge_timeout_means_no_deadline(
    value: str, greeter: CliProcess, env: dict[str, str]
) -> None:
    for endpoint in ("Greeter.SayHello", "Greeter.SayHelloStream"):
        called = cli("call", "greeter", endpoint, '{"name": "i"}', "--timeout", value, env=env)
        assert called.returncode == 0, called.stderr
        assert called.stdout == '{"message": "Hello i"}\n'
        assert_clean(called.stderr)


# -- versions ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_versions(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Two `microweave run` processes of one service, versions 1.0.0 and 2.0.0, on one registry."""
    logs = tmp_path_factory.mktemp("versions")
    with contextlib.ExitStack() as stack:
        for version in ("1.0.0", "2.0.0"):
            process = stack.enter_context(
                CliProcess(
                    "run", VERSIONED, env={**env, "GREETER_VERSION": version}, log=logs / f"{version}.log"
                )
            )
            wait_for_service("versioned", env=env, process=process)
        records = wait_for_service("versioned", env=env)
        assert sorted(r["version"] for r in records) == ["1.0.0", "2.0.0"]
        yield


def _answered_by(*args: str, env: dict[str, str], calls: int) -> set[str]:
    """The versions that answered `calls` CLI calls, each a process of its own (a fresh pick)."""
    versions = set()
    for _ in range(calls):
        called = cli("call", "versioned", "Greeter.SayHello", '{"name": "v"}', *args, env=env)
        assert called.returncode == 0, called.stderr
        versions.add(json.loads(called.stdout)["version"])
    return versions


def test_call_version_picks_the_nodes_of_that_version(two_versions: None, env: dict[str, str]) -> None:
    # 6 calls each: were the choice not filtered, all 12 would land on the asked version 1 time in 4096
    assert _answered_by("--version", "1.0.0", env=env, calls=6) == {"1.0.0"}
    assert _answered_by("--version", "2.0.0", env=env, calls=6) == {"2.0.0"}
    # repeated, the option allows any of the versions given (here only one of them runs)
    assert _answered_by("--version", "2.0.0", "--version", "9.9.9", env=env, calls=6) == {"2.0.0"}


def test_call_version_that_is_not_running_says_which_are(two_versions: None, env: dict[str, str]) -> None:
    called = cli("call", "versioned", "Greeter.SayHello", '{"name": "v"}', "--version", "3.0.0", env=env)
    assert called.returncode == 1
    assert called.stdout == ""
    assert "service versioned has no running node of version 3.0.0 (running: 1.0.0, 2.0.0)" in called.stderr
    assert "--version 1.0.0" in called.stderr
    assert_clean(called.stderr)


def test_describe_version_shows_only_that_version(two_versions: None, env: dict[str, str]) -> None:
    everything = json.loads(cli("describe", "versioned", "--json", env=env).stdout)
    assert sorted(r["version"] for r in everything) == ["1.0.0", "2.0.0"]
    described = cli("describe", "versioned", "--version", "2.0.0", "--json", env=env)
    assert described.returncode == 0, described.stderr
    (record,) = json.loads(described.stdout)
    assert record["version"] == "2.0.0"
    table = cli("describe", "versioned", "--version", "1.0.0", env=env)
    assert table.returncode == 0, table.stderr
    assert "(versions 1.0.0)" in table.stdout
    assert "2.0.0" not in table.stdout
    missing = cli("describe", "versioned", "--version", "9", env=env)
    assert missing.returncode == 1
    assert "no running node of version 9" in missing.stderr


# -- run ---------------------------------------------------------------------------------


def test_run_stops_on_sigterm_exits_0_and_deregisters(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    process = CliProcess("run", GREETER, env=env, log=tmp_path / "run.log")
    try:
        wait_for_service("greeter", env=env, process=process)
    finally:
        code = process.stop()
    assert code == 0, process.output()
    assert json.loads(cli("services", "--json", env=env).stdout) == []


def test_run_overrides_registry_and_address(tmp_path: Path) -> None:
    default_env = registry_env(tmp_path / "default")
    other = tmp_path / "other"
    port, tcp_port = free_port(), free_port()
    args = (
        "run", GREETER, "--registry", f"local://{other}",
        "--address", f"127.0.0.1:{port}", "--tcp-address", f"127.0.0.1:{tcp_port}",
    )  # fmt: skip
    with CliProcess(*args, env=default_env, log=tmp_path / "run.log") as process:
        (record,) = wait_for_service("greeter", env=registry_env(other), process=process)
        (node,) = record["nodes"]
        assert node["address"] == f"127.0.0.1:{port}"
        assert node["metadata"]["tcp_address"] == f"127.0.0.1:{tcp_port}"
        assert json.loads(cli("services", "--json", env=default_env).stdout) == []
        # the global option reaches the same registry as the environment does
        called = cli(
            "--registry", f"local://{other}", "call", "greeter", "Greeter.SayHello", '{"name": "o"}',
            env=default_env,
        )  # fmt: skip
        assert called.stdout == '{"message": "Hello o"}\n', called.stderr


def test_run_module_attr_target(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    with CliProcess("run", "microweave.cli.demo_services:greeter", env=env, log=tmp_path / "run.log") as p:
        wait_for_service("greeter", env=env, process=p)
        called = cli("call", "greeter", "Greeter.SayHello", '{"name": "m"}', env=env)
        assert called.stdout == '{"message": "Hello m"}\n', called.stderr


def test_run_on_a_taken_port_is_a_clear_error(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        ran = cli("run", GREETER, "--address", address, env=env)
    assert ran.returncode == 1
    assert f"greeter could not start: gRPC could not listen on {address}" in ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("does/not/exist.py", "no such file"),
        ("no_such_module_here", "no module named"),
        ("microweave.cli.demo_services", "several services"),
        ("microweave.cli.demo_services:nope", "has no attribute 'nope'"),
        ("microweave.cli.demo_services:build", "not a microweave.Service"),
        ("microweave.cli.output", "no microweave.Service found"),
    ],
)
def test_run_bad_target_is_a_clear_usage_error(target: str, message: str, env: dict[str, str]) -> None:
    ran = cli("run", target, env=env)
    assert ran.returncode == 2
    assert message in ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr


# -- demo, help --------------------------------------------------------------------------


def test_demo_runs_and_cleans_up_in_a_fresh_registry(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "fresh")
    shown = cli("demo", env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "Hello microweave" in shown.stdout  # unary
    assert "Hello w" in shown.stdout  # stream
    assert "Hello Ada, welcome aboard!" in shown.stdout  # service to service
    assert "code 400" in shown.stdout  # the clean error
    assert "Traceback" not in shown.stdout + shown.stderr
    assert json.loads(cli("services", "--json", env=env).stdout) == []


@pytest.mark.parametrize("command", [[], ["run"], ["services"], ["describe"], ["call"], ["demo"]])
def test_help(command: list[str], env: dict[str, str]) -> None:
    helped = cli(*command, "--help", env=env)
    assert helped.returncode == 0, helped.stderr
    assert "Usage" in helped.stdout


# -- the proto greeter example -------------------------------------------------------------


def test_proto_greeter_runs_and_answers_stub_and_cli(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    with CliProcess("run", PROTO_GREETER, env=env, log=tmp_path / "run.log") as process:
        (record,) = wait_for_service("proto-greeter", env=env, process=process)
        paths = {e["name"]: e["metadata"]["path"] for e in record["endpoints"]}
        assert paths["Greeter.SayHello"] == "/helloworld.Greeter/SayHello"

        client = subprocess.run(
            [sys.executable, str(REPO / "examples/proto_greeter/client.py"), "pb"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == ["Hello pb", "Hello p", "Hello b"]

        # JSON in and out of a protobuf servicer, types read over gRPC reflection
        called = cli("call", "proto-greeter", "Greeter.SayHello", '{"name": "x"}', env=env)
        assert called.stdout == '{"message": "Hello x"}\n', called.stderr
        streamed = cli("call", "proto-greeter", "Greeter.SayHelloStream", '{"name": "xy"}', env=env)
        assert streamed.stdout.splitlines() == ['{"message": "Hello x"}', '{"message": "Hello y"}']
