"""What the observability CLI tests share: the two services they run, calls to them, a node
that stopped without deregistering, and reading a node's /metrics the way a scraper does."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import msgspec
from cli_helpers import REPO
from helpers import free_port

from microweave.registry import Node, Service
from microweave.registry.local import LocalRegistry

__all__ = [
    "BACKEND",
    "FRONTEND",
    "Item",
    "Stock",
    "metric",
    "register_stopped_node",
    "scrape",
]

SERVICES = REPO / "tests" / "integration" / "services"
BACKEND = str(SERVICES / "metrics_backend.py")
FRONTEND = str(SERVICES / "metrics_frontend.py")


class Item(msgspec.Struct):
    name: str


class Stock(msgspec.Struct):
    name: str
    count: int


async def register_stopped_node(
    root: Path, service: str, version: str, node_id: str, *, admin_address: str | None = None
) -> None:
    """A node of `service` in the local registry at `root` that nobody serves: a process that
    was killed before it could deregister. Its addresses are ports nobody listens on."""
    metadata = {"protocol": "grpc", "transport": "grpc", "registry": "local"}
    if admin_address is not None:
        metadata["admin_address"] = admin_address
    record = Service(service, version, nodes=[Node(node_id, f"127.0.0.1:{free_port()}", metadata)])
    async with LocalRegistry(root) as registry:
        await registry.register(record, ttl=300)


def scrape(admin_address: str) -> str:
    with urllib.request.urlopen(f"http://{admin_address}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
