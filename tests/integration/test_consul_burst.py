"""A burst of registrations queues in the registry instead of timing out at the agent.

aiohttp counts the wait for a pooled connection in a request's timeout, so 1,024 registrations
at once behind 16 connections timed out (the bench's 256 overran a -dev agent). The registry
now lets 16 requests run and queues the rest before their timeouts start: every one lands.
"""

from __future__ import annotations

import asyncio

from engines.consul import ConsulAgent

from microweave.registry import Node, Service
from microweave.registry import from_url as registry_from_url

BURST = 1024


def record(i: int) -> Service:
    node = Node(id=f"n{i}", address=f"127.0.0.1:{1024 + i}")
    return Service(name=f"burst-{i % 64}", version="1.0.0", nodes=[node])


async def test_a_burst_of_registrations_all_land(consul_server: ConsulAgent) -> None:
    consul_server.purge()
    try:
        # a timeout far shorter than the burst (~5 s here) but not than one request on a loaded
        # machine (0.5 s once was): each has 2 s once it runs, not counting its wait in the queue
        async with registry_from_url(f"{consul_server.url}?timeout=2&retries=0") as registry:
            await asyncio.gather(*(registry.register(record(i), ttl=30) for i in range(BURST)))
            found = await asyncio.gather(*(registry.get_service(f"burst-{j}") for j in range(64)))
            assert sum(len(s.nodes) for services in found for s in services) == BURST
    finally:
        consul_server.purge()
