"""`redis://` (Redis Streams, at least once) on a real redis-server with AOF: the issue's
must-shows, and what the conformance suite cannot show with one process.

A consumer SIGKILLed while holding unacknowledged entries: while it lives nobody takes them
(it keeps them touched); killed, another member of its group claims every one after
`claim_idle`. Redis SIGKILLed and restarted under a publisher: every publish that returned is
consumed, duplicates counted and bounded. A poison payload, an always-failing event and an entry
some other writer put on the stream go to the dead-letter stream while consuming goes on. A
server that is down at start or during a publish is a clear error naming the URL (never the
password) after bounded retries, and publishing works again once it is back. Credentials, TLS,
bounded streams, the groups an unsubscribe leaves behind, and a typed `@service.subscriber`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from broker_kit import Inbox, deliveries, open_broker, settle_time, start_consumer, unique_topic
from engines import Engine, find_binary, free_port
from engines.redis import RedisServer
from helpers import async_wait_until, wait_until

from microweave import MessageContext, Service
from microweave._backends import load_broker, parse_url
from microweave.broker import DEAD_LETTER_REASON, Event, dead_letter_topic
from microweave.broker.redis import RedisBroker
from microweave.broker.redis import _groups as redis_groups
from microweave.errors import BrokerError, ConfigurationError
from microweave.testing import capture_logs

WAIT = 30.0


class OrderPlaced(msgspec.Struct):
    order: str
    amount: int


def redis_url(server: RedisServer, *, auth: str = "", **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"redis://{auth}{server.address}" + (f"?{query}" if query else "")


@pytest.fixture
async def raw(redis_engine: RedisServer) -> AsyncIterator[Any]:
    """redis-py on the same server: to look at streams and groups as an operator would."""
    client = aioredis.Redis(port=redis_engine.port)
    yield client
    await client.aclose()


async def pending_count(raw: Any, topic: str, group: str) -> int:
    summary = await raw.xpending(topic, group)
    return int(summary["pending"])


async def held_by_workers(raw: Any, topic: str) -> bool:
    return await pending_count(raw, topic, "workers") == 1


# -- the must-shows -------------------------------------------------------------------------


async def test_a_sigkilled_consumers_pending_entries_are_claimed_by_another_member(
    redis_engine: RedisServer, raw: Any, tmp_path: Path
) -> None:
    """The holder takes 10 of 15 entries and never acks. While it lives, the other member gets
    only the 5 it did not take, even over 2 x claim_idle: the holder keeps its entries touched.
    SIGKILLed, its 10 are claimed by the other member, each with a delivery counted."""
    url = redis_url(redis_engine, claim_idle=2)
    topic = unique_topic()
    holder = start_consumer(tmp_path, url, topic, "workers", "hold", 10)
    try:
        async with open_broker(url) as broker:
            sent = [await broker.publish(topic, OrderPlaced(order=f"o-{n}", amount=n)) for n in range(15)]
            await asyncio.to_thread(
                wait_until, lambda: len(deliveries(holder)) == 10, timeout=WAIT, what="the holder to take 10"
            )
            other = Inbox()
            await broker.subscribe(topic, other, queue="workers")
            await other.wait(5)
            await asyncio.sleep(4.0)  # two claim_idles: a live holder keeps what it holds
            assert len(other.events) == 5, "nothing is claimed from a live consumer"
            assert await pending_count(raw, topic, "workers") == 10
            holder.signal(signal.SIGKILL)
            holder.wait(WAIT)
            await other.wait(15)
            await settle_time(broker)
            assert await pending_count(raw, topic, "workers") == 0, "every claimed entry was acked"
        held = [str(d["id"]) for d in deliveries(holder)]
    finally:
        holder.stop()
    assert sorted(other.ids) == sorted(sent), "every event once: the 5 free ones and the 10 claimed"
    claimed = [e for e in other.events if e.id in held]
    assert len(claimed) == 10 and all(e.attempt == 2 for e in claimed), [e.attempt for e in claimed]


async def test_redis_restart_mid_stream_loses_no_confirmed_publish(redis_engine: RedisServer) -> None:
    """A publisher publishes 300 events with ids of its own; redis-server (AOF, fsync always) is
    SIGKILLed and started again after the 100th. A publish that raised is published again with
    the same Micro-Id, as a user would; every publish that returned is consumed, and the
    duplicates (acks or publish replies the kill swallowed) are counted and bounded."""
    url = redis_url(redis_engine, claim_idle=1, retry_for=10)
    topic = unique_topic()
    total = 300
    confirmed: list[str] = []
    failures = 0
    restarted = asyncio.Event()

    at_kill = at_start = total

    async def restart() -> None:
        nonlocal at_kill, at_start
        await asyncio.to_thread(redis_engine.kill)
        at_kill = len(confirmed)
        await asyncio.sleep(0.5)  # publishes meanwhile wait in their retries
        await asyncio.to_thread(redis_engine.start)
        at_start = len(confirmed)
        restarted.set()

    async with open_broker(url) as consumer, open_broker(url) as publisher:
        inbox = Inbox()
        await consumer.subscribe(topic, inbox, queue="audit", max_in_flight=16)
        outage: asyncio.Task[None] | None = None
        for n in range(total):
            message_id = f"m-{n}"
            while True:
                try:
                    await publisher.publish(
                        topic, OrderPlaced(order=message_id, amount=n), headers={"Micro-Id": message_id}
                    )
                except BrokerError:
                    failures += 1
                    await asyncio.sleep(0.2)
                    continue
                confirmed.append(message_id)
                break
            if n == 100:
                outage = asyncio.get_running_loop().create_task(restart())
            await asyncio.sleep(0.002)
        assert outage is not None
        async with asyncio.timeout(WAIT):
            await restarted.wait()
        await inbox.wait(len(set(confirmed)), timeout=WAIT)
        await asyncio.sleep(2.5)  # two claim_idles more: a late redelivery would show here

    counts = collections.Counter(inbox.ids)
    duplicates = sum(c - 1 for c in counts.values())
    assert len(confirmed) == total
    assert set(confirmed) <= set(counts), "no confirmed publish is lost"
    # a duplicate is an entry the subscriber held when Redis died (its ack lost: at most
    # max_in_flight) or a publish whose reply the kill swallowed (one publisher: at most one)
    assert duplicates <= 16 + 1, (duplicates, failures)
    assert at_kill < total and at_start < total, "Redis was down while the publisher published"
    print(
        f"restart: {total} confirmed ({at_kill} before the kill), {failures} raised, {duplicates} duplicates"
    )


async def test_poison_and_failing_events_go_to_the_dead_letter_stream_and_consuming_goes_on(
    redis_engine: RedisServer, raw: Any
) -> None:
    topic = unique_topic()
    async with open_broker(redis_url(redis_engine, max_deliveries=3)) as broker:
        dead = Inbox()
        await broker.subscribe(dead_letter_topic(topic), dead, queue="dlq")

        async def handle(event: Event) -> None:
            order = event.decode(OrderPlaced)  # the undecodable one: BadRequest, dead at once
            if order.order == "always-fails":
                raise RuntimeError("this one never works")

        inbox = Inbox(handle)
        with capture_logs(logging.WARNING, logger="microweave.broker"):
            await broker.subscribe(topic, inbox, queue="billing", max_in_flight=1)
            failing = await broker.publish(topic, OrderPlaced(order="always-fails", amount=1))
            poison = await broker.publish(topic, b"\xff not json")
            fine = [await broker.publish(topic, OrderPlaced(order=f"ok-{n}", amount=n)) for n in range(20)]
            await dead.wait(2)
            await inbox.wait(2 + 2 + 20)
            await settle_time(broker)
        assert await pending_count(raw, topic, "billing") == 0, "the originals are acknowledged"

    assert sorted(dead.ids) == sorted([failing, poison])
    by_id = {e.id: e for e in dead.events}
    assert by_id[poison].body == b"\xff not json"
    assert by_id[failing].decode(OrderPlaced).order == "always-fails"
    assert "3 deliveries" in (by_id[failing].header(DEAD_LETTER_REASON) or "")
    assert by_id[poison].header(DEAD_LETTER_REASON)
    assert [e.attempt for e in inbox.events if e.id == failing] == [1, 2, 3]
    assert [e.attempt for e in inbox.events if e.id == poison] == [1]
    assert set(fine) <= set(inbox.ids), "the subscriber went on consuming, one slot and all"

    # the dead-letter place is a stream an operator can read, with every header kept
    entries = await raw.xrange(dead_letter_topic(topic))
    assert len(entries) == 2
    headers = [json.loads(fields[b"headers"]) for _, fields in entries]
    assert sorted(h["Micro-Id"] for h in headers) == sorted([failing, poison])
    assert all(h["Micro-Topic"] == topic and h[DEAD_LETTER_REASON] for h in headers)


async def test_dead_letters_written_before_anyone_subscribed_are_read_later(
    redis_engine: RedisServer, raw: Any
) -> None:
    """Nobody listens on the dead-letter topic when the poison event dies; a new queue group and
    a new broadcast subscriber of it, made afterwards, both get it. A new group on the ordinary
    topic does not get what was published before it existed."""
    topic = unique_topic()
    async with open_broker(redis_url(redis_engine)) as broker:

        async def handle(event: Event) -> None:
            event.decode(OrderPlaced)  # the body does not decode: BadRequest, dead at once

        inbox = Inbox(handle)
        await broker.subscribe(topic, inbox, queue="billing")
        poison = await broker.publish(topic, b"\xff not json")

        async def dead_lettered() -> bool:
            return bool(await raw.xlen(dead_letter_topic(topic)))

        await async_wait_until(dead_lettered, timeout=WAIT, what="the poison event to be dead-lettered")
        in_queue, broadcast, late = Inbox(), Inbox(), Inbox()
        await broker.subscribe(dead_letter_topic(topic), in_queue, queue="inspect")
        await broker.subscribe(dead_letter_topic(topic), broadcast)
        await broker.subscribe(topic, late, queue="late")
        await in_queue.wait(1)
        await broadcast.wait(1)
        await settle_time(broker)
    assert in_queue.ids == [poison] and broadcast.ids == [poison]
    assert in_queue.events[0].header(DEAD_LETTER_REASON)
    assert late.ids == [], "an ordinary new group gets only what is published after it subscribed"


async def test_an_entry_another_writer_put_on_the_stream_is_dead_lettered_not_handled(
    redis_engine: RedisServer, raw: Any
) -> None:
    topic = unique_topic()
    async with open_broker(redis_url(redis_engine)) as broker:
        dead, inbox = Inbox(), Inbox()
        await broker.subscribe(dead_letter_topic(topic), dead, queue="dlq")
        await broker.subscribe(topic, inbox, queue="q")
        await raw.xadd(topic, {"something": "else"})
        await raw.xadd(topic, {"headers": b"[1, 2]", "body": b"x"})
        after = await broker.publish(topic, OrderPlaced(order="after", amount=1))
        await dead.wait(2)
        await inbox.wait(1)
        await settle_time(broker)
    assert inbox.ids == [after], "the handler never sees an entry that is not an event"
    assert all("malformed" in (e.header(DEAD_LETTER_REASON) or "") for e in dead.events)


async def test_an_entry_that_killed_its_consumers_max_deliveries_times_is_dead_lettered(
    redis_engine: RedisServer, raw: Any
) -> None:
    """Consumers that died holding the entry (a ghost read it and claimed it back twice: three
    deliveries, never settled): the next claim is one too many for max_deliveries=3."""
    topic = unique_topic()
    url = redis_url(redis_engine, max_deliveries=3, claim_idle=0.2)
    async with open_broker(url) as broker:
        dead, inbox = Inbox(), Inbox()
        await broker.subscribe(dead_letter_topic(topic), dead, queue="dlq")
        await raw.xgroup_create(topic, "workers", id="$", mkstream=True)
        deadly = await broker.publish(topic, OrderPlaced(order="deadly", amount=1))
        [[_, [(entry_id, _)]]] = await raw.xreadgroup("workers", "ghost", {topic: ">"}, count=1)
        for _ in range(2):
            await raw.xclaim(topic, "workers", "ghost", 0, [entry_id])
        await broker.subscribe(topic, inbox, queue="workers")
        fine = await broker.publish(topic, OrderPlaced(order="fine", amount=2))
        (event,) = await dead.wait(1)
        await inbox.wait(1)
        await settle_time(broker)
    assert inbox.ids == [fine], "the deadly entry is not handed to another handler"
    assert event.id == deadly and "never settled" in (event.header(DEAD_LETTER_REASON) or "")


async def test_redis_down_at_start_is_a_clear_error_after_bounded_retries() -> None:
    port = free_port()  # nobody listens there
    broker = load_broker(f"redis://ada:s3cret-pw@127.0.0.1:{port}/2?retry_for=0.5")
    with pytest.raises(BrokerError) as caught:
        await broker.connect()
    message = str(caught.value)
    assert f"redis://127.0.0.1:{port}/2" in message and "connect failed" in message
    assert "retried for 0.5 s" in message and "is redis-server running" in message
    assert "s3cret-pw" not in message and "ada" not in message

    subscriber = load_broker(f"redis://:s3cret-pw@127.0.0.1:{port}?retry_for=0.2")
    with pytest.raises(BrokerError, match=f"redis://127.0.0.1:{port}/0"):
        await subscriber.subscribe("t", Inbox())
    assert "s3cret-pw" not in repr(subscriber)


async def test_publish_while_redis_is_down_fails_after_bounded_retries_and_works_again(
    redis_engine: RedisServer,
) -> None:
    url = redis_url(redis_engine, retry_for=1)
    topic = unique_topic()
    async with open_broker(url) as broker:
        inbox = Inbox()
        await broker.subscribe(topic, inbox, queue="q")
        before = await broker.publish(topic, OrderPlaced(order="before", amount=1))
        await inbox.wait(1)
        with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
            await asyncio.to_thread(redis_engine.stop)
            with pytest.raises(BrokerError) as caught:
                await broker.publish(topic, OrderPlaced(order="while down", amount=2))
            message = str(caught.value)
            assert f"redis://{redis_engine.address}/0" in message and f"publish to {topic}" in message
            assert "retried for 1 s" in message
            await asyncio.sleep(1.5)  # the reader keeps retrying meanwhile
            await asyncio.to_thread(redis_engine.start)
            after = await broker.publish(topic, OrderPlaced(order="after", amount=3))
            await inbox.wait(2)
    assert before in inbox.ids and after in inbox.ids
    outage_lines = [e for e in logs if "reading" in e["message"] and "failed" in e["message"]]
    assert len(outage_lines) == 1, "the reader says the outage once, not once per retry"


# -- the rest --------------------------------------------------------------------------------


async def test_a_typed_service_subscriber_gets_each_event(redis_engine: RedisServer) -> None:
    topic = unique_topic("orders")
    got: list[tuple[OrderPlaced, int, str | None]] = []
    arrived = asyncio.Event()
    service = Service("shop", registry=f"memory://{uuid.uuid4().hex}", broker=redis_url(redis_engine))

    @service.subscriber(topic, queue="billing")
    async def on_order(event: OrderPlaced, ctx: MessageContext) -> None:
        got.append((event, ctx.attempt, ctx.queue))
        if len(got) == 3:
            arrived.set()

    async with service:
        for n in range(3):
            await service.client.publish(topic, OrderPlaced(order=f"o-{n}", amount=10 * n))
        async with asyncio.timeout(WAIT):
            await arrived.wait()
    assert sorted(o.order for o, _, _ in got) == ["o-0", "o-1", "o-2"]
    assert all(attempt == 1 and queue == "billing" for _, attempt, queue in got)


async def test_credentials_work_and_never_show(redis_engine: RedisServer, raw: Any) -> None:
    await raw.acl_setuser("app", enabled=True, passwords=["+p@ss:w"], keys=["*"], commands=["+@all"])
    await raw.config_set("requirepass", "s3cret-pw")  # the default user now needs it too
    topic = unique_topic()
    for auth in (":s3cret-pw@", "app:p%40ss%3Aw@"):
        url = redis_url(redis_engine, auth=auth)
        async with open_broker(url) as broker:
            assert "s3cret" not in repr(broker) and "ss" not in repr(broker)
            inbox = Inbox()
            await broker.subscribe(topic, inbox)
            await broker.publish(topic, b"{}")
            await inbox.wait(1)

    wrong = load_broker(redis_url(redis_engine, auth="app:wrong-pw@", retry_for=5))
    with pytest.raises(BrokerError) as caught:
        await wrong.connect()  # not retried: a wrong password stays wrong
    message = str(caught.value)
    assert "check the user name and password" in message and "wrong-pw" not in message
    none_given = load_broker(redis_url(redis_engine, retry_for=5))
    with pytest.raises(BrokerError, match="password"):
        await none_given.connect()


async def test_unsubscribe_leaves_no_group_or_consumer_behind(redis_engine: RedisServer, raw: Any) -> None:
    """A broadcast subscriber's group is destroyed; a queue member that held a nacked entry
    hands it to the other member at once (no claim_idle wait) and its name stays until it holds
    nothing; one that holds nothing leaves the group."""
    url = redis_url(redis_engine, claim_idle=60)
    topic = unique_topic()
    async with open_broker(url) as first, open_broker(url) as second:
        broadcast = await first.subscribe(topic, Inbox())

        async def later(event: Event) -> None:
            await event.nack(requeue=True, delay=60.0)  # held: due in a minute

        quitter = await first.subscribe(topic, Inbox(later), queue="workers", ack="manual")
        await first.publish(topic, OrderPlaced(order="held", amount=1))
        await async_wait_until(
            lambda: held_by_workers(raw, topic), timeout=WAIT, what="the nacked entry to be pending"
        )
        groups = {g["name"].decode() for g in await raw.xinfo_groups(topic)}
        assert "workers" in groups and len(groups) == 2
        await broadcast.unsubscribe()
        await quitter.unsubscribe()
        assert {g["name"].decode() for g in await raw.xinfo_groups(topic)} == {"workers"}

        stayer = Inbox()
        await second.subscribe(topic, stayer, queue="workers")
        (event,) = await stayer.wait(1)  # claimed within a claim round, not after 60 s
        assert event.attempt == 2
        await settle_time(second)
        names = [c["name"].decode() for c in await raw.xinfo_consumers(topic, "workers")]
        assert len(names) == 2, "the quitter's name stays until a sweep: it still owned the entry"
        await second.aclose()
        names = [c["name"].decode() for c in await raw.xinfo_consumers(topic, "workers")]
        assert len(names) == 1, "a member holding nothing leaves the group"


async def test_what_crashed_subscribers_left_is_swept_by_the_next_one(
    redis_engine: RedisServer, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broadcast group and a queue member left by processes that died (made by hand here,
    idle past the stale time, shortened for the test) go when a subscriber of the stream starts;
    a member still holding an entry stays, and so does another queue's group."""
    monkeypatch.setattr(redis_groups, "STALE_MS", 300)
    topic = unique_topic()
    dead_broadcast = "*broadcast*dead-process:1"
    for group in (dead_broadcast, "workers", "others"):
        await raw.xgroup_create(topic, group, id="$", mkstream=True)
    first = await raw.xadd(topic, {"headers": b"{}", "body": b"x"})
    for group, consumer in ((dead_broadcast, "dead-process:1"), ("others", "o"), ("workers", "gone")):
        await raw.xreadgroup(group, consumer, {topic: ">"}, count=1)
    await raw.xack(topic, "workers", first)  # "gone" holds nothing now
    await raw.xadd(topic, {"headers": b"{}", "body": b"y"})
    await raw.xreadgroup("workers", "holder", {topic: ">"}, count=1)  # "holder" holds "y"
    await asyncio.sleep(0.5)
    async with open_broker(redis_url(redis_engine)) as broker:
        await broker.subscribe(topic, Inbox(), queue="workers")
        groups = {g["name"].decode() for g in await raw.xinfo_groups(topic)}
        members = {c["name"].decode() for c in await raw.xinfo_consumers(topic, "workers")}
        ours = {m for m in members if m.startswith(broker.consumer_base)}  # type: ignore[attr-defined]
    assert groups == {"workers", "others"}
    assert members - ours == {"holder"}, "the idle member holding nothing went; the one holding stays"


async def test_streams_stay_bounded_by_maxlen(redis_engine: RedisServer, raw: Any) -> None:
    topic = unique_topic()
    async with open_broker(redis_url(redis_engine, maxlen=100)) as broker:
        for _ in range(10):
            await asyncio.gather(*(broker.publish(topic, b"x" * 32) for n in range(200)))
        calls = (await raw.info("commandstats"))["cmdstat_xadd"]["calls"]
    assert 100 <= await raw.xlen(topic) <= 300, "MAXLEN ~ trims whole nodes of 100 entries"
    assert calls == 2000, "every publish one XADD, no retry"


def test_url_options_are_read_and_mistakes_refused() -> None:
    broker = load_broker("redis://u:p%40ss@redis.internal:6380/3?prefix=app:&maxlen=50&claim_idle=2.5")
    assert isinstance(broker, RedisBroker)
    assert broker.url == "redis://redis.internal:6380/3" and "p@ss" not in repr(broker)
    assert (broker.prefix, broker.maxlen, broker.claim_idle, broker.key("t")) == ("app:", 50, 2.5, "app:t")
    with pytest.raises(ConfigurationError, match="claim_idel") as caught:
        load_broker("redis://h?claim_idel=1")
    assert "claim_idle" in str(caught.value)
    with pytest.raises(ConfigurationError, match="rediss"):
        load_broker("redis://h?ssl_ca_certs=/ca.pem")
    with pytest.raises(ConfigurationError, match="database number"):
        load_broker("redis://h/streams")
    with pytest.raises(ConfigurationError, match="one server"):
        load_broker("redis://h1,h2")
    with pytest.raises(ConfigurationError, match="maxlen"):
        load_broker("redis://h?maxlen=0")


# -- TLS ---------------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 (openssl, as an operator would)."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem")
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl = find_binary("openssl", debian="openssl")
    new_key = ["-newkey", "rsa:2048", "-nodes", "-keyout"]
    for argv in (
        ["req", "-x509", *new_key, ca_key, "-out", ca, "-days", "1", "-subj", "/CN=test-ca"],
        ["req", *new_key, key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "1", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([openssl, *map(str, argv)], check=True, capture_output=True)
    return ca, cert, key


async def test_rediss_over_tls(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    argv = [
        find_binary("redis-server", debian="redis-server"),
        "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
    ]  # fmt: skip

    def listening() -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    server = Engine(f"redis-tls-{port}", argv, ready=listening, log_dir=tmp_path, ready_timeout=15)
    server.start()
    try:
        url = f"rediss://127.0.0.1:{port}?ssl_ca_certs={ca}&retry_for=0.5"
        broker = load_broker(url)
        assert isinstance(broker, RedisBroker)
        assert broker.url == f"rediss://127.0.0.1:{port}/0"
        topic = unique_topic()
        async with broker:
            inbox = Inbox()
            await broker.subscribe(topic, inbox, queue="q")
            sent = await broker.publish(topic, OrderPlaced(order="tls", amount=1))
            (event,) = await inbox.wait(1)
            assert event.id == sent
        plain = RedisBroker.from_url(parse_url(f"redis://127.0.0.1:{port}?retry_for=0.5&timeout=1"))
        with pytest.raises(BrokerError):  # a plain client cannot talk to a TLS port
            await plain.connect()
    finally:
        server.stop()
