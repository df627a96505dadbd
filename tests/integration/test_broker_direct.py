"""`direct://`, the default broker, as users run it: services in processes of their own finding
each other's subscribers in a `local://` registry, a publisher process calling them; and in
process, a Service's own node serving its subscribers, the publish timeout, and a registry
outage on a real etcd. The broker contract itself is the conformance suite's
(`tests/conformance/test_broker.py -k direct`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
from broker_kit import WAIT, Inbox, open_broker, unique_topic
from engines.etcd import EtcdServer
from helpers import REPO, ServiceProcess, ServiceProcesses, local_nodes, wait_until

from microweave import Call, Client, MessageContext, ServerMiddleware, Service
from microweave._backends import load_broker
from microweave.broker import Event
from microweave.broker.direct import DirectBroker
from microweave.errors import BrokerError, ConfigurationError, NotImplementedError_
from microweave.middleware import UnaryNext
from microweave.testing import capture_logs

TOPIC: Final = "orders.created"

# A service with subscribers, run as `python node.py ROLE NAME`: a "worker" listens on TOPIC in
# the queue group "workers" and, like every role, on TOPIC for every node ("tap"); one JSON line
# per event it gets.
NODE_SCRIPT: Final = """
import json
import sys

import msgspec

from microweave import MessageContext, Service


class Order(msgspec.Struct):
    n: int


role, name = sys.argv[1], sys.argv[2]
service = Service(name)


def say(subscriber: str, order: Order, ctx: MessageContext) -> None:
    line = {"subscriber": subscriber, "id": ctx.id, "n": order.n, "queue": ctx.queue}
    print(json.dumps(line), flush=True)


if role == "worker":

    @service.subscriber("orders.created", queue="workers")
    async def work(order: Order, ctx: MessageContext) -> None:
        say("work", order, ctx)


@service.subscriber("orders.created")
async def tap(order: Order, ctx: MessageContext) -> None:
    say("tap", order, ctx)


service.run()
"""

# A publisher process: one JSON command per stdin line ({"n": 1} or {"raw": "..."}), one line
# {"id": ...} back per publish, on the broker and registry of its environment.
PUBLISHER_SCRIPT: Final = """
import asyncio
import json
import logging
import sys

from microweave import Client


async def main() -> None:
    loop = asyncio.get_running_loop()
    async with Client(name="orders-publisher") as client:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            body = command["raw"].encode() if "raw" in command else json.dumps(command).encode()
            message_id = await client.publish("orders.created", body)
            print(json.dumps({"id": message_id}), flush=True)


logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
asyncio.run(main())
"""


class Publisher:
    """The publisher process, driven line by line; stopped by PID."""

    def __init__(self, script: Path, *, registry: Path, log_path: Path) -> None:
        env = {
            **os.environ,
            "MICRO_REGISTRY": "local",
            "MICRO_REGISTRY_ADDRESS": str(registry),
            "MICRO_BROKER": "direct://",
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=REPO,
        )  # fmt: skip
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    def publish(self, command: dict[str, Any]) -> str:
        """Publish one event; its Micro-Id once the publish returned."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        if not self._selector.select(timeout=WAIT):
            raise AssertionError(f"the publisher did not answer within {WAIT}s:\n{self.output()}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the publisher exited with {self.proc.poll()}:\n{self.output()}")
        return str(json.loads(line)["id"])

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._selector.close()
        self._log.close()


def events_of(process: ServiceProcess, subscriber: str) -> list[dict[str, Any]]:
    lines = [line for line in process.output().splitlines() if line.startswith("{")]
    return [e for e in map(json.loads, lines) if e["subscriber"] == subscriber]


def ids_of(process: ServiceProcess, subscriber: str) -> list[str]:
    return [e["id"] for e in events_of(process, subscriber)]


class Fleet:
    """Two workers (queue group "workers", and a tap each), one audit node (a tap only) and a
    publisher, each a process of its own on one private local:// registry."""

    def __init__(self, processes: ServiceProcesses, tmp_path: Path) -> None:
        node = tmp_path / "node.py"
        node.write_text(NODE_SCRIPT)
        publisher = tmp_path / "publisher.py"
        publisher.write_text(PUBLISHER_SCRIPT)
        env = {"MICRO_BROKER": "direct://"}
        self.workers = [
            processes.start(node, "worker", "order-workers", name="order-workers", env=env) for _ in range(2)
        ]
        self.audit = processes.start(node, "audit", "order-audit", name="order-audit", env=env)
        self.publisher = Publisher(
            publisher, registry=processes.registry, log_path=tmp_path / "publisher.log"
        )

    @property
    def taps(self) -> list[ServiceProcess]:
        return [*self.workers, self.audit]

    def worked(self) -> list[str]:
        return [i for w in self.workers for i in ids_of(w, "work")]

    def wait_for(self, ids: list[str], *, workers: list[ServiceProcess] | None = None) -> None:
        """Until the group worked each of `ids` and every tap saw each."""
        wanted = set(ids)

        def arrived() -> bool:
            worked = {i for w in (workers or self.workers) for i in ids_of(w, "work")}
            return wanted <= worked and all(wanted <= set(ids_of(t, "tap")) for t in self.taps if t.alive())

        wait_until(arrived, timeout=WAIT, what="the events to reach the group and every tap")


@pytest.fixture
def fleet(processes: ServiceProcesses, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(processes, tmp_path)
    try:
        yield fleet
    finally:
        fleet.publisher.stop()


def test_group_members_in_processes_share_the_events_and_every_broadcast_node_gets_each(fleet: Fleet) -> None:
    ids = [fleet.publisher.publish({"n": n}) for n in range(20)]
    fleet.wait_for(ids)
    time.sleep(1.0)  # anything still in flight (a duplicate would be) arrives meanwhile
    worked = fleet.worked()
    assert sorted(worked) == sorted(ids), "each event to one member of the group: none lost, none twice"
    assert all(ids_of(w, "work") for w in fleet.workers), "both members of the group take events"
    for tap in fleet.taps:
        assert sorted(ids_of(tap, "tap")) == sorted(ids), f"every broadcast node gets each: {tap.name}"
    queues = {e["queue"] for w in fleet.workers for e in events_of(w, "work")}
    assert queues == {"workers"}


def test_a_payload_that_does_not_decode_is_logged_with_its_id_and_consuming_goes_on(fleet: Fleet) -> None:
    before = fleet.publisher.publish({"n": 1})
    poison = fleet.publisher.publish({"raw": "{not json"})
    after = [fleet.publisher.publish({"n": n}) for n in range(2, 6)]
    fleet.wait_for([before, *after])

    def logged(process: ServiceProcess) -> int:
        return sum(poison in line and "does not decode" in line for line in process.output().splitlines())

    # the group's member that got it and each of the three taps logged it, with its id
    wait_until(lambda: sum(map(logged, fleet.taps)) >= 4, timeout=WAIT, what="the poison event to be logged")
    assert logged(fleet.audit) == 1
    assert sum(logged(w) for w in fleet.workers) == 3, "one member of the group, and both taps"
    assert poison not in fleet.worked()
    assert "Traceback" not in "".join(p.output() for p in fleet.taps), "a bad payload is no crash"


def test_a_killed_group_member_is_not_picked_anymore(fleet: Fleet, processes: ServiceProcesses) -> None:
    first = [fleet.publisher.publish({"n": n}) for n in range(4)]
    fleet.wait_for(first)
    dead, alive = fleet.workers
    dead.signal(signal.SIGKILL)
    dead.wait(WAIT)
    # still listed until its registry TTL runs out: publishers find out by calling it
    assert dead.node_id in {n["id"] for n in local_nodes(processes.registry, "order-workers")}
    later = [fleet.publisher.publish({"n": n}) for n in range(4, 14)]
    fleet.wait_for(later, workers=[alive])
    assert sorted(i for i in ids_of(alive, "work") if i in later) == sorted(later), (
        "every event after the crash reaches the member left: none lost, none twice"
    )
    tried_dead = fleet.publisher.output().count("cannot reach")
    assert 1 <= tried_dead < len(later), "the dead member is set aside, not tried for every event"


# -- in process ------------------------------------------------------------------------------------


class Order(msgspec.Struct):
    n: int
    note: str = ""


class SeenTransports(ServerMiddleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        self.seen.append((call.endpoint, call.transport))
        return await call_next(call)


@pytest.fixture
def registry_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


async def test_a_service_subscriber_is_served_by_its_own_node_bounded_by_max_in_flight(
    registry_url: str,
) -> None:
    seen = SeenTransports()
    service = Service("shop", registry=registry_url, broker="direct://", middleware=[seen])
    release = asyncio.Event()
    got: list[tuple[Order, str | None, str]] = []
    running, most = 0, 0

    @service.subscriber("order.placed", queue="packers", max_in_flight=2)
    async def pack(order: Order, ctx: MessageContext) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            got.append((order, ctx.queue, ctx.id))
            await release.wait()
        finally:
            running -= 1

    async with service:
        publishing = asyncio.gather(*(service.client.publish("order.placed", Order(n=n)) for n in range(5)))
        async with asyncio.timeout(WAIT):
            while len(got) < 2:  # noqa: ASYNC110 - the subscriber fills the list
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        assert most == 2 and len(got) == 2, "two handlers run; the other deliveries wait for a slot"
        assert not publishing.done(), "publish waits for the handlers"
        release.set()
        ids = await asyncio.wait_for(publishing, WAIT)
        assert most == 2
        # the service's own node serves its subscribers: nothing else registered
        assert [s.name for s in await service.registry.list_services()] == ["shop"]
        (node,) = [n for r in await service.registry.get_service("shop") for n in r.nodes]
        assert node.metadata["broker"] == "direct"
    assert sorted(o.n for o, _, _ in got) == list(range(5))
    assert {q for _, q, _ in got} == {"packers"}
    assert sorted(i for _, _, i in got) == sorted(ids)
    assert ("Subscriber.Pack", "direct") in seen.seen, "the middleware sees each event"


async def test_a_subscriber_path_refuses_calls_when_its_broker_is_not_direct(registry_url: str) -> None:
    service = Service("shop", registry=registry_url, broker=f"memory://{uuid.uuid4().hex}")
    got: list[Order] = []

    @service.subscriber("order.placed")
    async def pack(order: Order) -> None:
        got.append(order)

    async with service, Client(registry=registry_url) as client:
        with pytest.raises(NotImplementedError_, match="takes no direct:// events"):
            await client.call("shop", "Subscriber.Pack", Order(n=1))
    assert got == [], "refused unrun"


async def test_publish_gives_up_waiting_after_its_timeout_and_the_handler_runs_on(registry_url: str) -> None:
    topic = unique_topic()
    release, finished = asyncio.Event(), asyncio.Event()

    async def slow(event: Event) -> None:
        await release.wait()
        finished.set()

    inbox = Inbox(slow)
    async with (
        open_broker("direct://", registry=registry_url) as subscriber,
        open_broker("direct://?timeout=0.5", registry=registry_url) as publisher,
    ):
        await subscriber.subscribe(topic, inbox)
        with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
            sent = await asyncio.wait_for(publisher.publish(topic, Order(n=1)), WAIT)
        assert any(sent in e["message"] and "may still be running" in e["message"] for e in logs)
        assert not finished.is_set()
        release.set()
        await asyncio.wait_for(finished.wait(), WAIT)
    assert inbox.ids == [sent]


async def test_no_subscriber_is_nothing_to_do_and_a_fresh_one_is_found_at_once(registry_url: str) -> None:
    topic = unique_topic()
    async with (
        open_broker("direct://", registry=registry_url) as publisher,
        open_broker("direct://", registry=registry_url) as subscriber,
    ):
        with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
            first = await publisher.publish(topic, Order(n=0))  # nobody listens: nothing raised
            await publisher.publish(topic, Order(n=0))
        said = [e["message"] for e in logs if topic in e["message"]]
        assert len(said) == 1 and first in said[0] and "no subscriber" in said[0], "said once, with the id"
        inbox = Inbox()
        await subscriber.subscribe(topic, inbox)
        sent = await publisher.publish(topic, Order(n=1))  # the same publisher, at once
        assert (await inbox.wait(1))[0].id == sent


async def test_headers_arrive_exactly_as_published_over_tcp(registry_url: str) -> None:
    topic = unique_topic()
    inbox = Inbox()
    headers = {"X-Tenant": "acme", "timeout": "7", "x-content-type": "kept", "Trace": "ünïcode"}
    async with (
        open_broker("direct://", registry=registry_url) as subscriber,
        Client(registry=registry_url, transports=("tcp",), broker="direct://") as client,
    ):
        await subscriber.subscribe(topic, inbox)
        sent = await client.publish(topic, b"\x00raw", headers=headers)
        (event,) = await inbox.wait(1)
        with pytest.raises(BrokerError, match=r"headers take .* bytes; direct:// carries at most"):
            await client.publish(topic, b"", headers={"X-Big": "x" * 60_000})
    assert event.headers == {
        **headers, "Content-Type": "application/json", "Micro-Id": sent, "Micro-Topic": topic,
    }  # fmt: skip
    assert event.body == b"\x00raw"


async def test_a_standalone_subscription_is_a_record_of_its_own_until_unsubscribed(registry_url: str) -> None:
    async with (
        open_broker("direct://", registry=registry_url) as broker,
        Client(registry=registry_url) as reader,
    ):
        sub = await broker.subscribe("order.placed", Inbox(), queue="packers")
        (record,) = await reader.registry.list_services()
        assert record.name.startswith("broker-kit-subscriber-")
        (described,) = await reader.registry.get_service(record.name)
        (endpoint,) = described.endpoints
        assert endpoint.metadata == {"topic": "order.placed", "subscriber": "true", "queue": "packers"}
        assert [n.metadata["broker"] for n in described.nodes] == ["direct"]
        await sub.unsubscribe()
        assert await reader.registry.list_services() == []


async def test_its_own_node_advertises_micro_advertise_address(
    registry_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bound to loopback, advertised by name, as a Service's listeners are (test_advertise.py)
    monkeypatch.setenv("MICRO_ADVERTISE_ADDRESS", "localhost")
    async with (
        open_broker("direct://", registry=registry_url) as broker,
        Client(registry=registry_url) as reader,
    ):
        await broker.subscribe("order.placed", Inbox())
        (record,) = await reader.registry.list_services()
        (described,) = await reader.registry.get_service(record.name)
        assert [n.metadata["tcp_address"].rpartition(":")[0] for n in described.nodes] == ["localhost"]


async def test_a_taken_address_fails_the_subscription_clearly(registry_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with open_broker(f"direct://127.0.0.1:{port}", registry=registry_url) as broker:
            with pytest.raises(BrokerError, match=r"broker direct://: subscribe to order\.placed failed"):
                await broker.subscribe("order.placed", Inbox())


def test_url_options_are_read_and_mistakes_refused() -> None:
    broker = load_broker("direct://127.0.0.1:0?timeout=5&refresh=2&ttl=9&register_timeout=1&max_deliveries=3")
    assert isinstance(broker, DirectBroker)
    assert (broker.timeout, broker.refresh, broker.ttl, broker.register_timeout) == (5.0, 2.0, 9.0, 1.0)
    assert broker.max_deliveries == 3 and broker.guarantee == "at-most-once" and not broker.redelivers
    with pytest.raises(ConfigurationError, match=r"tmeout.*known: .*timeout"):
        load_broker("direct://?tmeout=5")
    with pytest.raises(ConfigurationError, match="timeout must be a positive"):
        load_broker("direct://?timeout=0")
    with pytest.raises(ConfigurationError, match="one address"):
        load_broker("direct://a:1,b:2")


async def test_without_a_client_it_says_how_to_bind_one() -> None:
    broker = load_broker("direct://")
    with pytest.raises(ConfigurationError, match=r"client\.broker"):
        await broker.publish("t", b"{}")


# -- registry outage --------------------------------------------------------------------------------


async def test_a_registry_outage_keeps_known_subscribers_reachable(etcd_own: EtcdServer) -> None:
    registry = etcd_own.url(f"/direct-{uuid.uuid4().hex[:8]}")
    got: list[int] = []
    service = Service("stock", registry=registry, broker="direct://", drain_delay=0)

    @service.subscriber("order.placed", queue="stock")
    async def reserve(order: Order) -> None:
        got.append(order.n)

    async with service, Client(registry=registry, name="shop") as client:
        await client.publish("order.placed", Order(n=1))
        etcd_own.stop()
        try:
            await asyncio.wait_for(client.publish("order.placed", Order(n=2)), WAIT)
            async with Client(registry=registry, name="newcomer", broker="direct://?timeout=5") as newcomer:
                with pytest.raises(
                    BrokerError, match=r"broker direct://: publish to order\.placed failed.*etcd"
                ):
                    await asyncio.wait_for(newcomer.publish("order.placed", Order(n=3)), WAIT)
        finally:
            etcd_own.start()
    assert got == [1, 2], "the publisher that knew the subscriber kept reaching it"


async def test_subscribers_on_another_broker_are_named_to_a_publisher_that_finds_nobody(
    registry_url: str,
) -> None:
    """A publisher on direct:// and a subscriber on another broker never meet: the publisher is
    told so, naming the subscriber's broker, instead of dropping every event in silence."""
    topic = unique_topic()
    elsewhere = Service("elsewhere", registry=registry_url, broker=f"memory://{uuid.uuid4().hex}")

    @elsewhere.subscriber(topic)
    async def handle(order: Order) -> None: ...

    async with elsewhere, open_broker("direct://", registry=registry_url) as publisher:
        with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
            sent = await publisher.publish(topic, Order(n=1))
    said = [e["message"] for e in logs if sent in e["message"]]
    assert len(said) == 1 and "memory broker" in said[0] and "MICRO_BROKER" in said[0]
