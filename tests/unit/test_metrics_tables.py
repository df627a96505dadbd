"""microweave.metrics: the bounded tables, the histogram's buckets, and an exposition that both
Prometheus formats parse. Calls run through a real server pipeline, in process (no network);
every test uses a service name of its own, since the tables are the process's."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from metrics_samples import samples, value
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from microweave.errors import BadRequest, MicroError
from microweave.metrics import BUCKETS, CallTable, connections
from microweave.middleware.metrics import ServerMetrics
from microweave.server import Router
from microweave.server.pipeline import Pipeline


class Req(msgspec.Struct):
    name: str


class Echo:
    async def echo(self, req: Req) -> Req:
        return req

    async def refuse(self, req: Req) -> Req:
        raise BadRequest("no")

    async def count(self, req: Req) -> AsyncIterator[Req]:
        for _ in range(3):
            yield req


def pipeline_of(service: str) -> Pipeline:
    router = Router(package=service)
    router.add_handler(Echo())
    return Pipeline(router, middleware=[ServerMetrics(service)])


def test_a_client_table_is_bounded_past_its_cap() -> None:
    table = CallTable("client", pairs=3)
    for i in range(3):
        assert table.labels("svc", f"E.{i}") == ("svc", f"E.{i}")
    # past the cap: a known service keeps its name, a new one does not
    assert table.labels("svc", "E.new") == ("svc", "other")
    assert table.labels("stranger", "E.x") == ("other", "other")
    assert table.labels("svc", "E.1") == ("svc", "E.1")  # pairs seen before the cap stay
    for i in range(500):
        table.get("svc", f"Many.{i}", "tcp").ok[0] += 1
        table.get(f"svc-{i}", "E", "tcp")
        table.gauge(f"svc-{i}").value += 1
        table.retried(f"svc-{i}", f"R.{i}")
    assert len(table.series) == 2  # (svc, other, tcp) and (other, other, tcp)
    assert table.series[("svc", "other", "tcp")].ok[0] == 500
    assert set(table.in_flight) == {"other"} and table.in_flight["other"].value == 500
    assert set(table.retries) == {("other", "other")} and table.retries[("other", "other")].value == 500


def test_a_duration_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    table = CallTable("server")
    series = table.get("svc", "E", "tcp")
    series.failed(500, BUCKETS[0])  # le="0.0005" includes 0.0005 itself
    series.failed(500, BUCKETS[0] * 1.01)
    series.failed(404, 11.0)  # past the highest bound: only +Inf
    assert series.fail is not None
    assert series.fail[0] == 1 and series.fail[1] == 1 and series.fail[-1] == 1 and sum(series.fail) == 3
    assert series.codes == {500: 2, 404: 1}


async def test_calls_through_a_pipeline_show_as_cumulative_histograms() -> None:
    service = f"unit-{uuid.uuid4().hex[:8]}"
    pipeline = pipeline_of(service)
    body = msgspec.json.encode(Req(name="x"))
    for _ in range(4):
        await pipeline.unary(pipeline.call(f"/{service}.Echo/Echo", body, transport="test"))
    with pytest.raises(BadRequest):
        await pipeline.unary(pipeline.call(f"/{service}.Echo/Refuse", body, transport="test"))
    with pytest.raises(MicroError) as unknown:
        await pipeline.unary(pipeline.call("/not/served", body, transport="test"))
    assert unknown.value.code == 501
    got = samples()
    ok = {"service": service, "endpoint": "Echo.Echo", "transport": "test"}
    assert value(got, "micro_request_total", **ok, status="success", code="200") == 4
    assert value(got, "micro_request_total", **ok, status="fail", code="400") is None
    refused = {"service": service, "endpoint": "Echo.Refuse", "transport": "test"}
    assert value(got, "micro_request_total", **refused, status="fail", code="400") == 1
    assert value(got, "micro_request_total", service=service, endpoint="unknown", transport="test",
                 status="fail", code="501") == 1  # fmt: skip
    buckets = [
        value(got, "micro_request_duration_seconds_bucket", **ok, status="success", le=le)
        for le in [*(str(float(b)) for b in BUCKETS), "+Inf"]
    ]
    assert all(b is not None for b in buckets), buckets
    assert buckets == sorted(buckets)  # cumulative  # type: ignore[type-var]
    assert buckets[-1] == 4
    assert value(got, "micro_request_duration_seconds_count", **ok, status="success") == 4
    total = value(got, "micro_request_duration_seconds_sum", **ok, status="success")
    assert total is not None and total > 0
    # every series of this service: nothing else was made up along the way
    mine = {dict(labels)["endpoint"] for (name, labels) in got if dict(labels).get("service") == service}
    assert mine == {"Echo.Echo", "Echo.Refuse", "unknown"}


async def test_server_streams_count_their_messages() -> None:
    service = f"unit-{uuid.uuid4().hex[:8]}"
    pipeline = pipeline_of(service)
    body = msgspec.json.encode(Req(name="x"))
    replies = [
        r async for r in pipeline.stream(pipeline.call(f"/{service}.Echo/Count", body, transport="test"))
    ]
    assert len(replies) == 3
    got = samples()
    at = {"service": service, "endpoint": "Echo.Count", "side": "server"}
    assert value(got, "micro_stream_messages_total", **at, direction="sent") == 3
    assert value(got, "micro_stream_messages_total", **at, direction="received") == 1
    assert value(got, "micro_request_total", service=service, endpoint="Echo.Count", transport="test",
                 status="success", code="200") == 1  # fmt: skip


def test_both_exposition_formats_parse_with_every_family() -> None:
    """Every family parses in both formats (OpenMetrics refuses a counter family named like a
    gauge: the opened-connections counter is `micro_transport_connections_opened`)."""
    connections("tcp", "server")  # at least one sample in each transport family
    names = {family.name for family in text_string_to_metric_families(generate_latest().decode())}
    openmetrics = list(parse_openmetrics(generate_openmetrics(REGISTRY).decode()))
    for family in (
        "micro_request", "micro_request_duration_seconds", "micro_server_in_flight", "micro_stream_messages",
        "micro_client_request", "micro_client_request_duration_seconds", "micro_client_in_flight",
        "micro_client_retries", "micro_registry_lookups", "micro_registry_cache_hits",
        "micro_registry_errors", "micro_registration_up", "micro_transport_connections",
        "micro_transport_connections_opened",
    ):  # fmt: skip
        assert family in names, family
        assert any(f.name == family for f in openmetrics), family
