"""The Prometheus side of `microweave.metrics`: its numbers as metric families, at scrape time.

One collector on prometheus_client's default REGISTRY, so a node's /metrics shows them next to
the process collectors and the user's own metrics. Families are built from snapshots of the
tables (see the package docstring for the thread story); a series with no calls yet is absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector
from prometheus_client.utils import floatToGoString

from . import (
    BUCKETS,
    CLIENT,
    SERVER,
    CallSeries,
    CallTable,
    pipelines,
    registrations,
    snapshot_connections,
    snapshot_registries,
)

__all__ = ["MicroCollector", "register"]

_BOUNDS = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]

_CALL_LABELS = ["service", "endpoint", "status", "code", "transport"]
_DURATION_LABELS = ["service", "endpoint", "status", "transport"]


def _histogram(counts: list[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, count in zip(_BOUNDS, counts, strict=True):
        total += count
        out.append((bound, float(total)))
    return out


class MicroCollector(Collector):
    """Every microweave metric (names and labels: docs/observability.md)."""

    def collect(self) -> Iterator[Metric]:
        yield from self._calls(SERVER, "micro_", "calls this process's nodes served")
        yield _server_in_flight()
        yield from self._calls(CLIENT, "micro_client_", "calls this process's clients made, per attempt")
        yield _gauge_family(
            "micro_client_in_flight", "Calls this process's clients are making now, by callee.",
            ["service"], (([s], g.value) for s, g in CLIENT.in_flight.copy().items()),
        )  # fmt: skip
        retries = CounterMetricFamily(
            "micro_client_retries",
            "Calls sent again after an attempt that failed.",
            labels=["service", "endpoint"],
        )
        for (service, endpoint), count in CLIENT.retries.copy().items():
            retries.add_metric([service, endpoint], count.value)
        yield retries
        yield _stream_messages()
        yield from _registry()
        yield from _transport()

    @staticmethod
    def _calls(table: CallTable, prefix: str, what: str) -> Iterator[Metric]:
        total = CounterMetricFamily(f"{prefix}request", f"Requests: {what}.", labels=_CALL_LABELS)
        duration = HistogramMetricFamily(
            f"{prefix}request_duration_seconds", f"Request durations: {what}.", labels=_DURATION_LABELS
        )
        for series in _unique(table.series.copy().values()):
            service, endpoint, transport = series.service, series.endpoint, series.transport
            ok = series.ok
            succeeded = sum(ok)
            if succeeded:
                total.add_metric([service, endpoint, "success", "200", transport], succeeded)
                duration.add_metric([service, endpoint, "success", transport], _histogram(ok), series.ok_sum)
            if series.fail is not None:
                for code, count in sorted(series.codes.copy().items()):
                    total.add_metric([service, endpoint, "fail", str(code), transport], count)
                duration.add_metric(
                    [service, endpoint, "fail", transport], _histogram(series.fail), series.fail_sum
                )
        yield total
        yield duration


def _unique(series: Iterable[CallSeries]) -> list[CallSeries]:
    """Each series once (a table may hold one under several keys)."""
    return list({id(s): s for s in series}.values())


def _gauge_family(
    name: str, doc: str, labels: list[str], values: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


def _server_in_flight() -> GaugeMetricFamily:
    by_service: dict[str, int] = {}
    for pipeline in pipelines.alive():
        by_service[pipeline.service] = by_service.get(pipeline.service, 0) + len(pipeline.inflight)
    return _gauge_family(
        "micro_server_in_flight", "Calls this process's nodes are serving now.",
        ["service"], (([s], n) for s, n in sorted(by_service.items())),
    )  # fmt: skip


def _stream_messages() -> CounterMetricFamily:
    family = CounterMetricFamily(
        "micro_stream_messages",
        "Messages of streaming calls, sent and received, by the side that counted them.",
        labels=["service", "endpoint", "side", "direction"],
    )
    for table in (SERVER, CLIENT):
        sums: dict[tuple[str, str], list[int]] = {}
        for series in _unique(table.series.copy().values()):
            if series.streamed:
                pair = sums.setdefault((series.service, series.endpoint), [0, 0])
                pair[0] += series.sent
                pair[1] += series.received
        for (service, endpoint), (sent, received) in sums.items():
            family.add_metric([service, endpoint, table.side, "sent"], sent)
            family.add_metric([service, endpoint, table.side, "received"], received)
    return family


def _registry() -> Iterator[Metric]:
    stats = snapshot_registries()
    lookups = CounterMetricFamily(
        "micro_registry_lookups", "Service lookups that reached the registry.", labels=["registry"]
    )
    hits = CounterMetricFamily(
        "micro_registry_cache_hits", "Service lookups answered from the registry cache.", labels=["registry"]
    )
    errors = CounterMetricFamily(
        "micro_registry_errors", "Registry operations that failed.", labels=["registry", "operation"]
    )
    for s in stats:
        lookups.add_metric([s.registry], s.lookups)
        hits.add_metric([s.registry], s.hits)
        for operation, count in sorted(s.errors.copy().items()):
            errors.add_metric([s.registry, operation], count)
    yield lookups
    yield hits
    yield errors
    up: dict[str, bool] = {}
    for health in registrations.alive():
        if health.registered:  # several nodes of one service in a process: up only if all are
            up[health.service] = up.get(health.service, True) and health.up
    yield _gauge_family(
        "micro_registration_up", "1 while the node's registration in the registry is healthy.",
        ["service"], (([s], 1.0 if ok else 0.0) for s, ok in sorted(up.items())),
    )  # fmt: skip


def _transport() -> Iterator[Metric]:
    stats = snapshot_connections()
    yield _gauge_family(
        "micro_transport_connections", "Transport connections open now.",
        ["transport", "side"], (([t, side], c.open) for (t, side), c in stats),
    )  # fmt: skip
    # "_opened": a counter named micro_transport_connections_total would be the family
    # micro_transport_connections, which OpenMetrics refuses next to the gauge of that name
    opened = CounterMetricFamily(
        "micro_transport_connections_opened", "Transport connections opened.", labels=["transport", "side"]
    )
    for (transport, side), c in stats:
        opened.add_metric([transport, side], c.opened)
    yield opened


def register() -> None:
    REGISTRY.register(MicroCollector())
