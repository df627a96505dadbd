"""Many lookups at once: a fresh registry asking for 400 services x 3 nodes finds every node.

Two causes made the bench's sync of 1,000 services come back with ~320 services short.
First, a node's answer is big (two typed endpoints and metadata in its TXT), so the responder splits
the answer to a lookup over several packets, and a node's address may come in the packet
before the SRV that names its host. The tracker used to ignore such an address (no SRV yet
said the host mattered), so 1 node in 30 stayed invisible. Second, under a burst of queries
whole runs of them went unanswered (126 of 400 here), and a lookup asked only once: a name
nobody answered is now asked again halfway through the wait. Looked up 64 at a time, as a
busy client's first calls would, no service may come back short.
"""

from __future__ import annotations

import asyncio

from engines.mdns import Netns, fresh_domain, open_mdns

from microweave.registry import Endpoint, Node, Service, Value

SERVICES = 400
NODES = 3


def record(name: str, node: str, index: int) -> Service:
    """A node as a microweave service registers it (the bench's shape: a TXT of ~700 bytes)."""
    hello = Value("HelloRequest", "HelloRequest", [Value("name", "str")])
    reply = Value("HelloReply", "HelloReply", [Value("message", "str")])
    address = f"10.0.{index // 256 % 256}.{index % 256}"
    return Service(
        name=name,
        version="1.0.0",
        endpoints=[
            Endpoint("Greeter.SayHello", hello, reply, {"stream": "unary"}),
            Endpoint("Greeter.Count", hello, reply, {"stream": "server"}),
        ],
        nodes=[
            Node(
                id=node,
                address=f"{address}:9090",
                metadata={
                    "protocol": "grpc",
                    "transport": "grpc",
                    "server": "grpc",
                    "registry": "bench",
                    "tcp_address": f"{address}:9091",
                },
            )
        ],
    )


async def test_a_fresh_registry_looking_up_many_services_at_once_finds_every_node(
    mdns_netns: Netns,
) -> None:
    url = f"mdns://?domain={fresh_domain()}&interface=lo"
    async with open_mdns(mdns_netns, url) as writer:
        limit = asyncio.Semaphore(32)

        async def register(i: int, j: int) -> None:
            async with limit:
                await writer.register(record(f"svc-{i}", f"n{j}", i * NODES + j), ttl=60)

        await asyncio.gather(*(register(i, j) for i in range(SERVICES) for j in range(NODES)))
        # a new record is announced three times over 0.45 s; the reader starts after that,
        # so it learns every node from the answers to its lookups, not from announcements
        await asyncio.sleep(1.0)
        async with open_mdns(mdns_netns, url) as reader:
            at_once = asyncio.Semaphore(64)

            async def look_up(i: int) -> int:
                async with at_once:
                    found = await reader.get_service(f"svc-{i}")
                return sum(len(s.nodes) for s in found)

            counts = await asyncio.gather(*(look_up(i) for i in range(SERVICES)))
            short = {f"svc-{i}": c for i, c in enumerate(counts) if c != NODES}
            assert short == {}, f"{len(short)} of {SERVICES} services short of their nodes"
