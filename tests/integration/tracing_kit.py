"""What the tracing tests share: a global TracerProvider for one test, an OTLP/HTTP receiver
that decodes what real exporters send, and the three-process call chain A -> B -> C with the
checks its trace must pass, whoever collected it (our receiver or a real collector).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from helpers import ServiceProcesses, async_wait_until
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.trace import TracerProvider
from opentelemetry.util._once import Once

SERVICES = Path(__file__).parent / "services"


@contextlib.contextmanager
def global_tracer_provider(provider: TracerProvider) -> Iterator[None]:
    """Set `provider` as the process's global one for a test, and put the old one back after:
    the API sets it once per process (OpenTelemetry's own test utilities reset it the same way)."""
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


@dataclasses.dataclass(frozen=True)
class ExportedSpan:
    """One span as it arrived at a collector, whichever collector it was."""

    service: str  # the resource's service.name
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str  # "" for a root span
    name: str
    kind: str  # server, client, internal, producer, consumer
    status: str  # unset, ok, error
    attributes: Mapping[str, str]


# -- an OTLP/HTTP receiver --------------------------------------------------------------------

_KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUSES = {0: "unset", 1: "ok", 2: "error"}


def _value(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


class OtlpReceiver:
    """Takes `POST /v1/traces` (protobuf, gzip or not) as a collector does, and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"expected protobuf, not {request.content_type}")
        export = ExportTraceServiceRequest.FromString(body)
        self.requests += 1
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ExportedSpan(
                            service=resource.get("service.name", ""),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=_KINDS.get(span.kind, str(span.kind)),
                            status=_STATUSES.get(span.status.code, str(span.status.code)),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                        )
                    )
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")


# -- the three-process chain ------------------------------------------------------------------


def tracing_env(endpoint: str, **extra: str) -> dict[str, str]:
    """How a process is told to trace: the standard variables only. Spans go out every 100 ms."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", **extra}


@dataclasses.dataclass
class ChainRun:
    trace_id: str
    path: list[str]
    code: int


async def run_chain(processes: ServiceProcesses, env: Mapping[str, str]) -> ChainRun:
    """C, then B calling C over gRPC, as service processes; then A (traced_caller.py) calling B
    over tcp twice, the second call failing in C. A exits when done (flushing its spans)."""
    processes.start("traced_node.py", "--name", "chain-c", name="chain-c", env=env)
    processes.start(
        "traced_node.py",
        "--name",
        "chain-b",
        "--next",
        "chain-c",
        "--transport",
        "grpc",
        name="chain-b",
        env=env,
    )
    caller = processes.start("traced_caller.py", "chain-b", "tcp", name="chain-a", env=env, wait=False)

    async def finished() -> bool:  # without blocking the loop: a receiver here must answer its export
        return not caller.alive()

    await async_wait_until(finished, timeout=60, what="the caller process to finish")
    code = caller.wait(timeout=1)
    output = caller.output()
    assert code == 0, output
    last = [line for line in output.splitlines() if line.startswith("{")][-1]
    result: dict[str, Any] = json.loads(last)
    return ChainRun(result["trace_id"], result["path"], result["code"])


async def wait_for_chain(spans: Any, trace_id: str, *, what: str) -> list[ExportedSpan]:
    """The chain's nine spans once they have all arrived (`spans()` returns what arrived so far)."""

    async def arrived() -> list[ExportedSpan] | None:
        found = [s for s in spans() if s.trace_id == trace_id]
        return found if len(found) >= 9 else None

    found: list[ExportedSpan] = await async_wait_until(arrived, timeout=60, what=what)
    return found


def assert_chain(spans: list[ExportedSpan], run: ChainRun) -> None:
    """One trace: A's root span; under it, per call, A's client span -> B's server span -> B's
    client span -> C's server span. The failing call is an error at every hop, the good one at none."""
    assert run.path == ["chain-b", "chain-c"] and run.code == 500, run
    assert len(spans) == 9, [(s.service, s.name, s.kind) for s in spans]
    assert {s.trace_id for s in spans} == {run.trace_id}
    by_id = {s.span_id: s for s in spans}
    [root] = [s for s in spans if not s.parent_id]
    assert (root.service, root.name, root.kind) == ("caller", "checkout", "internal")

    def children(parent: ExportedSpan) -> list[ExportedSpan]:
        return [s for s in spans if s.parent_id == parent.span_id]

    calls = children(root)
    assert len(calls) == 2, calls
    statuses = []
    for a_client in calls:
        assert (a_client.service, a_client.name, a_client.kind) == ("caller", "chain-b/Chain.Step", "client")
        assert a_client.attributes["microweave.transport"] == "tcp"
        [b_server] = children(a_client)
        assert (b_server.service, b_server.name, b_server.kind) == ("chain-b", "chain-b/Chain.Step", "server")
        [b_client] = children(b_server)
        assert (b_client.service, b_client.name, b_client.kind) == ("chain-b", "chain-c/Chain.Step", "client")
        assert b_client.attributes["rpc.system"] == "grpc"
        [c_server] = children(b_client)
        assert (c_server.service, c_server.name, c_server.kind) == ("chain-c", "chain-c/Chain.Step", "server")
        assert children(c_server) == []
        hops = [a_client, b_server, b_client, c_server]
        codes = {s.attributes["rpc.response.status_code"] for s in hops}
        statuses.append(({s.status for s in hops}, codes))
    assert sorted(statuses, key=str) == sorted([({"unset"}, {"200"}), ({"error"}, {"500"})], key=str)
    assert all(s.span_id in by_id for s in spans)
