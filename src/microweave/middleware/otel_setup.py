"""Whether this process traces, and the OpenTelemetry SDK set up from the standard OTEL_* variables.

Tracing is on when either
- the application set a real TracerProvider globally (`trace.set_tracer_provider(...)`, before
  its Services and Clients start): microweave traces into it and configures nothing; or
- the environment asks for spans (`OTEL_TRACES_EXPORTER` other than "none", or an OTLP endpoint
  in `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED`
  is not "true": microweave builds the SDK once per process from those variables and sets it
  globally, so the application's own spans land in the same traces.

Otherwise nothing is imported and no middleware is added: a node without tracing pays nothing.
Nothing here imports opentelemetry unless one of the two holds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Final

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import TracerProvider

    from .tracing import ProducerTracing

__all__ = ["INSTALL_HINT", "env_asks_for_tracing", "flush_traces", "producer_tracing", "tracer_provider"]

log = logging.getLogger("microweave.tracing")

INSTALL_HINT: Final = 'pip install "microweave[otel]"'
EXPORTERS: Final = ("otlp", "console", "none")
PROTOCOLS: Final = ("http/protobuf", "grpc")
#: how long a stopping Service, and the process's exit, wait for the last spans to go out
FLUSH_TIMEOUT: Final = 5.0

_lock = threading.Lock()
_configured: SdkTracerProvider | None = None  # the provider built here from the environment
_missing_sdk_logged = False


def tracer_provider(service_name: str = "") -> TracerProvider | None:
    """The provider this process traces with, or None (tracing off). `service_name` becomes the
    resource's service.name when the SDK is built here and the environment names none."""
    if _truthy(os.environ.get("OTEL_SDK_DISABLED")):
        return None
    provider = _global_provider()
    if provider is not None:
        return provider
    if not env_asks_for_tracing():
        return None
    return _configure_from_env(service_name)


def producer_tracing(service_name: str = "") -> ProducerTracing | None:
    """What a broker wraps its publishes in: None when this process does not trace."""
    provider = tracer_provider(service_name)
    if provider is None:
        return None
    from .tracing import ProducerTracing

    return ProducerTracing(tracer_provider=provider)


def env_asks_for_tracing() -> bool:
    """An explicit OTEL_TRACES_EXPORTER decides ("none" turns tracing off even with an endpoint
    set); without one, an OTLP endpoint asks for the default exporter, otlp."""
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return any(name.strip() not in ("", "none") for name in exporters.split(","))
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


async def flush_traces(timeout: float = FLUSH_TIMEOUT) -> None:
    """Export the spans still queued in the provider built here, waiting at most `timeout`
    seconds (in a thread: the loop keeps serving). Service.stop calls it, so a node's last
    spans go out when it stops, not only when the process exits (flushed then too).
    A provider the application set is the application's to flush."""
    provider = _configured
    if provider is None:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def flush() -> None:
        try:
            provider.force_flush()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(finished)

    # The SDK's force_flush ignores its timeout (opentelemetry-python#4568): with a collector
    # that cannot be reached it retries every queued batch, 10 s or more each. A daemon thread
    # of our own, waited for at most `timeout`: neither stop() nor the interpreter's exit (which
    # joins the default executor's threads) waits for it.
    threading.Thread(target=flush, name="microweave-flush-traces", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        log.warning(
            "could not export the last spans within %g s (is the OTLP endpoint reachable?); "
            "stopping without them",
            timeout,
        )


def _global_provider() -> TracerProvider | None:
    """The application's provider, when it set one: not the API's proxy (nothing set yet) and
    not its no-op. Without opentelemetry imported, nobody can have set one."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider: TracerProvider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


def _configure_from_env(service_name: str) -> TracerProvider | None:
    global _configured, _missing_sdk_logged
    with _lock:
        if _configured is not None:
            return _configured
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import OTELResourceDetector, Resource
            from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            exporters = _exporters()
        except ImportError:
            if not _missing_sdk_logged:
                _missing_sdk_logged = True
                log.warning(
                    "the environment asks for traces (OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_*"
                    "ENDPOINT) but the OpenTelemetry SDK is not installed: tracing is off; "
                    "run %s to turn it on",
                    INSTALL_HINT,
                )
            return None
        # ours is the default; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override it
        defaults = {"service.name": service_name} if service_name else {}
        resource = Resource.create(defaults).merge(OTELResourceDetector().detect())
        # sampler: OTEL_TRACES_SAMPLER, else parentbased_always_on; shut down at exit by ours
        provider = SdkTracerProvider(resource=resource, shutdown_on_exit=False)
        atexit.register(_shutdown_at_exit, provider)
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _configured = provider
        log.info(
            "tracing on: exporting spans as service.name=%s (OTEL_* settings)",
            resource.attributes.get("service.name"),
        )
        return provider


def _shutdown_at_exit(provider: SdkTracerProvider) -> None:
    """The SDK's own exit hook waits up to 30 s per span processor, plus the exporter's retries
    (a collector that cannot be reached holds the exit that long): export what is queued in
    a daemon thread and wait for it at most FLUSH_TIMEOUT seconds."""
    worker = threading.Thread(target=provider.shutdown, name="microweave-trace-shutdown", daemon=True)
    worker.start()
    worker.join(FLUSH_TIMEOUT)
    if worker.is_alive():
        log.warning(
            "could not export the last spans within %g s at exit; exiting without them", FLUSH_TIMEOUT
        )


def _exporters() -> list[SpanExporter]:
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    out: list[SpanExporter] = []
    for name in names:
        if name in ("", "none"):
            continue
        if name == "otlp":
            out.append(_otlp_exporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        else:
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER={name!r} is not an exporter microweave sets up; choose from "
                f"{', '.join(EXPORTERS)}, or set up the SDK yourself and call "
                "opentelemetry.trace.set_tracer_provider() before starting services"
            )
    return out


def _otlp_exporter() -> SpanExporter:
    """OTLP over HTTP (the specification's default) or gRPC; the exporter itself reads the
    endpoint, headers, timeout, compression and certificates from OTEL_EXPORTER_OTLP_*."""
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http()
    raise ConfigurationError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; choose from {', '.join(PROTOCOLS)}"
    )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"
