"""The per-node admin HTTP endpoint: `/metrics`, `/health`, `/health/live`, `/health/ready`.

Every `Service` serves one on its own port (`admin_address=` or MICRO_ADMIN_ADDRESS; by default
a free port on the service's host; `False` or "off" turns it off) and advertises it in its
registry node's metadata as `admin_address`, so Prometheus discovery and `microweave stats`
find it.

- `/metrics`: prometheus_client's default registry (microweave's metrics, the user's own, the
  process collectors) in the text format, or OpenMetrics when the scraper asks for it.
- `/health`, `/health/live`, `/health/ready`: go-micro's paths and JSON shape
  (`{"status": "up"|"down", "checks": [{"name", "status", "error"?}], "info": {...}}`),
  200 when up, 503 when down. `/health/ready` is down while the node starts, from the first
  moment of its stop (before it leaves the registry), while its registration is failing and
  while a critical user check fails; `/health/live` is up until the node has stopped. The
  node's gRPC health service (grpc.health.v1) reports the same readiness. See `readiness`.

Why aiohttp: it is already a dependency (the Consul registry's HTTP client); it is a mature
asyncio HTTP server *and* client with the limits we need (header sizes, keep-alive and
lingering timeouts, no body read unless asked), serving inside the node's own event loop with
no thread or second loop; and the coming HTTP gateway can share it. starlette + uvicorn would
add an ASGI server to own (its own lifecycle, signal handling and loop policy) for four
routes; prometheus_client's built-in server runs in a thread of its own, outside our limits.
"""

from __future__ import annotations

from .http import AdminServer
from .readiness import CheckFunction, HealthCheck, Phase, Readiness, Watcher

__all__ = ["AdminServer", "CheckFunction", "HealthCheck", "Phase", "Readiness", "Watcher", "admin_bind"]

#: values of admin_address / MICRO_ADMIN_ADDRESS that turn the endpoint off
OFF = frozenset({"off", "false", "none", "no", "0", ""})


def admin_bind(argument: str | bool | None, environment: str | None, service_host: str) -> str | None:
    """Where the admin endpoint listens (host:port), or None when it is off: the argument,
    else the environment's value, else a free port on the service's host."""
    if argument is False:
        return None
    if argument is True:
        argument = None
    value = argument if argument is not None else environment
    if value is None:
        return f"{service_host}:0"
    if value.strip().lower() in OFF:
        return None
    return value.strip()
