"""The numbers behind the Prometheus metrics: calls, stream messages, registry and transport.

Every hook in the framework (the metrics middlewares, the client's retries, the registry cache,
registration, the tcp and gRPC transports) updates a plain object here: an int attribute, or one
bucket of a histogram found with `bisect`. Nothing is formatted, locked or allocated per call.
`collector.MicroCollector`, registered once on prometheus_client's default `REGISTRY` (by
`install()`, which every factory below calls), turns them into metric families at scrape time.
The names and labels are in docs/observability.md.

Why not prometheus_client's own Counter and Histogram: `labels()` builds a key and takes a lock,
`observe()` takes another and loops over the buckets. A node serving a call in ~20 us of CPU
would pay several of those per call; here a call costs a dict lookup and two increments.

Threads: updates happen on event-loop threads, under the GIL, with no lock. The usual process has
one loop serving its nodes and clients, and then every count is exact. Two loops in two threads
updating the *same* series at the same instant (the same service and endpoint served or called
from both) can lose an increment: `+=` on an attribute is not atomic across threads. The scrape
(any thread) copies each table with `dict.copy()`, which the GIL makes atomic, and reads ints, so
it never sees a table change size under it; a histogram read while a call is being recorded may
be one call behind in its sum. New series and new watched objects are added under a lock (rare).

Label values are bounded whatever peers send: a server's endpoint is one it serves or "unknown";
a client's (service, endpoint) pairs are capped at `CLIENT_PAIRS` per process, then endpoint
"other" (service "other" too for a service first seen after the cap).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Final

__all__ = [
    "BUCKETS",
    "CLIENT",
    "CLIENT_PAIRS",
    "SERVER",
    "CallSeries",
    "CallTable",
    "ConnectionStats",
    "RegistrationHealth",
    "RegistryStats",
    "Value",
    "connections",
    "install",
    "registration_health",
    "registry_stats",
    "snapshot_connections",
    "snapshot_registries",
    "watch_pipeline",
]

#: histogram upper bounds, seconds (go-micro's wrapper uses Prometheus' defaults; ours start lower:
#: a call on this framework often takes well under a millisecond)
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: distinct (service, endpoint) pairs a process's clients are counted under before "other"
CLIENT_PAIRS: Final = 1000
#: distinct registry schemes and transport names (come from code, not peers: a safety bound)
_SMALL_CAP: Final = 64

_lock = threading.Lock()  # taken when something is added, never per call


class CallSeries:
    """The calls of one (service, endpoint, transport) on one side: a duration histogram for
    successes, one for failures (made on the first failure), failures by code, stream messages."""

    __slots__ = ("codes", "endpoint", "fail", "fail_sum", "ok", "ok_sum", "received", "sent", "service",
                 "streamed", "transport")  # fmt: skip

    def __init__(self, service: str, endpoint: str, transport: str) -> None:
        self.service = service
        self.endpoint = endpoint
        self.transport = transport
        #: counts per bucket (not cumulative), the last one past the highest bound
        self.ok = [0] * (len(BUCKETS) + 1)
        self.ok_sum = 0.0
        self.fail: list[int] | None = None
        self.fail_sum = 0.0
        self.codes: dict[int, int] = {}
        self.streamed = False  # a streaming call was made: its messages are exported
        self.sent = 0
        self.received = 0

    def failed(self, code: int, seconds: float) -> None:
        """A call that ended with an error (rare: a method, not inlined)."""
        from bisect import bisect_left

        fail = self.fail
        if fail is None:
            fail = self.fail = [0] * (len(BUCKETS) + 1)
        fail[bisect_left(BUCKETS, seconds)] += 1
        self.fail_sum += seconds
        self.codes[code] = self.codes.get(code, 0) + 1


class Value:
    """One number (a gauge's, or a counter's), updated in place and read at scrape time."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class CallTable:
    """Every `CallSeries` of one side in this process, by (service, endpoint, transport).

    A hook reads `series` directly (one dict lookup) and calls `get` only when that misses."""

    def __init__(self, side: str, *, pairs: int | None = None) -> None:
        self.side = side
        self.series: dict[tuple[str, str, str], CallSeries] = {}
        self.in_flight: dict[str, Value] = {}  # by service (the client's; a server's is its pipeline's)
        self.retries: dict[tuple[str, str], Value] = {}
        self._pairs: set[tuple[str, str]] = set()
        self._services: set[str] = set()
        self._cap = pairs

    def labels(self, service: str, endpoint: str) -> tuple[str, str]:
        """The label values a pair is counted under: itself, or "other" past the cap."""
        if self._cap is None or (service, endpoint) in self._pairs:
            return service, endpoint
        with _lock:
            if len(self._pairs) < self._cap:
                self._pairs.add((service, endpoint))
                self._services.add(service)
                return service, endpoint
        return (service if service in self._services else "other"), "other"

    def service_label(self, service: str) -> str:
        """A service's label value: itself, or "other" for one first seen past the cap."""
        if self._cap is None or service in self._services:
            return service
        with _lock:
            if len(self._pairs) < self._cap and len(self._services) < self._cap:
                self._services.add(service)
                return service
        return "other"

    def get(self, service: str, endpoint: str, transport: str) -> CallSeries:
        """The series a call is counted in; past the cap it is not cached under the call's own
        labels (so the table stays bounded), and such calls come here each time."""
        service, endpoint = self.labels(service, endpoint)
        key = (service, endpoint, transport)
        series = self.series.get(key)
        if series is None:
            with _lock:
                series = self.series.setdefault(key, CallSeries(service, endpoint, transport))
        return series

    def gauge(self, service: str) -> Value:
        """The in-flight gauge of calls to `service`."""
        service = self.service_label(service)
        gauge = self.in_flight.get(service)
        if gauge is None:
            with _lock:
                gauge = self.in_flight.setdefault(service, Value())
        return gauge

    def retried(self, service: str, endpoint: str) -> None:
        """One more attempt of a call (micro_client_retries_total)."""
        key = self.labels(service, endpoint)
        counter = self.retries.get(key)
        if counter is None:
            with _lock:
                counter = self.retries.setdefault(key, Value())
        counter.value += 1


#: calls nodes of this process served, and calls its clients made (once per attempt)
SERVER: Final = CallTable("server")
CLIENT: Final = CallTable("client", pairs=CLIENT_PAIRS)


class _Watched:
    """Objects read at scrape time, held weakly: they go when their owner does."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[Any]] = {}

    def add(self, obj: object) -> None:
        with _lock:
            self._refs = {k: r for k, r in self._refs.items() if r() is not None}
            self._refs[id(obj)] = weakref.ref(obj)

    def alive(self) -> list[Any]:
        refs = self._refs.copy()
        return [o for o in (r() for r in refs.values()) if o is not None]


#: the server pipelines of nodes with metrics on: their `inflight` is micro_server_in_flight
pipelines: Final = _Watched()
#: one `RegistrationHealth` per registration that has started
registrations: Final = _Watched()


def watch_pipeline(pipeline: Any) -> None:
    """Report `len(pipeline.inflight)` as micro_server_in_flight{service=pipeline.service}."""
    install()
    pipelines.add(pipeline)


class RegistryStats:
    """One registry scheme's lookups (reads that reached it), cache hits and errors by operation."""

    __slots__ = ("errors", "hits", "lookups", "registry")

    def __init__(self, registry: str) -> None:
        self.registry = registry
        self.lookups = 0
        self.hits = 0
        self.errors: dict[str, int] = {}

    def error(self, operation: str) -> None:
        """`operation`: register, deregister, lookup or watch."""
        self.errors[operation] = self.errors.get(operation, 0) + 1


class RegistrationHealth:
    """Whether one node's registration is healthy: micro_registration_up{service}."""

    __slots__ = ("__weakref__", "registered", "service", "up")

    def __init__(self, service: str) -> None:
        self.service = service
        self.up = False
        self.registered = True  # False once the node left the registry: no longer reported


class ConnectionStats:
    """One transport side's connections: open now, and opened since the start."""

    __slots__ = ("open", "opened")

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0

    def connected(self) -> None:
        self.open += 1
        self.opened += 1

    def disconnected(self) -> None:
        self.open -= 1


_registries: dict[str, RegistryStats] = {}
_connections: dict[tuple[str, str], ConnectionStats] = {}


def registry_stats(scheme: str) -> RegistryStats:
    """The counters of registries of this scheme (one object per scheme, shared)."""
    install()
    scheme = scheme or "custom"  # a registry class of the user's with no scheme
    with _lock:
        if scheme not in _registries and len(_registries) >= _SMALL_CAP:
            scheme = "other"
        return _registries.setdefault(scheme, RegistryStats(scheme))


def registration_health(service: str) -> RegistrationHealth:
    """A new health flag for one registration of `service` (held by it, watched weakly)."""
    install()
    health = RegistrationHealth(service)
    registrations.add(health)
    return health


def connections(transport: str, side: str) -> ConnectionStats:
    """The connection counts of `transport` ("tcp", "grpc") on `side` ("server", "client")."""
    install()
    with _lock:
        if (transport, side) not in _connections and len(_connections) >= _SMALL_CAP:
            transport = "other"
        return _connections.setdefault((transport, side), ConnectionStats())


def snapshot_registries() -> list[RegistryStats]:
    """Every registry scheme's counters, for the collector."""
    return list(_registries.copy().values())


def snapshot_connections() -> list[tuple[tuple[str, str], ConnectionStats]]:
    """((transport, side), counts) of every transport side, for the collector."""
    return list(_connections.copy().items())


_installed = False


def install() -> None:
    """Register the collector on prometheus_client's default REGISTRY, once per process."""
    global _installed
    if _installed:
        return
    with _lock:
        if not _installed:
            from .collector import register

            register()
            _installed = True
