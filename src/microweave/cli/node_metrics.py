"""What `microweave stats` reads from a node's metrics, and the arithmetic on it.

From one scrape: per endpoint of the service, the calls and failures (`micro_request_total`)
and the latency histogram (`micro_request_duration_seconds`), summed over transports and
statuses; and the calls in flight (`micro_server_in_flight`). From two scrapes of the same node:
what happened in between (a counter that went down means the node restarted: then the second
scrape is the whole window). Quantiles come from histogram buckets the way PromQL's
`histogram_quantile` computes them, so the numbers match the Grafana dashboard's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["EndpointCounts", "NodeMetrics", "add", "parse_node_metrics", "quantile", "since"]

REQUESTS = "micro_request_total"
DURATION_BUCKET = "micro_request_duration_seconds_bucket"
IN_FLIGHT = "micro_server_in_flight"
#: the largest count taken from a page: a float counts by one up to 2**53, and a bigger (or an
#: infinite, or NaN) value is a broken or hostile node's; left out, so sums over nodes, rates
#: and percentages stay finite numbers (JSON has no Infinity) and the table can print them
MAX_VALUE = float(2**53)

K = TypeVar("K")


@dataclass
class EndpointCounts:
    """Calls of one endpoint: how many, how many failed, by code, and the latency buckets
    (upper bound in seconds -> cumulative count, as Prometheus exposes them)."""

    calls: float = 0.0
    errors: float = 0.0
    codes: dict[str, float] = field(default_factory=dict)
    buckets: dict[float, float] = field(default_factory=dict)


@dataclass
class NodeMetrics:
    endpoints: dict[str, EndpointCounts] = field(default_factory=dict)
    in_flight: float = 0.0

    def calls(self) -> float:
        return sum(e.calls for e in self.endpoints.values())


def parse_node_metrics(text: str, service: str) -> NodeMetrics:
    """The series of `service` in a Prometheus text page; ValueError when it does not parse."""
    found = NodeMetrics()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("service") != service or not abs(sample.value) <= MAX_VALUE:
                continue
            if sample.name == IN_FLIGHT:
                found.in_flight += sample.value
                continue
            if sample.name not in (REQUESTS, DURATION_BUCKET):
                continue
            counts = found.endpoints.setdefault(labels.get("endpoint", ""), EndpointCounts())
            if sample.name == REQUESTS:
                counts.calls += sample.value
                if labels.get("status") == "fail":
                    counts.errors += sample.value
                    code = labels.get("code", "")
                    counts.codes[code] = counts.codes.get(code, 0.0) + sample.value
            else:
                bound = _bound(labels.get("le", ""))
                if bound is not None:
                    counts.buckets[bound] = counts.buckets.get(bound, 0.0) + sample.value
    return found


def _bound(le: str) -> float | None:
    """A bucket's upper bound: a finite number or +Inf (None for anything else)."""
    try:
        bound = float(le)
    except ValueError:
        return None
    return bound if math.isfinite(bound) or bound == math.inf else None


def _minus(now: Mapping[K, float], before: Mapping[K, float]) -> dict[K, float]:
    return {key: value - before.get(key, 0.0) for key, value in now.items()}


def since(now: NodeMetrics, before: NodeMetrics | None) -> NodeMetrics:
    """What the node counted between two scrapes (all of `now` when the node restarted)."""
    if before is None:
        return now
    restarted = (
        any(
            counts.calls < before.endpoints[name].calls or counts.errors < before.endpoints[name].errors
            for name, counts in now.endpoints.items()
            if name in before.endpoints
        )
        or now.calls() < before.calls()
    )
    if restarted:
        return now
    window = NodeMetrics(in_flight=now.in_flight)
    for name, counts in now.endpoints.items():
        old = before.endpoints.get(name, EndpointCounts())
        window.endpoints[name] = EndpointCounts(
            calls=counts.calls - old.calls,
            errors=counts.errors - old.errors,
            codes=_minus(counts.codes, old.codes),
            buckets=_minus(counts.buckets, old.buckets),
        )
    return window


def add(nodes: Iterable[NodeMetrics]) -> NodeMetrics:
    """The sum over nodes: one line per endpoint for the whole service."""
    total = NodeMetrics()
    for node in nodes:
        total.in_flight += node.in_flight
        for name, counts in node.endpoints.items():
            into = total.endpoints.setdefault(name, EndpointCounts())
            into.calls += counts.calls
            into.errors += counts.errors
            for code, value in counts.codes.items():
                into.codes[code] = into.codes.get(code, 0.0) + value
            for bound, value in counts.buckets.items():
                into.buckets[bound] = into.buckets.get(bound, 0.0) + value
    return total


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile (0..1) of cumulative `buckets`, interpolated linearly inside the bucket
    it falls in, as PromQL's histogram_quantile; None with no observations.

    As there: below the first bound interpolates from 0 (for a positive bound), and a quantile
    in the +Inf bucket is the highest finite bound.
    """
    if not buckets or math.inf not in buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[math.inf]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return lower if len(bounds) > 1 else None
            if bound == bounds[0] and bound <= 0:
                return bound
            in_bucket = count - below
            if in_bucket <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / in_bucket
        lower, below = bound, count
    return lower
