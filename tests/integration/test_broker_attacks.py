"""Attacks on the broker layer with real engines: hostile publishers on the same engine, topic
names each engine reads specially, handlers that misbehave, secrets in URLs. Each test states a
property the broker must keep, so that a regression fails it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import pytest
from broker_kit import Inbox, open_broker, unique_topic
from engines import free_port
from engines.nats import NatsServer
from helpers import wait_until

from microweave import Service
from microweave._backends import load_broker
from microweave.broker import Event, dead_letter_topic
from microweave.errors import BrokerError, MicroError
from microweave.testing import capture_logs

WAIT = 20.0


@pytest.mark.parametrize("bad_part", ["a..b", "a.", ".a"])
async def test_nats_a_subject_with_an_empty_token_does_not_kill_the_other_subscriptions(
    nats_engine: NatsServer, bad_part: str
) -> None:
    """nats-py closes its whole connection on any -ERR from the server: a subject NATS may call
    invalid (an empty token) must be refused with a clear error, or work, and never take the
    broker's other subscriptions down with it."""
    good = unique_topic()
    inbox = Inbox()
    async with open_broker(nats_engine.url) as broker:
        await broker.subscribe(good, inbox)
        bad = f"{unique_topic()}.{bad_part}"
        with contextlib.suppress(MicroError):
            await broker.subscribe(bad, Inbox())
        with contextlib.suppress(MicroError):
            await broker.publish(bad, b"{}")
        await asyncio.sleep(0.5)  # an -ERR and the close it causes would come meanwhile
        sent = await broker.publish(good, b'"still here"')
        (event,) = await inbox.wait(1)
    assert event.id == sent


@pytest.mark.parametrize(
    "template",
    [
        "nats://bob:{pw}@127.0.0.1:{port}?connect_timeout=0.5",
        "nats://{pw}@127.0.0.1:{port}?connect_timeout=0.5",
        "nats+jetstream://bob:{pw}@127.0.0.1:{port}?connect_timeout=0.5",
        "redis://bob:{pw}@127.0.0.1:{port}/0?retry_for=0.5",
        "rabbitmq://bob:{pw}@127.0.0.1:{port}/?retry_time=0.5",
    ],
)
async def test_a_password_in_the_url_shows_nowhere_when_the_broker_is_down(template: str) -> None:
    """repr, the BrokerError of a failed publish and every log line (DEBUG included) name the
    URL without its credentials."""
    secret = "Pw" + uuid.uuid4().hex
    broker = load_broker(template.format(pw=secret, port=free_port()))
    with capture_logs(logging.DEBUG) as logs:
        with pytest.raises(BrokerError) as caught:
            await broker.publish(unique_topic(), b"{}")
        await broker.aclose()
    assert "127.0.0.1" in str(caught.value)
    shown = [repr(broker), str(caught.value), *(str(entry) for entry in logs)]
    assert not [text for text in shown if secret in text]


# -- failing until fixed (see the reply of the broker attack review) ---------------------------

_NESTED = b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"  # valid JSON, 10 kB, 5,000 deep


async def test_nats_a_deeply_nested_json_payload_is_delivered_raw(nats_engine: NatsServer) -> None:
    """A plain NATS publisher's JSON object nested 5,000 deep is a payload like any other; the
    envelope decoder must not let msgspec's RecursionError lose it (nats-py logs it at DEBUG)."""
    topic = unique_topic()
    inbox = Inbox()
    async with open_broker(nats_engine.url) as broker:
        await broker.subscribe(topic, inbox, max_in_flight=1)
        plain = await nats.connect(nats_engine.url)
        try:
            await plain.publish(topic, _NESTED)
            await plain.flush()
        finally:
            await plain.close()
        after = await broker.publish(topic, b'"after"')
        events = await inbox.wait(2)
    assert [e.body for e in events] == [_NESTED, b'"after"'] and events[1].id == after


async def test_jetstream_a_deeply_nested_json_payload_is_not_lost(jetstream_engine: NatsServer) -> None:
    """At least once: the same payload stored by a plain JetStream publisher reaches the group's
    handler (raw) or its dead-letter topic."""
    topic = unique_topic()
    seen = Inbox()
    url = f"nats+jetstream://{jetstream_engine.address}?ack_wait=1&max_deliveries=2"
    async with open_broker(url) as broker:
        await broker.subscribe(topic, seen, queue="g")
        await broker.subscribe(dead_letter_topic(topic), seen, queue="g")
        plain = await nats.connect(jetstream_engine.url)
        try:
            await plain.jetstream().publish(topic, _NESTED)
        finally:
            await plain.close()
        (event,) = await seen.wait(1)
    assert event.body == _NESTED


async def test_jetstream_an_event_never_settled_past_max_deliveries_is_dead_lettered(
    jetstream_engine: NatsServer,
) -> None:
    """A handler that lets its own CancelledError out (nobody cancelled it) leaves its event
    unsettled on every delivery, as a consumer that dies on it does. RabbitMQ and Redis
    dead-letter an event delivered more than max_deliveries times without being settled;
    JetStream must too, instead of stopping silently at the server's max_deliver."""
    topic = unique_topic()
    deliveries: list[int] = []

    async def cancels_itself(event: Event) -> None:
        deliveries.append(event.attempt)
        raise asyncio.CancelledError

    dead = Inbox()
    url = f"nats+jetstream://{jetstream_engine.address}?ack_wait=1&max_deliveries=2"
    async with open_broker(url) as broker:
        await broker.subscribe(topic, cancels_itself, queue="g")
        await broker.subscribe(dead_letter_topic(topic), dead, queue="g")
        sent = await broker.publish(topic, b'"poison"')
        (event,) = await dead.wait(1)
    assert event.id == sent and event.body == b'"poison"'


_HANDLER_RAISES = """
import asyncio
from microweave._backends import load_broker

async def main() -> None:
    broker = load_broker("memory://attack")
    await broker.connect()
    seen = asyncio.Event()

    async def handler(event):
        if event.body == b'"die"':
            raise {exc}
        seen.set()

    await broker.subscribe("t.x", handler)
    await broker.publish("t.x", b'"die"')
    await asyncio.sleep(0.2)
    await broker.publish("t.x", b'"after"')
    await asyncio.wait_for(seen.wait(), 10)
    print("survived", flush=True)
    await broker.aclose()

asyncio.run(main())
"""


@pytest.mark.parametrize("exc", ["SystemExit(3)", "KeyboardInterrupt()"])
def test_a_raw_handler_raising_systemexit_or_keyboardinterrupt_does_not_end_the_process(exc: str) -> None:
    """The server pipeline's boundary turns a handler's SystemExit into a 500 (an RPC handler or
    a Service subscriber cannot end the node); a handler given to broker.subscribe() must not
    end the process either: the subscription goes on with the next event."""
    done = subprocess.run(
        [sys.executable, "-c", _HANDLER_RAISES.format(exc=exc)], capture_output=True, text=True, timeout=60
    )
    assert "survived" in done.stdout, done.stderr[-2000:]


async def test_service_stop_finishes_when_a_subscriber_ignores_cancellation() -> None:
    """Past its grace a handler is cancelled; one that swallows the cancellation (a retry loop
    catching BaseException) must not make Service.stop() wait for ever: the RPC side's drain is
    bounded by the grace, the subscriptions' must be too."""
    topic = unique_topic()
    entered = asyncio.Event()
    release = False
    service = Service(
        "stubborn", registry=f"memory://{uuid.uuid4().hex}", broker=f"memory://{uuid.uuid4().hex}", grace=0.3
    )

    @service.subscriber(topic)
    async def stubborn(event: bytes) -> None:
        entered.set()
        while not release:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    await service.start()
    publishing = asyncio.create_task(service.client.publish(topic, b'"x"'))
    try:
        async with asyncio.timeout(WAIT):
            await entered.wait()
        stopping = asyncio.create_task(service.stop())
        done, _ = await asyncio.wait({stopping}, timeout=WAIT)
    finally:
        release = True
        await asyncio.gather(publishing, return_exceptions=True)
        await service.stop()
    assert stopping in done, "Service.stop() still waits for a handler that ignores cancellation"


async def _publish(url: str, topic: str, body: bytes) -> None:
    async with open_broker(url) as broker:
        await broker.publish(topic, body, content_type="application/json")


@pytest.mark.parametrize("mode", ["--json", "--headers"])
def test_cli_subscribe_shows_a_deeply_nested_json_body(
    nats_engine: NatsServer, tmp_path: Path, mode: str
) -> None:
    """`microweave subscribe` shows what anyone publishes: a valid JSON body nested 5,000 deep
    must be printed (as JSON or as bytes), not fail its handler (json.loads raises
    RecursionError, which is no ValueError): on core NATS the event is dropped, on an
    at-least-once broker it is redelivered and then dead-lettered for a whole queue group."""
    topic = unique_topic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_")}
    out, err = tmp_path / "out", tmp_path / "err"
    argv = [
        sys.executable,
        "-m",
        "microweave.cli",
        "subscribe",
        topic,
        "--count",
        "1",
        mode,
        "--broker",
        nats_engine.url,
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env)
        try:
            wait_until(
                lambda: "listening on" in err.read_text(errors="replace") or proc.poll() is not None,
                timeout=WAIT,
            )
            asyncio.run(_publish(nats_engine.url, topic, b"[" * 5000 + b"]" * 5000))
            try:
                code: int | None = proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                code = None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, err.read_text(errors="replace")[-3000:]
    assert out.read_text(errors="replace").strip()
