"""`microweave stats`' arithmetic: reading a node's metrics page, windows between two reads,
quantiles from histogram buckets (as PromQL's histogram_quantile), and scraping over HTTP."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from microweave.cli.admin_nodes import AdminNode, admin_address_of, split_admin_nodes
from microweave.cli.node_metrics import NodeMetrics, add, parse_node_metrics, quantile, since
from microweave.cli.scrape import ScrapeFailed, fetch_metrics
from microweave.cli.stats import NodeRead, render, summarize
from microweave.registry import Node, Service

BOUNDS = ["0.001", "0.01", "0.1", "1.0", "+Inf"]


class Page(Collector):
    """A node's metrics in the shape and names the framework exports (docs/observability.md)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str, str, float]] = []
        self.durations: list[tuple[str, str, str, str, list[float]]] = []
        self.in_flight: dict[str, float] = {}

    def collect(self):  # type: ignore[no-untyped-def]
        total = CounterMetricFamily(
            "micro_request", "calls", labels=["service", "endpoint", "status", "code", "transport"]
        )
        for service, endpoint, status, code, transport, value in self.calls:
            total.add_metric([service, endpoint, status, code, transport], value)
        duration = HistogramMetricFamily(
            "micro_request_duration_seconds",
            "durations",
            labels=["service", "endpoint", "status", "transport"],
        )
        for service, endpoint, status, transport, cumulative in self.durations:
            duration.add_metric(
                [service, endpoint, status, transport], list(zip(BOUNDS, cumulative, strict=True)), 0.0
            )
        gauge = GaugeMetricFamily("micro_server_in_flight", "now", labels=["service"])
        for service, value in self.in_flight.items():
            gauge.add_metric([service], value)
        yield total
        yield duration
        yield gauge

    def text(self) -> str:
        registry = CollectorRegistry()
        registry.register(self)
        return generate_latest(registry).decode()


def test_a_page_is_read_per_endpoint_summed_over_transports_and_statuses() -> None:
    page = Page()
    page.calls = [
        ("greeter", "Greeter.Hello", "success", "200", "tcp", 7),
        ("greeter", "Greeter.Hello", "success", "200", "grpc", 3),
        ("greeter", "Greeter.Hello", "fail", "500", "tcp", 2),
        ("greeter", "Greeter.Hello", "fail", "404", "grpc", 1),
        ("greeter", "Greeter.Other", "success", "200", "tcp", 5),
        ("caller", "Caller.Relay", "success", "200", "tcp", 99),  # another service in the process
    ]
    page.durations = [
        ("greeter", "Greeter.Hello", "success", "tcp", [1, 4, 7, 7, 7]),
        ("greeter", "Greeter.Hello", "fail", "tcp", [0, 0, 2, 2, 2]),
        ("caller", "Caller.Relay", "success", "tcp", [99, 99, 99, 99, 99]),
    ]
    page.in_flight = {"greeter": 2, "caller": 5}
    found = parse_node_metrics(page.text(), "greeter")
    assert found.in_flight == 2
    assert set(found.endpoints) == {"Greeter.Hello", "Greeter.Other"}
    hello = found.endpoints["Greeter.Hello"]
    assert (hello.calls, hello.errors) == (13, 3)
    assert hello.codes == {"500": 2, "404": 1}
    assert hello.buckets == {0.001: 1, 0.01: 4, 0.1: 9, 1.0: 9, math.inf: 9}
    assert found.calls() == 18


def test_a_page_that_is_not_prometheus_text_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_node_metrics('micro_request_total{service="x" 1\n', "x")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # all in the first bucket: interpolated from 0 up to its bound
        (0.5, {0.1: 10, math.inf: 10}, 0.05),
        # the rank falls in the second bucket: 10 below, 10 inside
        (0.75, {0.1: 10, 0.2: 20, math.inf: 20}, 0.15),
        # past the highest finite bound: that bound (PromQL does the same)
        (0.99, {0.1: 10, 0.2: 10, math.inf: 20}, 0.2),
        (0.5, {0.1: 0, math.inf: 0}, None),
        (0.5, {}, None),
    ],
)
def test_quantiles_are_interpolated_inside_buckets_as_promql_does(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    got = quantile(q, buckets)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def _node(calls: float, errors: float, buckets: dict[float, float]) -> NodeMetrics:
    from microweave.cli.node_metrics import EndpointCounts

    return NodeMetrics(endpoints={"E": EndpointCounts(calls=calls, errors=errors, buckets=buckets)})


def test_a_window_is_the_difference_and_a_restart_counts_from_zero() -> None:
    before = _node(10, 1, {0.1: 8, math.inf: 10})
    after = _node(30, 4, {0.1: 20, math.inf: 30})
    window = since(after, before)
    assert window.endpoints["E"].calls == 20
    assert window.endpoints["E"].errors == 3
    assert window.endpoints["E"].buckets == {0.1: 12, math.inf: 20}
    restarted = _node(5, 0, {0.1: 5, math.inf: 5})
    assert since(restarted, before).endpoints["E"].calls == 5
    assert since(after, None) is after
    both = add([before, after])
    assert both.endpoints["E"].calls == 40
    assert both.endpoints["E"].buckets[math.inf] == 40


def _read(node: str, at: float, metrics: NodeMetrics | None, error: str = "") -> NodeRead:
    admin = None if error.startswith("no admin") else "127.0.0.1:1"
    return NodeRead(AdminNode("svc", "1.0", node, admin, error if admin is None else ""), at, metrics, error)


def test_a_snapshot_sums_nodes_rates_per_node_window_and_names_nodes_that_failed() -> None:
    first = {"a": _read("a", 100.0, _node(10, 0, {0.01: 10, math.inf: 10}))}
    now = [
        _read("a", 102.0, _node(30, 2, {0.01: 28, math.inf: 30})),  # 20 calls in 2 s
        _read("b", 102.0, _node(4, 0, {0.01: 4, math.inf: 4})),  # new: totals only
        _read("c", 102.0, None, "cannot connect to http://127.0.0.1:1/metrics: refused"),
        _read("d", 102.0, None, "no admin_address in its metadata"),
    ]
    snapshot = summarize("svc", "<registry>", now, first)
    (row,) = snapshot["endpoints"]
    assert row["total"]["calls"] == 34
    assert row["total"]["errors"] == 2
    assert row["window"]["calls"] == 20
    assert row["window"]["calls_per_second"] == pytest.approx(10.0)
    assert row["window"]["error_percent"] == pytest.approx(10.0)
    assert snapshot["window_seconds"] == pytest.approx(2.0)
    statuses = {n["node"]: n["status"] for n in snapshot["nodes"]}
    assert statuses == {"a": "ok", "b": "ok", "c": "unreachable", "d": "no admin_address"}
    assert "refused" in snapshot["nodes"][2]["error"]
    render(snapshot)  # renders without a window too
    assert summarize("svc", "<registry>", now, {})["endpoints"][0]["window"] is None


@pytest.mark.parametrize(
    ("value", "usable"),
    [
        ("127.0.0.1:9100", True),
        ("[::1]:9100", True),
        ("node-1.example:9100", True),
        ("", False),
        ("127.0.0.1", False),
        ("127.0.0.1:0", False),
        ("127.0.0.1:99999", False),
        ("0.0.0.0:9100", False),
        ("::1:9100", False),  # IPv6 without brackets is ambiguous
        ("evil.example/x?:9100", False),
        ("user@host:9100", False),
    ],
)
def test_only_a_plain_host_and_port_is_taken_as_an_admin_address(value: str, usable: bool) -> None:
    address, reason = admin_address_of({"admin_address": value} if value else {})
    assert (address is not None) is usable
    assert bool(reason) is not usable


def test_nodes_are_listed_once_each_and_in_order() -> None:
    node = Node("b-1", "127.0.0.1:1", {"admin_address": "127.0.0.1:2"})
    records = [
        Service("b", "2", nodes=[node]),
        Service("b", "2", nodes=[node]),
        Service("a", "1", nodes=[Node("a-1", "127.0.0.1:3")]),
    ]
    nodes = split_admin_nodes(records)
    assert [(n.service, n.node, n.admin_address) for n in nodes] == [
        ("a", "a-1", None),
        ("b", "b-1", "127.0.0.1:2"),
    ]


@pytest.fixture
async def metrics_server() -> AsyncIterator[str]:
    """A real HTTP server on a free port with a few behaviours, by path of its address."""

    async def page(request: web.Request) -> web.StreamResponse:
        kind = request.headers.get("X-Kind", "")
        return web.Response(text="x", status=503) if kind else web.Response(text="ok_total 1\n")

    app = web.Application()
    app.router.add_get("/metrics", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_page_is_fetched_and_a_bad_status_is_a_reason(metrics_server: str) -> None:
    async with aiohttp.ClientSession() as session:
        assert await fetch_metrics(session, metrics_server, timeout=5) == "ok_total 1\n"
    async with aiohttp.ClientSession(headers={"X-Kind": "bad"}) as session:
        with pytest.raises(ScrapeFailed, match="HTTP 503"):
            await fetch_metrics(session, metrics_server, timeout=5)


async def test_a_page_past_the_size_limit_is_refused(metrics_server: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ScrapeFailed, match="more than 4 bytes"):
            await fetch_metrics(session, metrics_server, timeout=5, max_body=4)


async def test_a_closed_port_and_a_silent_peer_are_reasons_not_tracebacks() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ScrapeFailed, match="cannot connect"):
            await fetch_metrics(session, f"127.0.0.1:{port}", timeout=5)

    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ScrapeFailed, match=r"no answer .* within 0\.3 s"):
                await fetch_metrics(session, f"127.0.0.1:{port}", timeout=0.3)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
