"""Services as real processes on a private local:// registry: discovery across processes,
graceful SIGTERM under load, and a SIGKILLed node dropping out when its TTL runs out."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Awaitable
from pathlib import Path

import msgspec
from helpers import ServiceProcesses, async_wait_until, say_hello_until

from microweave import Client
from microweave.registry import Service as ServiceRecord
from microweave.registry.local import LocalRegistry


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str
    caller: str = ""
    node: str = ""


async def test_two_processes_find_and_call_each_other(processes: ServiceProcesses) -> None:
    greeter = processes.start("greeter.py", name="greeter")
    caller = processes.start("caller.py", name="caller")
    async with Client(timeout=20) as client:
        # caller -> greeter: the caller process looks the greeter up in the shared directory
        reply = await client.call("caller", "Caller.Relay", HelloRequest(name="ada"), response=HelloReply)
        assert reply == HelloReply(message="Hello ada", caller="caller", node=greeter.node_id)
        # greeter -> caller: and the other way round
        reply = await client.call(
            "greeter", "Greeter.CallBack", HelloRequest(name="bob"), response=HelloReply
        )
        assert reply == HelloReply(message="echo bob", caller="greeter", node=caller.node_id)
    assert caller.stop() == 0
    assert greeter.stop() == 0


async def test_sigterm_under_load_loses_no_call(processes: ServiceProcesses) -> None:
    leaving = processes.start("greeter.py", name="greeter")
    staying = processes.start("greeter.py", name="greeter")
    failures: list[str] = []
    served: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()

    async with Client(name="load", timeout=20) as client:

        def count(reply: HelloReply) -> None:
            served[reply.node] += 1

        def caller(i: int) -> Awaitable[None]:
            return say_hello_until(stop, client, i, failures, HelloReply, count)

        workers = [asyncio.create_task(caller(i)) for i in range(32)]
        try:

            async def both_busy() -> bool:
                return served[leaving.node_id] >= 50 and served[staying.node_id] >= 50

            await async_wait_until(both_busy, timeout=30, what="both nodes to serve calls")

            leaving.signal(signal.SIGTERM)
            # The node must leave the registry *before* its process exits, so callers stop
            # picking it while it still answers. Reading "absent" and then "alive" proves it.
            gone_while_alive = False
            limit = time.monotonic() + 30
            while leaving.alive() and time.monotonic() < limit:
                if not leaving.registered() and leaving.alive():
                    gone_while_alive = True
                await asyncio.sleep(0.01)
            exit_code = leaving.wait(timeout=5)
            after_exit = served[staying.node_id]

            # keep the load going on the remaining node for a while after the exit
            async def staying_busy() -> bool:
                return served[staying.node_id] >= after_exit + 300

            await async_wait_until(staying_busy, timeout=30, what="calls after the node exited")
        finally:
            stop.set()
            await asyncio.gather(*workers)

    assert failures == []
    assert exit_code == 0, leaving.output()
    assert gone_while_alive, "the node was still registered when its process exited"
    assert "Traceback" not in leaving.output()


async def test_sigkilled_node_drops_out_within_its_ttl(
    processes: ServiceProcesses, registry_dir: Path
) -> None:
    ttl = 2.0
    doomed = processes.start("greeter.py", "--ttl", str(ttl), name="greeter")
    survivor = processes.start("greeter.py", "--ttl", str(ttl), name="greeter")
    registry = LocalRegistry(registry_dir)
    async with Client(registry=registry, timeout=20) as client:

        def ids(services: list[ServiceRecord]) -> set[str]:
            return {n.id for s in services for n in s.nodes}

        assert ids(await client.cache.get_service("greeter")) == {doomed.node_id, survivor.node_id}

        doomed.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert doomed.wait(timeout=10) == -signal.SIGKILL

        gone_from_registry: float | None = None
        gone_from_cache: float | None = None
        failures: list[str] = []
        limit = killed + 3 * ttl + 20  # generous: a bound on liveness, not a timing claim
        while (gone_from_registry is None or gone_from_cache is None) and time.monotonic() < limit:
            # callers keep working meanwhile: a call that picks the dead node is retried elsewhere
            try:
                reply = await client.call(
                    "greeter", "Greeter.SayHello", HelloRequest(name="x"), response=HelloReply
                )
                assert reply.node == survivor.node_id
            except Exception as exc:
                failures.append(repr(exc))
            now = time.monotonic()
            if gone_from_registry is None and doomed.node_id not in ids(
                await registry.get_service("greeter")
            ):
                gone_from_registry = now - killed
            if gone_from_cache is None and doomed.node_id not in ids(
                await client.cache.get_service("greeter")
            ):
                gone_from_cache = now - killed
            await asyncio.sleep(0.05)

        assert survivor.registered()
    assert failures == []
    # A node that dies without deregistering leaves lookups once its TTL runs out (how soon
    # is a matter of polling on a shared machine: durations are not asserted here), and no
    # sooner than the TTL allows for heartbeats (it was alive a moment before).
    assert gone_from_registry is not None, "the dead node never left the registry"
    assert gone_from_cache is not None, "the dead node never left the client's cache"
    assert gone_from_registry > 0 and gone_from_cache > 0
