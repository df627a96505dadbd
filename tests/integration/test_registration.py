"""A node's registration (lifecycle.Registration) when its registry goes away: at start, while
running, and when it comes back, possibly empty. Over a real backend that breaks on demand
(registry_kit.Breakable) and over a real etcd that is stopped, wiped and started again."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from engines.etcd import EtcdServer
from helpers import async_wait_until
from registry_kit import Breakable

from microweave import Client, Service
from microweave.errors import ConfigurationError, RegistryError
from microweave.lifecycle import Registration
from microweave.registry import Node, Registry
from microweave.registry import Service as ServiceRecord
from microweave.registry import from_url as registry_from_url
from microweave.registry.cache import RegistryCache
from microweave.testing import capture_logs

WAIT = 15.0
#: the issue's bound: a node is back in the registry within TTL + 2 s of the registry's return
BACK_WITHIN = 2.0


def record(node: str = "n1") -> ServiceRecord:
    return ServiceRecord(name="greeter", version="1.0.0", nodes=[Node(id=node, address="127.0.0.1:1")])


async def node_ids(registry: Registry) -> set[str]:
    return {n.id for s in await registry.get_service("greeter") for n in s.nodes}


@pytest.fixture
async def breakable() -> AsyncIterator[Breakable]:
    async with registry_from_url(f"memory://registration-{uuid.uuid4().hex}") as inner:
        yield Breakable(inner)


def warnings_of(logs: list[dict[str, object]]) -> list[str]:
    return [str(e["message"]) for e in logs if e["level"] == "WARNING"]


async def test_the_heartbeat_re_registers_with_backoff_and_logs_once_each_way(breakable: Breakable) -> None:
    ttl = 1.5
    registration = Registration(breakable, record, ttl=ttl, drain_delay=0)
    await registration.start()
    try:
        assert await node_ids(breakable.inner) == {"n1"}
        assert repr(breakable) in repr(registration) and "greeter" in repr(registration)
        with capture_logs(logging.DEBUG, logger="microweave.service") as logs:
            breakable.register_broken = RegistryError("registry down")

            async def expired() -> bool:
                return not await node_ids(breakable.inner)

            await async_wait_until(
                expired, timeout=WAIT, what="the node to expire while the registry is away"
            )
            before = breakable.registers
            await asyncio.sleep(2.0)
            attempts = breakable.registers - before
            # retries back off up to min(ttl/3, 2 s) = 0.5 s, jittered down to half: <= ~9 in 2 s
            assert 2 <= attempts <= 10, f"{attempts} attempts in 2 s"

            breakable.register_broken = None
            returned = time.monotonic()

            async def back() -> bool:
                return await node_ids(breakable.inner) == {"n1"}

            await async_wait_until(back, timeout=WAIT, what="the node to be registered again")
            assert time.monotonic() - returned <= ttl + BACK_WITHIN
            await asyncio.sleep(ttl)  # beats go on as usual: nothing more is logged
        said = warnings_of(logs)
        assert len(said) == 2, said
        assert "unreachable" in said[0] and repr(breakable) in said[0]
        assert "reachable again" in said[1]
        assert all("exception" not in e for e in logs)
    finally:
        await registration.stop()
    assert await node_ids(breakable.inner) == set()


async def test_start_gives_up_at_once_on_what_waiting_does_not_fix(breakable: Breakable) -> None:
    # bad credentials: a registry error that is not "unavailable"
    breakable.register_broken = RegistryError("etcd://h:2379: authentication failed", code=401)
    registration = Registration(breakable, record, ttl=3, drain_delay=0, start_timeout=30)
    with pytest.raises(RegistryError, match="authentication failed"):
        await registration.start()
    breakable.register_broken = ConfigurationError("bad URL option")
    with pytest.raises(ConfigurationError):
        await registration.start()
    # an in-process (or on-disk) registry has nobody to wait for either
    breakable.register_broken = RegistryError("cannot write the local registry")
    with pytest.raises(RegistryError):
        await registration.start()
    assert breakable.registers == 3


# -- over a real etcd ------------------------------------------------------------------------


async def test_start_waits_for_etcd_that_comes_up_late(tmp_path: pytest.TempPathFactory) -> None:
    server = EtcdServer(tmp_path)  # ports chosen, not started yet
    url = server.url("/late")
    try:
        async with registry_from_url(url) as registry:
            registration = Registration(registry, record, ttl=2, drain_delay=0, start_timeout=60)
            with capture_logs(logging.WARNING, logger="microweave.service") as logs:
                starting = asyncio.ensure_future(registration.start())
                await asyncio.sleep(1.0)
                assert not starting.done()
                await asyncio.to_thread(server.start)
                await asyncio.wait_for(starting, WAIT)
            try:
                assert await node_ids(registry) == {"n1"}
            finally:
                await registration.stop()
        said = warnings_of(logs)
        assert len(said) == 2 and url in said[0] and "reachable again" in said[1], said
    finally:
        server.stop()


async def test_start_gives_up_after_its_timeout_naming_the_registry(tmp_path: pytest.TempPathFactory) -> None:
    server = EtcdServer(tmp_path)  # never started: nothing listens on its port
    url = server.url("/never")
    async with registry_from_url(url) as registry:
        registration = Registration(registry, record, ttl=2, drain_delay=0, start_timeout=1.5)
        with pytest.raises(RegistryError) as raised:
            await asyncio.wait_for(registration.start(), WAIT)
    assert url in raised.value.detail and "tried for 1.5 s" in raised.value.detail, raised.value.detail


class Hello(msgspec.Struct):
    name: str


class Greeter:
    async def say_hello(self, req: Hello) -> Hello:
        return Hello(name=f"hello {req.name}")


async def test_etcd_away_calls_served_from_the_cache_and_the_node_back_after_an_empty_restart(
    tmp_path: pytest.TempPathFactory,
) -> None:
    """etcd stops for longer than the TTL under a load of calls: none fails (the nodes are
    cached), and the node is listed within TTL + 2 s of etcd's return. Then etcd comes back
    having lost everything (killed, data wiped): the node is registered again within TTL + 2 s
    (calls may fail meanwhile: the registry says, truthfully, that there is no node)."""
    ttl = 2.0
    server = EtcdServer(tmp_path).start()
    url = server.url("/outage")
    try:
        greeter = Service("greeter", registry=url, ttl=ttl, drain_delay=0, grace=2)
        greeter.handler(Greeter)
        async with greeter, Client(registry=url, transports=("tcp",), timeout=5) as client:
            reply = await client.call("greeter", "Greeter.SayHello", Hello("a"), response=Hello)
            assert reply == Hello("hello a")
            failures: list[BaseException] = []
            calls = 0
            running = True

            async def load() -> None:
                nonlocal calls
                while running:
                    try:
                        await client.call("greeter", "Greeter.SayHello", Hello("b"), response=Hello)
                    except Exception as exc:
                        failures.append(exc)
                    calls += 1
                    await asyncio.sleep(0.01)

            async def back_within(bound: float) -> None:
                returned = time.monotonic()
                async with registry_from_url(url) as reader:

                    async def listed() -> bool:
                        try:
                            return greeter.node_id in await node_ids(reader)
                        except RegistryError:  # the reader's own connection may lag behind
                            return False

                    await async_wait_until(listed, timeout=WAIT, what="the node to be listed again")
                back_after = time.monotonic() - returned
                assert back_after <= bound, f"listed only {back_after:.2f} s after etcd returned"

            loader = asyncio.ensure_future(load())
            try:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(2 * ttl)
                await asyncio.to_thread(server.start)
                await back_within(ttl + BACK_WITHIN)
                await asyncio.sleep(0.5)
                assert failures == [], f"{len(failures)} of {calls} calls failed: {failures[:3]}"
                assert calls > 100

                await asyncio.to_thread(server.engine.kill)
                shutil.rmtree(tmp_path / "data")  # etcd comes back empty: leases and keys gone
                await asyncio.sleep(1.0)
                await asyncio.to_thread(server.start)
                await back_within(ttl + BACK_WITHIN)
            finally:
                running = False
                await loader
    finally:
        server.stop()


async def test_cache_and_registration_name_the_registry_without_credentials(
    tmp_path: pytest.TempPathFactory,
) -> None:
    server = EtcdServer(tmp_path)  # not started: only names are looked at
    async with registry_from_url(f"etcd://{server.address}/names?username=u&password=s3cret-pw") as registry:
        cache = RegistryCache(registry)
        registration = Registration(registry, record, ttl=2, drain_delay=0)
        for text in (repr(cache), repr(registration)):
            assert f"etcd://{server.address}/names" in text and "s3cret" not in text, text
        await cache.aclose()
