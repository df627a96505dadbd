"""`microweave stats SERVICE` against a running service: the numbers match the calls made, a
node that does not answer is a row saying so, and the live view shows calls per second."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import CliProcess, assert_clean, cli, registry_env, wait_for_service
from helpers import free_port
from metrics_kit import BACKEND, Item, Stock, register_stopped_node

from microweave import Client
from microweave.errors import NotFound
from microweave.registry.local import LocalRegistry


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """One backend node running; (environment for the CLI, registry root)."""
    root = tmp_path / "registry"
    env = registry_env(root)
    with CliProcess("run", BACKEND, env=env, log=tmp_path / "backend.log") as process:
        wait_for_service("backend", env=env, process=process)
        yield env, root


async def _calls(root: Path, *, ok: int, missing: int) -> None:
    async with Client(registry=LocalRegistry(root)) as client:
        for i in range(ok):
            await client.call("backend", "Store.Get", Item(name=f"item-{i}"), response=Stock)
        for _ in range(missing):
            with pytest.raises(NotFound):
                await client.call("backend", "Store.Get", Item(name="missing"), response=Stock)


def test_once_json_counts_the_calls_made_and_names_the_nodes_it_could_not_read(
    backend: tuple[dict[str, str], Path],
) -> None:
    env, root = backend
    asyncio.run(_calls(root, ok=7, missing=2))
    # two nodes that cannot be read: one stopped without deregistering, one with no admin endpoint
    dead = f"127.0.0.1:{free_port()}"
    asyncio.run(register_stopped_node(root, "backend", "2.1.0", "backend-gone", admin_address=dead))
    asyncio.run(register_stopped_node(root, "backend", "2.1.0", "backend-no-admin"))

    done = cli("stats", "backend", "--once", "--json", "--interval", "0.3", env=env)
    assert done.returncode == 0, done.stderr
    snapshot = json.loads(done.stdout)
    (row,) = snapshot["endpoints"]
    assert row["endpoint"] == "Store.Get"
    total = row["total"]
    assert (total["calls"], total["errors"], total["errors_by_code"]) == (9, 2, {"404": 2})
    assert total["error_percent"] == pytest.approx(100 * 2 / 9, abs=0.01)
    assert 0 < total["p50_seconds"] <= total["p99_seconds"]
    assert row["window"]["calls"] == 0  # nothing was called between the two reads
    assert snapshot["window_seconds"] > 0
    nodes = {n["node"]: n for n in snapshot["nodes"]}
    assert nodes["backend-gone"]["status"] == "unreachable"
    assert f"cannot connect to http://{dead}/metrics" in nodes["backend-gone"]["error"]
    assert nodes["backend-no-admin"]["status"] == "no admin_address"
    (running,) = (n for n in nodes.values() if n["status"] == "ok")
    assert (running["calls"], running["in_flight"]) == (9, 0)

    table = cli("stats", "backend", "--once", "--interval", "0.3", env=env)
    assert table.returncode == 0, table.stderr
    assert "Store.Get" in table.stdout and "1/3 nodes answered" in table.stdout
    assert "cannot connect" in table.stdout and "no admin_address" in table.stdout
    assert_clean(table.stdout + table.stderr)


def test_live_json_shows_calls_per_second_while_calls_are_made(
    backend: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, root = backend
    with CliProcess(
        "stats", "backend", "--json", "--interval", "0.5", env=env, log=tmp_path / "stats.log"
    ) as stats:
        limit = time.monotonic() + 60
        rate = 0.0
        while rate <= 0:  # calls in batches until a refresh has seen some in its window
            assert time.monotonic() < limit, stats.output()
            asyncio.run(_calls(root, ok=20, missing=0))
            for line in stats.output().splitlines():
                if line.startswith("{"):
                    for row in json.loads(line)["endpoints"]:
                        if row["window"] is not None:
                            rate = max(rate, row["window"]["calls_per_second"])
        stats.signal(signal.SIGTERM)
        assert stats.wait(30) == 0  # a signal is the normal way to stop: exit 0
        assert_clean(stats.output())


def test_an_unknown_service_is_one_line_saying_what_to_check(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    done = cli("stats", "nobody", "--once", env=env)
    assert done.returncode == 1
    assert "service nobody not found" in done.stderr and "microweave services" in done.stderr
    assert_clean(done.stderr)
    bad = cli("stats", "nobody", "--interval", "0", env=env)
    assert bad.returncode == 2
    assert_clean(bad.stderr)
