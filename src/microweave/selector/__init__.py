"""Selector: pick one node per call, and learn from the calls that failed.

Strategies: `random`, `round_robin`, `p2c` (power of two choices: of two random nodes, the one
with fewer calls in flight — cheap, and it steers load away from slow nodes). Filters narrow the
candidates by version or metadata. A node whose call failed with UNAVAILABLE is set aside for a
short while (outlier ejection) so retries go elsewhere; if every node is set aside, all are used.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from typing import Literal

from ..errors import ServiceNotFound
from ..registry import Node, Service

__all__ = ["Filter", "Selector", "StrategyName", "by_metadata", "by_version"]

Filter = Callable[[list[Service]], list[Service]]
StrategyName = Literal["random", "round_robin", "p2c"]


def by_version(*versions: str) -> Filter:
    """Keep only these versions of the service."""

    def keep(services: list[Service]) -> list[Service]:
        return [s for s in services if s.version in versions]

    return keep


def by_metadata(**wanted: str) -> Filter:
    """Keep only nodes whose metadata has these key/values."""

    def keep(services: list[Service]) -> list[Service]:
        out = []
        for s in services:
            nodes = [n for n in s.nodes if all(n.metadata.get(k) == v for k, v in wanted.items())]
            if nodes:
                out.append(s.with_nodes(nodes))
        return out

    return keep


class Selector:
    def __init__(
        self,
        strategy: StrategyName = "p2c",
        *,
        filters: Sequence[Filter] = (),
        eject_for: float = 5.0,
    ) -> None:
        if strategy not in ("random", "round_robin", "p2c"):
            raise ValueError(f"unknown strategy {strategy!r}; use random, round_robin or p2c")
        self.strategy = strategy
        self.filters = list(filters)
        self.eject_for = eject_for
        self._counter = itertools.count()
        self._in_flight: dict[str, int] = {}
        self._ejected: dict[str, float] = {}

    def select(
        self,
        name: str,
        services: list[Service],
        filters: Sequence[Filter] = (),
        exclude: Sequence[str] = (),
    ) -> Node:
        """A node of `name` from the registry's answer, after filters and ejections."""
        for keep in (*self.filters, *filters):
            services = keep(services)
        nodes = [n for s in services for n in s.nodes]
        if exclude and len(nodes) > len(exclude):
            nodes = [n for n in nodes if n.id not in exclude] or nodes
        if not nodes:
            raise ServiceNotFound(f"service {name} has no node that matches", id="microweave.client")
        if self._ejected:
            now = time.monotonic()
            healthy = [n for n in nodes if self._ejected.get(n.id, 0.0) <= now]
            nodes = healthy or nodes
        if len(nodes) == 1:
            return nodes[0]
        if self.strategy == "round_robin":
            return nodes[next(self._counter) % len(nodes)]
        if self.strategy == "random":
            return random.choice(nodes)
        a, b = random.sample(nodes, 2)
        in_flight = self._in_flight
        return a if in_flight.get(a.id, 0) <= in_flight.get(b.id, 0) else b

    def started(self, node: Node) -> None:
        self._in_flight[node.id] = self._in_flight.get(node.id, 0) + 1

    def finished(self, node: Node, *, failed: bool = False) -> None:
        left = self._in_flight.get(node.id, 1) - 1
        if left:
            self._in_flight[node.id] = left
        else:
            self._in_flight.pop(node.id, None)
        if failed:
            self._ejected[node.id] = time.monotonic() + self.eject_for
        elif node.id in self._ejected:
            del self._ejected[node.id]
