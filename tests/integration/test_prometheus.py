"""The must-show of observability: a real Prometheus scrapes two running services that
`microweave prometheus-sd` found in the registry, and after some calls (one failing, one
retried) every PromQL expression of the Grafana dashboard returns data through Prometheus's
HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import REPO, CliProcess, cli, registry_env, wait_for_service
from engines.prometheus import PrometheusServer
from helpers import local_nodes
from metrics_kit import BACKEND, FRONTEND, Item, Stock, metric, register_stopped_node, scrape

from microweave import Client
from microweave.errors import NotFound
from microweave.registry.local import LocalRegistry

DASHBOARD = REPO / "deploy" / "grafana" / "microweave.json"

#: Grafana's variables as a user picks them: every service and endpoint, a fixed rate window
#: (Grafana's $__rate_interval is at least four scrape intervals; a minute holds plenty)
VARIABLES = {"$service": ".*", "$endpoint": ".*", "$__rate_interval": "1m"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not know in {expr}"
            found.append((panel["title"], expr))
    return found


def test_the_dashboard_is_grafana_json_with_its_variables_and_a_query_per_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["service"]["definition"].startswith("label_values(")
    assert "$service" in variables["endpoint"]["definition"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    wanted = {
        "micro_request_total",
        "micro_request_duration_seconds_bucket",
        "micro_server_in_flight",
        "micro_client_retries_total",
        "micro_registration_up",
        "micro_registry_errors_total",
        "micro_registry_cache_hits_total",
    }
    assert all(any(name in expr for _, expr in dashboard_queries()) for name in wanted)


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


async def _call_until(condition: Any, call: Any, *, limit: int, what: str) -> int:
    """Make calls until `condition()` holds (checked after each); how many it took."""
    for made in range(1, limit + 1):
        await call()
        if await asyncio.to_thread(condition):
            return made
    raise AssertionError(f"{what} after {limit} calls")


async def test_prometheus_scrapes_services_found_by_prometheus_sd_and_every_dashboard_query_has_data(
    prometheus_server: PrometheusServer, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    env = registry_env(root)
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        CliProcess("run", BACKEND, env=env, log=logs / "backend.log") as backend,
        CliProcess("run", FRONTEND, env=env, log=logs / "frontend.log") as frontend,
    ):
        wait_for_service("backend", env=env, process=backend)
        wait_for_service("frontend", env=env, process=frontend)
        # a backend node that was killed before it deregistered: no admin endpoint, nobody
        # at its address (calls to it are not delivered, so the frontend's client retries)
        await register_stopped_node(root, "backend", "2.1.0", "backend-stopped")

        done = await asyncio.to_thread(
            cli, "prometheus-sd", "--output", str(prometheus_server.targets_file), env=env
        )
        assert done.returncode == 0, done.stderr
        assert "skipped node backend-stopped of backend: no admin_address" in done.stderr
        groups = json.loads(prometheus_server.targets_file.read_text())
        by_service = {g["labels"]["microweave_service"]: g for g in groups}
        assert sorted(by_service) == ["backend", "frontend"]
        admin = {name: g["targets"][0] for name, g in by_service.items()}
        await asyncio.to_thread(prometheus_server.wait_targets, set(admin.values()))

        async with Client(registry=LocalRegistry(root)) as client:

            async def fetch(name: str = "apple") -> None:
                reply = await client.call("frontend", "Front.Fetch", Item(name=name), response=Stock)
                assert reply.count == len(name)

            for _ in range(20):
                await fetch()
            with pytest.raises(NotFound):  # fails in the backend, and in the frontend that relays it
                await fetch("missing")
            await _call_until(
                lambda: (
                    metric(scrape(admin["frontend"]), "micro_client_retries_total", service="backend") > 0
                ),
                fetch,
                limit=200,
                what="the frontend's client never retried on the stopped backend node",
            )
            # a registry outage for the backend: its directory in the local registry is a file
            # for a moment, so its heartbeats (one a second) fail; then it registers again
            directory = root / "backend"
            os.rename(directory, tmp_path / "backend-away")
            directory.write_text("not a directory")
            try:
                await _wait(
                    lambda: (
                        metric(scrape(admin["backend"]), "micro_registry_errors_total", operation="register")
                        > 0
                    ),
                    what="the backend to count a failed registration",
                )
            finally:
                directory.unlink()
            await _wait(lambda: local_nodes(root, "backend"), what="the backend to register again")

            failed = metric(
                scrape(admin["backend"]), "micro_request_total", service="backend", status="fail", code="404"
            )
            assert failed == 1

            # traffic while Prometheus is asked: a rate (and so a quantile) needs the counters
            # to move between two of its samples inside the window; a series first scraped
            # after the calls above would show none
            async def traffic() -> None:
                while True:
                    await fetch()
                    await asyncio.sleep(0.05)

            calls = asyncio.create_task(traffic())
            try:
                missing = await _wait_for_queries(prometheus_server, dashboard_queries(), timeout=60.0)
            finally:
                calls.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await calls
            assert not missing, (
                "dashboard queries without data:\n" + "\n".join(missing) + _scrapes(prometheus_server)
            )

        # the metrics' own `service` label reached Prometheus as it is (no exported_service):
        # the frontend's client series name the callee, its target labels name the frontend
        client_series = prometheus_server.query('micro_client_request_total{service="backend"}')
        assert {s["metric"]["microweave_service"] for s in client_series} == {"frontend"}
        assert prometheus_server.query('{exported_service!=""}') == []
        up = prometheus_server.query("up")
        assert sorted((s["metric"]["microweave_service"], s["value"][1]) for s in up) == [
            ("backend", "1"),
            ("frontend", "1"),
        ]


async def _wait(condition: Any, *, what: str, timeout: float = 30.0) -> None:
    limit = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > limit:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.2)


async def _wait_for_queries(
    prometheus: PrometheusServer, queries: list[tuple[str, str]], *, timeout: float
) -> list[str]:
    """Poll until every query returns at least one sample that is a number; for those still
    without data when the time is up, the panel, the query and what Prometheus answered."""
    limit = time.monotonic() + timeout
    pending = {(t, e): [] for t, e in queries}
    while pending:
        for key in list(pending):
            result = await asyncio.to_thread(prometheus.query, key[1])
            if _has_data(result):
                del pending[key]
            else:
                pending[key] = result
        if not pending or time.monotonic() > limit:
            break
        await asyncio.sleep(1.0)
    return [f"{t}: {e}\n  -> {json.dumps(r)[:500]}" for (t, e), r in pending.items()]


def _scrapes(prometheus: PrometheusServer) -> str:
    """What Prometheus holds, for a failure message: its targets' health and the last samples
    of the servers' request counters."""
    targets = [(t["scrapeUrl"], t["health"], t["lastError"], t["lastScrape"]) for t in prometheus.targets()]
    samples = prometheus.api("query", query='micro_request_total{status="success"}[2m]')["result"]
    shown = [(s["metric"].get("service"), s["metric"].get("endpoint"), s["values"][-8:]) for s in samples]
    return f"\ntargets: {targets}\nsamples: {json.dumps(shown)[:3000]}"
