"""`microweave prometheus-sd` against running services: the targets it prints or writes, and
with --watch the file following nodes that start and stop."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from cli_helpers import CliProcess, assert_clean, cli, registry_env, wait_for_service
from metrics_kit import BACKEND, FRONTEND, register_stopped_node


def _admin_addresses(records: list[dict[str, Any]]) -> set[str]:
    return {
        n["metadata"]["admin_address"]
        for r in records
        for n in r["nodes"]
        if "admin_address" in n["metadata"]
    }


def _targets(path: Path) -> set[str] | None:
    """The addresses in the targets file (None before it exists)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return {t for group in json.loads(text) for t in group["targets"]}  # a partial file would not parse


def _wait_targets(path: Path, expected: set[str], process: CliProcess, timeout: float = 30.0) -> None:
    limit = time.monotonic() + timeout
    while _targets(path) != expected:
        assert process.alive(), process.output()
        if time.monotonic() > limit:
            raise AssertionError(f"{path} holds {_targets(path)}, not {expected}:\n{process.output()}")
        time.sleep(0.1)


def _wait_admin_addresses(env: dict[str, str], name: str, count: int, process: CliProcess) -> set[str]:
    limit = time.monotonic() + 30
    while len(found := _admin_addresses(wait_for_service(name, env=env, process=process))) != count:
        assert time.monotonic() < limit, f"{name} has {found}, not {count} nodes:\n{process.output()}"
        time.sleep(0.1)
    return found


def test_prints_a_group_per_node_and_filters_by_service(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    with (
        CliProcess("run", BACKEND, env=env, log=tmp_path / "backend.log") as backend,
        CliProcess("run", FRONTEND, env=env, log=tmp_path / "frontend.log") as frontend,
    ):
        backends = wait_for_service("backend", env=env, process=backend)
        frontends = wait_for_service("frontend", env=env, process=frontend)
        asyncio.run(register_stopped_node(tmp_path / "registry", "frontend", "1.0.0", "frontend-old"))

        every = cli("prometheus-sd", env=env)
        assert every.returncode == 0, every.stderr
        groups = json.loads(every.stdout)
        assert {t for g in groups for t in g["targets"]} == _admin_addresses(backends + frontends)
        (node,) = backends[0]["nodes"]
        assert {
            "targets": [node["metadata"]["admin_address"]],
            "labels": {
                "microweave_service": "backend",
                "microweave_version": "2.1.0",
                "microweave_node": node["id"],
            },
        } in groups
        assert "skipped node frontend-old of frontend: no admin_address in its metadata" in every.stderr

        only = cli("prometheus-sd", "--service", "backend", "--service", "nobody", env=env)
        assert only.returncode == 0, only.stderr
        assert [g["labels"]["microweave_service"] for g in json.loads(only.stdout)] == ["backend"]
        assert "frontend-old" not in only.stderr
        assert "note: no node of nobody in <LocalRegistry" in only.stderr


def test_watch_rewrites_the_file_as_nodes_start_and_stop(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    targets = tmp_path / "sd" / "microweave.json"
    targets.parent.mkdir()
    with CliProcess(
        "prometheus-sd", "--watch", "--output", str(targets), env=env, log=tmp_path / "sd.log"
    ) as sd:
        _wait_targets(targets, set(), sd)  # no service yet: an empty list, written at once
        with CliProcess("run", BACKEND, env=env, log=tmp_path / "backend-1.log") as first:
            one = _admin_addresses(wait_for_service("backend", env=env, process=first))
            _wait_targets(targets, one, sd)
            with CliProcess("run", BACKEND, env=env, log=tmp_path / "backend-2.log") as second:
                two = _wait_admin_addresses(env, "backend", 2, second)
                _wait_targets(targets, two, sd)
                # a node that cannot be scraped is left out, and said so once
                asyncio.run(
                    register_stopped_node(tmp_path / "registry", "backend", "2.1.0", "backend-killed")
                )
                _wait_for_text(sd, "skipped node backend-killed of backend")
                assert _targets(targets) == two
            # the second stopped (SIGTERM: it deregistered): its target goes
            _wait_targets(targets, one, sd)
        _wait_targets(targets, set(), sd)
        sd.signal(signal.SIGTERM)
        assert sd.wait(30) == 0
        log = sd.output()
    assert log.count("skipped node backend-killed") == 1, log
    assert "wrote 2 targets of 1 service" in log and log.rstrip().endswith("stopped"), log
    assert_clean(log)
    assert sorted(p.name for p in targets.parent.iterdir()) == ["microweave.json"]  # no temporary left


def _wait_for_text(process: CliProcess, text: str, timeout: float = 30.0) -> None:
    limit = time.monotonic() + timeout
    while text not in process.output():
        assert process.alive(), process.output()
        assert time.monotonic() < limit, f"{text!r} not in:\n{process.output()}"
        time.sleep(0.1)


def test_usage_mistakes_are_one_line_and_an_exit_code(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    watch = cli("prometheus-sd", "--watch", env=env)
    assert watch.returncode == 2
    assert "--watch needs --output FILE" in watch.stderr
    nowhere = cli("prometheus-sd", "--output", str(tmp_path / "missing" / "t.json"), env=env)
    assert nowhere.returncode == 1
    assert "cannot write" in nowhere.stderr and "existing directory" in nowhere.stderr
    zero = cli(
        "prometheus-sd", "--watch", "--output", str(tmp_path / "t.json"), "--min-interval", "0", env=env
    )
    assert zero.returncode == 2
    for done in (watch, nowhere, zero):
        assert_clean(done.stderr)
