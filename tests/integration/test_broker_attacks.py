"""Attacks on the broker layer with real engines: hostile publishers on the same engine, topic
names each engine reads specially, handlers that misbehave, secrets in URLs. Each test states a
property the broker must keep, so that a regression fails it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import pytest
from broker_kit import Inbox, open_broker, unique_topic
from engines import free_port
from engines.nats import NatsServer

from microweave._backends import load_broker
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
