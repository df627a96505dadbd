"""Serve services in-process for one test, on a registry nobody else can see.

    async with serve(service) as client:
        reply = await client.call("greeter", "Greeter.SayHello", {"name": "Ada"})

Why a private registry: a test that registers on the default `local://` registry shares it with
every other test running at the same time and with the developer's own running services, so a
call could reach someone else's node. Each `serve()` makes a fresh in-memory registry that only
the services it starts and the client it yields know about; it is never entered in the
process-wide table of named `memory://` registries, so nothing outlives the block.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Literal

from ..client import Client
from ..registry import Registry
from ..registry.memory import MemoryRegistry
from ..service import Service

__all__ = ["Transport", "serve"]

#: How the yielded client reaches the services: `local` calls them in-process (no socket, the
#: same encode/decode and error rules as a remote call); `tcp` and `grpc` go over loopback.
Transport = Literal["local", "tcp", "grpc"]

# A test's services listen on loopback only, on ports the kernel picks, so tests running in
# parallel never collide and nothing is exposed beyond this host.
_LOOPBACK = "127.0.0.1:0"


@dataclass(frozen=True, slots=True)
class _Saved:
    """What `serve` changes on a service for the test, put back when the test ends."""

    address: str
    tcp_address: str | None
    drain_delay: float


def _prepare(service: Service, registry: Registry) -> _Saved:
    saved = _Saved(service.address, service.tcp_address, service.drain_delay)
    service.registry = registry  # raises if the service is already running elsewhere
    service.address = _LOOPBACK
    if service.tcp_address is not None:  # `tcp_address=False` stays off: the test asked for that
        service.tcp_address = _LOOPBACK
    # nobody but this test's client watches the private registry, so there are no callers'
    # caches to wait for: stopping without the drain delay keeps each test fast
    service.drain_delay = 0.0
    return saved


def _restore(service: Service, saved: _Saved) -> None:
    service.address = saved.address
    service.tcp_address = saved.tcp_address
    service.drain_delay = saved.drain_delay


@contextlib.asynccontextmanager
async def serve(*services: Service, transport: Transport = "local") -> AsyncIterator[Client]:
    """Start `services` on a fresh private in-memory registry and yield a client bound to it.

    Services start in the order given and stop in reverse, and the client is closed, when the
    block ends, whether the test passed or failed. Several services share the registry, so a
    handler that calls another service through `service.client` reaches the one started here.

    Whatever registry or addresses a service was built with are overridden for the test (gRPC
    and tcp listen on 127.0.0.1, on free ports); the addresses are put back afterwards, but the
    service stays bound to the private registry, since the registry it had cannot be recovered
    without being created. `transport` chooses how the yielded client calls: in-process by
    default, or over loopback `tcp` or `grpc` to exercise a real wire.
    """
    if not services:
        raise TypeError("serve() needs at least one Service to start")
    if len({id(s) for s in services}) != len(services):
        raise ValueError("serve() was given the same Service twice")
    registry = MemoryRegistry()
    async with AsyncExitStack() as stack:
        for service in services:
            saved = _prepare(service, registry)
            stack.callback(_restore, service, saved)
            # registered before start, so the services already started are stopped even when a
            # later one fails to start (stop does nothing for a service that never ran)
            stack.push_async_callback(service.stop)
            await service.start()
        client = Client(registry=registry, transports=(transport,))
        stack.push_async_callback(client.aclose)
        yield client
