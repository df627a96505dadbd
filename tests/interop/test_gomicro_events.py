"""go-micro v5 services and microweave services exchange events, both ways, on NATS and RabbitMQ.

The go-micro side is the real go-micro v5.12.0 peer (tests/interop/gomicro/broker, driven by
gomicro_broker.py): micro.NewEvent(topic, client).Publish and micro.RegisterSubscriber with a
typed handler, the way go-micro users write them. The microweave side is a `Service` with an
`@service.subscriber` typed as a msgspec Struct shaped like the Go struct, and
`service.client.publish`. Both run against a real nats-server / RabbitMQ.

What go-micro puts on the wire and what it accepts is pinned in test_gomicro_broker_wire.py;
here both frameworks meet end to end:

- go-micro -> microweave: every event arrives decoded, with go-micro's headers readable
  (Micro-ID as the context's id, Micro-Topic, the publisher's own metadata, case kept);
- microweave -> go-micro: every event reaches go-micro's typed handler, which drops anything
  whose `Content-Type` is not exactly `application/json`, with the headers as sent;
- NATS: a go-micro subscriber and a microweave subscriber in the same queue group share the
  events, each exactly once between them (both are plain NATS queue subscriptions);
- RabbitMQ: a go-micro group and a microweave group of the same name are different queues
  (go-micro's are auto-delete queues named as the group, microweave's durable ones of its own
  naming), so each group gets every event, once.

Readiness is measured, as the Go peer does it: a microweave subscriber is live once a probe it
published itself (header `Micro-Peer-Probe`, which every Go peer drops) has come back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from engines.nats import NatsServer
from engines.rabbitmq import RABBITMQ_SCRIPTS, RabbitMQServer
from gomicro_broker import PROBE_HEADER, BrokerTarget, GoSubscriber, go_publish, go_subscriber
from helpers import async_wait_until

from microweave import MessageContext, Service
from microweave.broker import dead_letter_topic

#: go-micro's Micro-ID: a random UUID v4, lower case
GO_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
GO_TEXT = "hello from go-micro"
MW_TEXT = "hello from microweave"
CUSTOM = {"X-Custom": "abc", "x-lower": "v"}


class Message(msgspec.Struct):
    """The Go peer's `Message{N int; From string; Text string}` as its JSON codec spells it.
    Fields default to Go's zero values, as encoding/json fills in missing ones (a probe is `{}`)."""

    n: int = 0
    sender: str = msgspec.field(default="", name="from")
    text: str = ""


@dataclass(frozen=True)
class Engine:
    """One engine as each side is pointed at it."""

    kind: str  # nats | rabbitmq
    go: BrokerTarget
    microweave: str  # the broker URL a Service takes


@pytest.fixture(params=["nats", "rabbitmq"])
def events_engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "nats":
        return nats_engine_of(request.getfixturevalue("nats_engine"))
    return rabbitmq_engine_of(request.getfixturevalue("rabbitmq_shared"))


def nats_engine_of(server: NatsServer) -> Engine:
    return Engine("nats", BrokerTarget("nats", server.url), server.url)


def rabbitmq_engine_of(server: RabbitMQServer) -> Engine:
    return Engine(
        "rabbitmq", BrokerTarget("rabbitmq", server.url), f"rabbitmq://guest:guest@{server.address}/"
    )


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    path = tmp_path / "peers"
    path.mkdir()
    return path


def topic_name() -> str:
    return f"mw.events.{uuid.uuid4().hex[:10]}"


# -- the microweave side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One event as a microweave subscriber saw it."""

    message: Message
    id: str  # ctx.id
    micro_id: str | None  # ctx.event.header("micro-id")
    topic: str  # ctx.topic
    attempt: int
    headers: dict[str, str]


@dataclass
class MicroweaveSubscriber:
    service: Service
    topic: str
    got: list[Received] = field(default_factory=list)
    probes: set[str] = field(default_factory=set)

    def numbers(self) -> list[int]:
        return sorted(r.message.n for r in self.got)

    async def live(self) -> None:
        """Publish probes on the topic until one comes back to this subscriber."""
        probe = uuid.uuid4().hex

        async def came_back() -> bool:
            if probe not in self.probes:
                await self.service.client.publish(self.topic, Message(), headers={PROBE_HEADER: probe})
                await asyncio.sleep(0.2)
            return probe in self.probes

        await async_wait_until(
            came_back, timeout=30, interval=0, what=f"the microweave subscriber of {self.topic}"
        )

    async def wait_for(self, count: int, what: str) -> None:
        async def enough() -> bool:
            return len(self.got) >= count

        await async_wait_until(enough, timeout=30, what=what)


def new_service(engine: Engine) -> Service:
    unique = uuid.uuid4().hex[:8]
    return Service(f"mw-events-{unique}", registry=f"memory://{unique}", broker=engine.microweave)


@contextlib.asynccontextmanager
async def microweave_subscriber(
    engine: Engine, topic: str, *, queue: str | None = None
) -> AsyncIterator[MicroweaveSubscriber]:
    """A running microweave Service whose typed subscriber records each event (probes aside),
    live when entered."""
    service = new_service(engine)
    side = MicroweaveSubscriber(service, topic)

    @service.subscriber(topic, queue=queue)
    async def on_message(message: Message, ctx: MessageContext) -> None:
        probe = ctx.event.header(PROBE_HEADER)
        if probe is not None:
            side.probes.add(probe)
            return
        side.got.append(
            Received(
                message=message,
                id=ctx.id,
                micro_id=ctx.event.header("micro-id"),
                topic=ctx.topic,
                attempt=ctx.attempt,
                headers=dict(ctx.headers),
            )
        )

    async with service:
        await side.live()
        yield side


async def microweave_publish(service: Service, topic: str, numbers: range) -> dict[int, str]:
    """Publish Message{n, "microweave", MW_TEXT} for each n with the custom headers; n -> Micro-Id."""
    return {
        n: await service.client.publish(topic, Message(n, "microweave", MW_TEXT), headers=CUSTOM)
        for n in numbers
    }


def go_numbers(*subscribers: GoSubscriber) -> list[int]:
    return sorted(e["body"]["n"] for s in subscribers for e in s.events())


async def until(what: str, condition: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return condition()

    await async_wait_until(holds, timeout=30, what=what)


# -- both engines -------------------------------------------------------------------------------


async def test_gomicro_events_reach_a_typed_microweave_subscriber(events_engine: Engine) -> None:
    topic, count = topic_name(), 20
    async with microweave_subscriber(events_engine, topic) as mw:
        published = await go_publish(events_engine.go, topic, count=count, headers=CUSTOM)
        assert len(published) == count
        await mw.wait_for(count, f"{count} go-micro events at the microweave subscriber")
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up by now
        got = list(mw.got)

    assert mw.numbers() == list(range(count))
    ids = set()
    for received in got:
        assert received.message == Message(received.message.n, "go-micro", GO_TEXT)
        assert received.topic == topic
        assert received.attempt == 1
        # go-micro spells it Micro-ID; microweave reads it whatever its case
        assert GO_ID.match(received.id), received
        assert received.micro_id == received.id == received.headers["Micro-ID"]
        assert (
            received.headers.items()
            >= {"Content-Type": "application/json", "Micro-Topic": topic, **CUSTOM}.items()
        )
        assert "X-Lower" not in received.headers  # case kept as go-micro sent it
        ids.add(received.id)
    assert len(ids) == count


async def test_microweave_events_reach_a_typed_gomicro_subscriber(events_engine: Engine, logs: Path) -> None:
    topic, count = topic_name(), 20
    async with go_subscriber(events_engine.go, topic, logs) as go:
        async with new_service(events_engine) as service:
            ids = await microweave_publish(service, topic, range(count))
        await go.wait_for(count - 1)
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up by now
        events = go.events()

    assert go_numbers(go) == list(range(count)), go.log()
    assert len(set(ids.values())) == count
    for event in events:
        n = event["body"]["n"]
        assert event["topic"] == topic
        assert event["body"] == {"n": n, "from": "microweave", "text": MW_TEXT}
        headers = event["headers"]
        # go-micro's typed handler decodes only with this exact key and value
        assert headers["Content-Type"] == "application/json"
        assert headers["Micro-Topic"] == topic
        assert headers["Micro-Id"] == ids[n]
        assert headers.items() >= CUSTOM.items()
    assert "unsupported Content-Type" not in go.log() and "invalid message" not in go.log()


# -- NATS: one queue group, both languages ------------------------------------------------------


async def test_nats_queue_group_shared_by_gomicro_and_microweave(nats_engine: NatsServer, logs: Path) -> None:
    engine = nats_engine_of(nats_engine)
    topic, group, half = topic_name(), f"group-{uuid.uuid4().hex[:6]}", 50
    async with (
        go_subscriber(engine.go, topic, logs, queue=group) as go,
        microweave_subscriber(engine, topic, queue=group) as mw,
    ):
        await go_publish(engine.go, topic, count=half, headers=CUSTOM)  # n = 0 .. 49
        await microweave_publish(mw.service, topic, range(half, 2 * half))  # n = 50 .. 99
        await until("100 events in the group", lambda: len(go.events()) + len(mw.got) >= 2 * half)
        await asyncio.sleep(0.3)
        on_go, on_mw = go_numbers(go), mw.numbers()

    # each event exactly once between the two members, and both members got some
    assert sorted(on_go + on_mw) == list(range(2 * half))
    assert on_go and on_mw, (on_go, on_mw)
    # each member got events from both languages (50 each way, split at random)
    assert {n < half for n in on_go} == {n < half for n in on_mw} == {True, False}


# -- RabbitMQ: a go-micro group and a microweave group of the same name -------------------------


async def test_rabbitmq_gomicro_and_microweave_groups_each_get_every_event(
    rabbitmq_shared: RabbitMQServer, logs: Path
) -> None:
    engine = rabbitmq_engine_of(rabbitmq_shared)
    topic, group, half = topic_name(), f"group-{uuid.uuid4().hex[:6]}", 20
    ours = f"microweave:{group}:{topic}"  # microweave's group queue (go-micro's is `group`)
    try:
        async with (
            go_subscriber(engine.go, topic, logs, queue=group) as go_one,
            go_subscriber(engine.go, topic, logs, queue=group) as go_two,
            microweave_subscriber(engine, topic, queue=group) as mw_one,
            microweave_subscriber(engine, topic, queue=group) as mw_two,
        ):
            await go_publish(engine.go, topic, count=half, headers=CUSTOM)  # n = 0 .. 19
            await microweave_publish(mw_one.service, topic, range(half, 2 * half))  # n = 20 .. 39
            await until(
                "the go-micro group's events", lambda: len(go_one.events() + go_two.events()) >= 2 * half
            )
            await until("the microweave group's events", lambda: len(mw_one.got + mw_two.got) >= 2 * half)
            await asyncio.sleep(0.3)  # anything extra (a duplicate) would show up by now
            go_group = (go_numbers(go_one), go_numbers(go_two))
            mw_group = (mw_one.numbers(), mw_two.numbers())
            bindings = await rabbitmqctl(
                rabbitmq_shared, "list_bindings", "source_name", "destination_name", "routing_key"
            )
            queues = {q["name"]: q for q in await rabbitmqctl(rabbitmq_shared, "list_queues", *QUEUE_FIELDS)}
            consumers = await rabbitmqctl(rabbitmq_shared, "list_consumers", "queue_name")
            exchanges = await rabbitmqctl(
                rabbitmq_shared, "list_exchanges", "name", "type", "durable", "auto_delete"
            )
    finally:  # our group's queues are durable: this test's to remove
        for queue in (ours, dead_letter_topic(ours)):
            await rabbitmqctl(rabbitmq_shared, "delete_queue", queue, check=False)

    everything = list(range(2 * half))
    # each group got every event exactly once, shared between its two members
    assert sorted(go_group[0] + go_group[1]) == everything
    assert sorted(mw_group[0] + mw_group[1]) == everything
    assert all(go_group) and all(mw_group), (go_group, mw_group)

    # how: go-micro's queue bound to the topic on `micro`, which both sides declare alike; ours
    # on microweave's durable `microweave:micro` (bindings to a non-durable exchange are lost
    # when RabbitMQ restarts), which takes everything `micro` gets
    on_topic = {(b["source_name"], b["destination_name"]) for b in bindings if b["routing_key"] == topic}
    assert on_topic == {("micro", group), ("microweave:micro", ours)}
    assert {"source_name": "micro", "destination_name": "microweave:micro", "routing_key": "#"} in bindings
    assert [e for e in exchanges if e["name"] == "micro"] == [
        {"name": "micro", "type": "topic", "durable": False, "auto_delete": False}
    ]
    # go-micro's named as the group and gone with its subscribers; ours durable and named apart
    assert [queues[group][k] for k in QUEUE_FIELDS] == [group, False, True, "classic"]
    assert [queues[ours][k] for k in QUEUE_FIELDS] == [ours, True, False, "quorum"]
    # two members on each (list_queues' consumer count lags for quorum queues)
    assert sorted(c["queue_name"] for c in consumers if c["queue_name"] in (group, ours)) == sorted(
        [group, group, ours, ours]
    )


QUEUE_FIELDS = ("name", "durable", "auto_delete", "type")


async def rabbitmqctl(server: RabbitMQServer, *args: str, check: bool = True) -> list[dict[str, Any]]:
    """One rabbitmqctl command on the server; the rows of a `list_*` one."""
    argv = [str(RABBITMQ_SCRIPTS / "rabbitmqctl"), "-n", server.node, "-q", *args]
    if args[0].startswith("list_"):
        argv += ["--formatter", "json"]
    done = await asyncio.to_thread(
        subprocess.run, argv, env=server.env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 or not check, f"{argv}: {done.stderr}"
    rows: list[dict[str, Any]] = (
        json.loads(done.stdout) if args[0].startswith("list_") and done.stdout else []
    )
    return rows
