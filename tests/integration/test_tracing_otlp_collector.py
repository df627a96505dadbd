"""The three-process chain A -> B -> C traced into a real OpenTelemetry collector (built from its
Go modules by scripts/peers/otelcol), over OTLP/gRPC and OTLP/HTTP; the spans are read back
from the collector's debug exporter, which prints every span it received.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from engines import Engine, free_port
from helpers import REPO, ServiceProcesses
from tracing_kit import ExportedSpan, assert_chain, run_chain, tracing_env, wait_for_chain

OTELCOL_VERSION = "0.165.0"

CONFIG = """
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc}
      http:
        endpoint: 127.0.0.1:{http}
exporters:
  debug:
    verbosity: detailed
service:
  telemetry:
    metrics:
      level: none
    logs:
      encoding: console
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
"""


class Collector:
    def __init__(self, engine: Engine, grpc_port: int, http_port: int) -> None:
        self.engine = engine
        self.grpc_endpoint = f"http://127.0.0.1:{grpc_port}"
        self.http_endpoint = f"http://127.0.0.1:{http_port}"

    def spans(self) -> list[ExportedSpan]:
        return parse_debug_output(self.engine.output())


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    binary = built_collector()
    grpc_port, http_port = free_port(), free_port()
    config = tmp_path / "otelcol.yaml"
    config.write_text(CONFIG.format(grpc=grpc_port, http=http_port))

    def ready() -> bool:
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/traces",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=2) as reply:
            return bool(reply.status == 200)

    engine = Engine("otelcol", [binary, "--config", f"file:{config}"], ready=ready, log_dir=tmp_path)
    engine.start()
    try:
        yield Collector(engine, grpc_port, http_port)
    finally:
        engine.stop()


def built_collector() -> str:
    """Built once per machine by scripts/peers/otelcol, cached outside the checkout; not built
    here: a cold build (minutes) would eat a test's timeout. scripts/test builds it first."""
    done = subprocess.run(
        [str(REPO / "scripts" / "peers" / "otelcol"), "--path"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise pytest.UsageError(
            f"the OpenTelemetry collector {OTELCOL_VERSION} these tests export to is not built: "
            f"run scripts/peers/otelcol (./scripts/test does it for you)\n{done.stderr[-2000:]}"
        )
    return done.stdout.strip().splitlines()[-1]


# -- reading the debug exporter's detailed output ----------------------------------------------

_FIELD = re.compile(r"^\s{4}(Trace ID|Parent ID|ID|Name|Kind|Status code)\s*: ?(.*)$")
_ATTRIBUTE = re.compile(r"^\s+-> ([^:]+): \w+\((.*)\)$")


def parse_debug_output(text: str) -> list[ExportedSpan]:
    """Spans from `verbosity: detailed` output: a "ResourceSpans #n" block (its attributes hold
    service.name), then "Span #n" blocks of fields and an "Attributes:" list."""
    spans: list[ExportedSpan] = []
    service, fields, attributes, section = "", dict[str, str](), dict[str, str](), ""

    def flush() -> None:
        if fields:
            spans.append(
                ExportedSpan(
                    service=service,
                    trace_id=fields["Trace ID"],
                    span_id=fields["ID"],
                    parent_id=fields.get("Parent ID", ""),
                    name=fields["Name"],
                    kind=fields["Kind"].lower(),
                    status=fields["Status code"].lower(),
                    attributes=dict(attributes),
                )
            )

    for line in text.splitlines():
        if "ResourceSpans #" in line:
            flush()
            fields, attributes, section, service = {}, {}, "resource", ""
        elif line.startswith("ScopeSpans #"):
            section = "scope"
        elif line.startswith("Span #"):
            flush()
            fields, attributes, section = {}, {}, "span"
        elif line == "Attributes:" and section == "span":
            section = "attributes"
        elif line in ("Events:", "Links:") or line.startswith("\t"):
            section = "other"  # span events' attributes, links, the log line's own context
        elif (match := _FIELD.match(line)) and section == "span":
            fields[match[1]] = match[2].strip()
        elif match := _ATTRIBUTE.match(line):
            if section == "resource" and match[1] == "service.name":
                service = match[2]
            elif section == "attributes":
                attributes[match[1]] = match[2]
    flush()
    return spans


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_a_three_process_chain_arrives_in_a_real_collector_as_one_trace(
    processes: ServiceProcesses, collector: Collector, protocol: str
) -> None:
    endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
    env = tracing_env(endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol)
    run = await run_chain(processes, env)
    spans = await wait_for_chain(collector.spans, run.trace_id, what="the chain's spans in the collector")
    assert_chain(spans, run)
