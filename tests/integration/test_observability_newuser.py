"""What a new user of the observability features ran into, run as they ran it: `microweave run`
of the example greeter as a process, with the environment they would set.

- a node traced to an OTLP collector that never answers still stops on SIGTERM (the SDK's
  force_flush ignores its timeout and retries every queued batch);
- MICRO_ADMIN_ADDRESS with a port above 65535 is an error, not a port modulo 65536;
- a bad MICRO_ADMIN_ADDRESS does not break the commands that start no service;
- an admin port that is taken is an error naming the admin endpoint and MICRO_ADMIN_ADDRESS;
- a bad MICRO_LOG_LEVEL's hint is about the variable, not the command's options.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import CliProcess, assert_clean, cli, registry_env, wait_for_service

GREETER = "examples/greeter/service.py"


@pytest.fixture
def silent_collector() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers: an OTLP
    collector that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def test_a_node_exporting_to_a_collector_that_never_answers_still_stops(
    tmp_path: Path, silent_collector: int
) -> None:
    env = registry_env(tmp_path / "registry")
    traced = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent_collector}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "3600",  # each export waits for an answer that never comes
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with CliProcess("run", GREETER, env=traced, log=tmp_path / "greeter.log") as greeter:
        wait_for_service("greeter", env=env, process=greeter)
        for name in ("a", "b", "c"):
            called = cli("call", "greeter", "Greeter.SayHello", f'{{"name": "{name}"}}', env=env)
            assert called.returncode == 0, called.stderr
        greeter.signal(signal.SIGTERM)
        code = greeter.wait(60)  # without a bound on the flush: an hour per batch
        output = greeter.output()
        assert code == 0, output
        assert "could not export the last spans" in output, output
        assert "greeter stopped" in output, output


def test_an_admin_port_above_65535_is_an_error(tmp_path: Path) -> None:
    env = {**registry_env(tmp_path / "registry"), "MICRO_ADMIN_ADDRESS": "127.0.0.1:99999"}
    result = cli("run", GREETER, env=env, timeout=60)
    assert result.returncode != 0, result.stderr
    assert "MICRO_ADMIN_ADDRESS" in result.stderr, result.stderr
    assert "65535" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_bad_admin_address_leaves_the_commands_that_serve_nothing_working(tmp_path: Path) -> None:
    env = {**registry_env(tmp_path / "registry"), "MICRO_ADMIN_ADDRESS": "bogus"}
    listed = cli("services", env=env)
    assert listed.returncode == 0, listed.stderr
    helped = cli("--help", env=env)
    assert helped.returncode == 0, helped.stderr
    ran = cli("run", GREETER, env=env, timeout=60)
    assert ran.returncode != 0
    assert "MICRO_ADMIN_ADDRESS" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr


def test_an_admin_port_that_is_taken_names_the_admin_endpoint(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {**registry_env(tmp_path / "registry"), "MICRO_ADMIN_ADDRESS": f"127.0.0.1:{port}"}
        result = cli("run", GREETER, env=env, timeout=60)
    assert result.returncode != 0
    assert "admin" in result.stderr, result.stderr
    assert "MICRO_ADMIN_ADDRESS" in result.stderr, result.stderr
    assert "--address" not in result.stderr, result.stderr
    assert_clean(result.stderr)


def test_a_bad_log_variable_points_at_the_variable_not_at_the_options(tmp_path: Path) -> None:
    env = {**registry_env(tmp_path / "registry"), "MICRO_LOG_LEVEL": "loud"}
    result = cli("run", GREETER, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "MICRO_LOG_LEVEL='loud'" in result.stderr, result.stderr
    assert "environment variable" in result.stderr, result.stderr
    assert "--help" not in result.stderr, result.stderr


def test_the_command_list_does_not_break_a_command_s_help_mid_sentence(tmp_path: Path) -> None:
    helped = cli("--help", env=registry_env(tmp_path / "registry"))  # 200 columns: room for one line
    assert helped.returncode == 0, helped.stderr
    assert "read from its nodes' /metrics (admin endpoint), refreshed every --interval" in helped.stdout, (
        helped.stdout
    )
    assert "the admin address (/metrics) of every node in the registry" in helped.stdout, helped.stdout


def _non_loopback_ipv4() -> set[str]:
    """This host's IPv4 addresses other than loopback, as `hostname -I` (Debian's hostname
    package, which the test image has) lists them."""
    listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()
    return {a for a in listed if "." in a and not a.startswith("127.")}


def test_a_wildcard_admin_address_is_advertised_with_an_address_other_hosts_reach(tmp_path: Path) -> None:
    """Debian maps the host name to a loopback address in /etc/hosts: the name's address is
    not what a Prometheus on another host can scrape."""
    env = {**registry_env(tmp_path / "registry"), "MICRO_ADMIN_ADDRESS": "0.0.0.0:0"}
    with CliProcess("run", GREETER, env=env, log=tmp_path / "greeter.log") as greeter:
        records = wait_for_service("greeter", env=env, process=greeter)
        admin = records[0]["nodes"][0]["metadata"]["admin_address"]
        host = admin.rpartition(":")[0]
        expected = _non_loopback_ipv4() or {"127.0.0.1"}
        assert host in expected, (admin, expected)
        with urllib.request.urlopen(f"http://{admin}/health/live", timeout=10) as answer:
            assert answer.status == 200


def test_an_ipv6_admin_address_is_advertised_in_brackets_and_scraped(tmp_path: Path) -> None:
    env = {**registry_env(tmp_path / "registry"), "MICRO_ADMIN_ADDRESS": "[::1]:0"}
    with CliProcess("run", GREETER, env=env, log=tmp_path / "greeter.log") as greeter:
        records = wait_for_service("greeter", env=env, process=greeter)
        admin = records[0]["nodes"][0]["metadata"]["admin_address"]
        assert admin.startswith("[::1]:"), admin
        targets = cli("prometheus-sd", env=env)
        assert targets.returncode == 0, targets.stderr
        assert json.loads(targets.stdout)[0]["targets"] == [admin], targets.stdout + targets.stderr
        with urllib.request.urlopen(f"http://{admin}/health/live", timeout=10) as answer:
            assert answer.status == 200
