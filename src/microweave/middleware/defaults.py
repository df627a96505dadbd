"""The middleware every node and client gets without asking: what observability needs.

One place decides, so a Service and a Client agree and a reader finds it. Each side, outermost
first: tracing (only when an OpenTelemetry SDK is configured: absent, it costs nothing), metrics
(on unless `metrics=False`), the access log (server side, off unless MICRO_ACCESS_LOG is true),
then the user's own middleware.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import ClientMiddleware, ServerMiddleware

__all__ = ["client_middleware", "server_middleware"]


def server_middleware(service: str, *, metrics: bool = True) -> list[ServerMiddleware]:
    """The framework's middleware for a node of `service`, outermost first."""
    out: list[ServerMiddleware] = []
    from .otel_setup import tracer_provider

    provider = tracer_provider(service)
    if provider is not None:  # first: the span covers everything else
        from .tracing import ServerTracing

        out.append(ServerTracing(tracer_provider=provider))
    if metrics:  # after tracing, so its span covers what metrics time
        from .metrics import ServerMetrics

        out.append(ServerMetrics(service))
    from ..logs import access_log_enabled

    if access_log_enabled():  # MICRO_ACCESS_LOG; last: innermost of the defaults
        from .builtin import AccessLog

        out.append(AccessLog())
    return out


def client_middleware(name: str, *, metrics: bool = True) -> list[ClientMiddleware]:
    """The framework's middleware for a client (`name`: the calling service, or "")."""
    out: list[ClientMiddleware] = []
    from .otel_setup import tracer_provider

    provider = tracer_provider(name)
    if provider is not None:
        from .tracing import ClientTracing

        out.append(ClientTracing(tracer_provider=provider))
    if metrics:
        from .metrics import ClientMetrics

        out.append(ClientMetrics())
    return out
