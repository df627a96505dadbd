"""The README's examples, run as a user would: against a real service process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from cli_helpers import REPO, CliProcess, cli, registry_env, wait_for_service

GREETER = "examples/greeter/service.py"
PROXY_CLIENT = REPO / "examples/greeter/proxy_client.py"


def test_proxy_client_calls_the_greeter(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    with CliProcess("run", GREETER, env=env, log=tmp_path / "run.log") as process:
        wait_for_service("greeter", env=env, process=process)
        ran = subprocess.run(
            [sys.executable, str(PROXY_CLIENT), "Ada"],
            env=env, cwd=PROXY_CLIENT.parent, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["Hello Ada", "Hello A", "Hello d"]


def test_proxy_client_passes_mypy_strict() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(PROXY_CLIENT)],
        cwd=PROXY_CLIENT.parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Success" in checked.stdout


def test_mypy_sees_a_wrong_proxy_call(tmp_path: Path) -> None:
    """The check above can fail: a call with the wrong type is an error for mypy."""
    wrong = PROXY_CLIENT.parent / f"_wrong_{tmp_path.name}.py"
    wrong.write_text(
        "from microweave import Client\nfrom service import Greeter\n\n\n"
        "async def main(client: Client) -> None:\n"
        "    await client.proxy(Greeter, service='greeter').say_hello('not a request')\n"
    )
    try:
        checked = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(wrong)],
            cwd=PROXY_CLIENT.parent, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        wrong.unlink()
    assert checked.returncode == 1 and "arg-type" in checked.stdout, checked.stdout


def _readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_deadlines_example_runs_as_written() -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _readme_block("### 10. Deadlines and metadata")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    pong, trailers = ran.stdout.splitlines()
    assert pong.startswith("Pong(text='hi', user='ada', seconds_left=") and "seconds_left=0" not in pong
    assert trailers == "{'x-served-by': 'pinger'}"


async def test_readme_middleware_example_wraps_every_call() -> None:
    from microweave.testing import capture_logs, serve

    namespace: dict[str, Any] = {}
    exec(_readme_block("### 11. Middleware"), namespace)
    service = namespace["service"]

    @service.handler
    class Echo:
        async def echo(self, req: dict[str, Any]) -> dict[str, Any]:
            return req

    with capture_logs() as logs:
        for transport in ("local", "tcp", "grpc"):
            async with serve(service, transport=transport) as client:
                assert await client.call("greeter", "Echo.Echo", {"n": 1}) == {"n": 1}
    timed = [e["message"] for e in logs if e["message"].startswith("Echo.Echo via")]
    assert [m.split()[2] for m in timed] == ["local", "tcp", "grpc"]


def test_readme_events_example_runs_as_written(tmp_path: Path) -> None:
    """direct://, the default: the subscriber is found in the (local) registry and the event
    delivered over the transports; publish returns once the subscriber handled it."""
    ran = subprocess.run(
        [sys.executable, "-c", _readme_block("### 9. Events")],
        env=registry_env(tmp_path / "registry"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["welcome ada@example.com (delivery 1)"]


def _readme_sh_block(heading: str) -> list[str]:
    """The shell commands of a README section's first ```sh block, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = text.split(heading, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines() if line]


def test_readme_observability_commands_work_as_written(tmp_path: Path) -> None:
    """Section 12's commands against a real greeter: its admin port (on a free port instead of
    9090), ready, its metrics, `stats` (once) and `prometheus-sd` (written once)."""
    import json
    import shlex
    import urllib.request

    from engines import free_port

    run, ready, metrics, stats, sd = _readme_sh_block("### 12. Observability")
    port = str(free_port())
    words = shlex.split(run.replace("9090", port))
    env = registry_env(tmp_path / "registry")
    env.update(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    assert words[-3:] == ["microweave", "run", GREETER] and env["MICRO_LOG_FORMAT"] == "json"
    with CliProcess("run", GREETER, env=env, log=tmp_path / "run.log") as process:
        wait_for_service("greeter", env=env, process=process)
        assert cli("call", "greeter", "Greeter.SayHello", '{"name": "Ada"}', env=env).returncode == 0
        assert ready.startswith("curl -s localhost:9090/health/ready")
        with urllib.request.urlopen(f"http://localhost:{port}/health/ready", timeout=10) as answer:
            assert json.load(answer) == {"status": "up"}
        assert metrics.startswith("curl -s localhost:9090/metrics | grep micro_request_total")
        with urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=10) as answer:
            lines = [ln for ln in answer.read().decode().splitlines() if ln.startswith("micro_request_total")]
        assert any('endpoint="Greeter.SayHello"' in ln and ln.endswith(" 1.0") for ln in lines), lines
        assert shlex.split(stats) == ["microweave", "stats", "greeter"]
        shown = cli("stats", "greeter", "--once", "--json", "--interval", "0.5", env=env)
        assert shown.returncode == 0, shown.stderr
        assert "Greeter.SayHello" in shown.stdout
        sd_words = shlex.split(sd)
        assert sd_words[:2] == ["microweave", "prometheus-sd"] and "--watch" in sd_words
        targets = tmp_path / "targets.json"
        once = [str(targets) if w == "targets.json" else w for w in sd_words[1:] if w != "--watch"]
        written = cli(*once, env=env)  # once, not watching
        assert written.returncode == 0, written.stderr
        assert json.loads(targets.read_text())[0]["targets"] == [f"127.0.0.1:{port}"]
    # every line it logged is JSON (MICRO_LOG_FORMAT=json), the access line among them
    logged = [json.loads(ln) for ln in (tmp_path / "run.log").read_text().splitlines() if ln.strip()]
    assert any(r["logger"] == "microweave.access" for r in logged), logged
