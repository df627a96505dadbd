"""The admin HTTP listener: aiohttp's low-level server, one handler, bounded peers.

Routing is a dict lookup on four fixed paths, so aiohttp's web.Application (router, middleware,
body parsing) is not needed: `web.Server` with one handler function, run by a `ServerRunner`
on a `TCPSite`. aiohttp is imported when the endpoint starts, not with microweave.

What a peer can make the node hold, and the bound on each (constants below):
- connections: at most `MAX_CONNECTIONS` at once, and at most three quarters of them from one
  host (so a host holding connections open cannot lock out the probes and scrapers of others);
  one more is closed as it is accepted;
- time: a connection that sends nothing, or no complete request, for `KEEPALIVE_TIMEOUT`
  seconds is closed (aiohttp arms that timer from the connection's first moment);
- memory: request line and each header at most `MAX_LINE` bytes, at most `MAX_HEADERS`
  headers; a request with a body (we never read one) is answered 413 and the connection closed,
  with at most `LINGER` seconds spent discarding what was sent;
- work: every answer is O(1) (readiness is kept up to date in the background), except
  `/metrics`, which renders the process's registry (its label values are bounded).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .readiness import Readiness

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "KEEPALIVE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_HEADERS",
    "MAX_LINE",
    "AdminListenError",
    "AdminServer",
]

log = logging.getLogger("microweave.admin")

#: connections held at once (scrapers and probes need a handful)
MAX_CONNECTIONS = 256
#: seconds an idle (or silent, or trickling) connection is kept
KEEPALIVE_TIMEOUT = 15.0
#: bytes of the request line and of each header
MAX_LINE = 4096
#: headers per request
MAX_HEADERS = 64
#: seconds spent discarding a refused request's body before closing
LINGER = 1.0
#: seconds stop() gives a request being answered
SHUTDOWN_TIMEOUT = 1.0

_JSON = "application/json"
_ALLOWED = "GET, HEAD"


def _reason(exc: OSError) -> str:
    """ "address already in use", not asyncio's sentence around it that repeats the address."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


class AdminListenError(OSError):
    """The admin endpoint could not listen where it was told: the port is taken, or the host
    is not one of this machine's addresses."""


class AdminServer:
    """A lifecycle component: `/metrics`, `/health`, `/health/live`, `/health/ready` on `bind`
    (host:port, port 0 picks a free one); `address` is where callers reach it once started."""

    def __init__(
        self,
        readiness: Readiness,
        bind: str,
        *,
        advertise: Callable[[str], str] = lambda address: address,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.readiness = readiness
        self.bind = bind
        self.max_connections = max_connections
        self._advertise = advertise
        self.address: str | None = None
        self._runner: web.BaseRunner | None = None
        self._routes: dict[str, Callable[[web.BaseRequest], web.StreamResponse]] = {
            "/metrics": self._metrics,
            "/health": self._health,
            "/health/live": self._live,
            "/health/ready": self._ready,
        }

    def __repr__(self) -> str:
        return f"<AdminServer {self.address or self.bind}>"

    async def start(self) -> None:
        from aiohttp import web

        host, _, port = self.bind.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        server = _bounded_server(web, self._handle, self.max_connections)
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, int(port), reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise AdminListenError(
                exc.errno,
                f"the admin endpoint could not listen on {self.bind} ({_reason(exc)}): give "
                "admin_address= or MICRO_ADMIN_ADDRESS a free host:port (port 0 picks one), or off",
            ) from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        # an IPv6 host goes back in brackets: "::1:9100" is no host:port anyone can split
        self.address = self._advertise(f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self.address = None

    # -- answers ----------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        route = self._routes.get(request.path)
        if request.method not in ("GET", "HEAD"):
            return _json(
                405, {"error": f"method {request.method[:16]} not allowed"}, headers={"Allow": _ALLOWED}
            )
        if request.body_exists:
            response = _json(413, {"error": "requests to the admin endpoint carry no body"})
            response.force_close()
            return response
        if route is None:
            return _json(404, {"error": "not found", "paths": list(self._routes)})
        return route(request)

    def _metrics(self, request: web.BaseRequest) -> web.StreamResponse:
        from aiohttp import web
        from prometheus_client import REGISTRY
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest

        try:
            encode, content_type = choose_encoder(request.headers.get("Accept", ""))
            body = encode(REGISTRY)
        except Exception:  # an Accept header it cannot read (version=abc): the classic format
            body, content_type = generate_latest(REGISTRY), CONTENT_TYPE_PLAIN_0_0_4
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type  # as prometheus_client writes it
        return response

    def _health(self, request: web.BaseRequest) -> web.StreamResponse:
        body = self.readiness.report(checks="all")
        return _json(200 if body["status"] == "up" else 503, body)

    def _ready(self, request: web.BaseRequest) -> web.StreamResponse:
        body = self.readiness.report(checks="failing")
        return _json(200 if body["status"] == "up" else 503, body)

    def _live(self, request: web.BaseRequest) -> web.StreamResponse:
        live = self.readiness.live
        return _json(200 if live else 503, {"status": "up" if live else "down"})


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    from aiohttp import web

    response = web.Response(status=status, text=json.dumps(body), content_type=_JSON, headers=headers)
    response.headers["Cache-Control"] = "no-store"  # a probe must see the state now
    return response


def _bounded_server(web: Any, handler: Any, max_connections: int) -> Any:
    """aiohttp's low-level server, closing at once each connection beyond `max_connections`, or
    beyond three quarters of them from the connection's host."""
    per_host = max(1, max_connections - max_connections // 4)

    class BoundedServer(web.Server):  # type: ignore[misc]
        def connection_made(self, protocol: Any, transport: Any) -> None:
            super().connection_made(protocol, transport)
            connections = self.connections
            if len(connections) <= per_host:
                return
            # O(connections), once that many are open; one closed lately may still be listed
            live = [
                c.transport for c in connections if c.transport is not None and not c.transport.is_closing()
            ]
            host = _host(transport)
            if len(live) > max_connections or sum(1 for t in live if _host(t) == host) > per_host:
                transport.close()

    return BoundedServer(
        handler,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        max_line_size=MAX_LINE,
        max_field_size=MAX_LINE,
        max_headers=MAX_HEADERS,
        lingering_time=LINGER,
        access_log=None,
    )


def _host(transport: Any) -> str | None:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else None
