"""The broker engines the event tests run on: each keeps what it acknowledged across a restart
(the outage the brokers' tests will stage), a SIGKILLed RabbitMQ leaves no process behind, and
every broker backend yields the URL of a live server of the kind its scheme names.

RabbitMQ boots slowly: one server of this file's own (the restart) plus the session's shared one.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import nats
import pytest
import redis
from engines import BROKER_BACKENDS
from engines.nats import NatsServer
from engines.rabbitmq import AMQP_HEADER, RabbitMQServer
from engines.redis import RedisServer, redis_server
from helpers import wait_until

WAIT = 30.0


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_redis_with_aof_keeps_an_acknowledged_write_across_a_restart(
    redis_engine: RedisServer, outage: str
) -> None:
    with redis.Redis(port=redis_engine.port) as client:
        client.set("kept", b"before the outage")
    redis_engine.stop() if outage == "stop" else redis_engine.kill()
    redis_engine.start()
    with redis.Redis(port=redis_engine.port) as client:
        assert client.get("kept") == b"before the outage"


def test_redis_without_aof_comes_back_empty(tmp_path: Path) -> None:
    """The control: without `aof` a restart loses the key (so the test above shows AOF at work)."""
    with redis_server(tmp_path, aof=False) as server:
        with redis.Redis(port=server.port) as client:
            client.set("lost", b"x")
        server.stop()
        server.start()
        with redis.Redis(port=server.port) as client:
            assert client.get("lost") is None


@pytest.mark.timeout(300)  # two RabbitMQ boots, each up to ~40 s on a busy machine
async def test_rabbitmq_restart_keeps_a_durable_queue_and_a_confirmed_persistent_message(
    rabbitmq_engine: RabbitMQServer,
) -> None:
    queue_name = f"kept-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(rabbitmq_engine.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True)
        message = aio_pika.Message(b"before the outage", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        # with confirms on, publish() returns once the broker has the message on disk
        await channel.default_exchange.publish(message, routing_key=queue_name)

    port, node = rabbitmq_engine.port, rabbitmq_engine.node
    rabbitmq_engine.stop()
    rabbitmq_engine.start()
    assert (rabbitmq_engine.port, rabbitmq_engine.node) == (port, node)

    connection = await aio_pika.connect(rabbitmq_engine.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)  # raises if it was lost
        kept = await queue.get(no_ack=True, fail=False)
        assert kept is not None, "the persistent message did not survive the restart"
        assert kept.body == b"before the outage"

    # a crash: the VM and its epmd are gone, nothing lingers
    pids = [rabbitmq_engine.beam_pid, rabbitmq_engine.epmd_pid]
    assert None not in pids, pids
    rabbitmq_engine.kill()
    wait_until(lambda: not any(_running(pid) for pid in pids), timeout=WAIT, what="beam and epmd to exit")


async def test_jetstream_restart_keeps_a_streams_messages(jetstream_engine: NatsServer) -> None:
    client = await nats.connect(jetstream_engine.url)
    try:
        stream = client.jetstream()
        await stream.add_stream(name="KEPT", subjects=["kept.>"])
        for n in range(3):
            await stream.publish(f"kept.{n}", f"message {n}".encode())  # acknowledged when stored
    finally:
        await client.close()

    jetstream_engine.stop()
    jetstream_engine.start()

    client = await nats.connect(jetstream_engine.url)
    try:
        stream = client.jetstream()
        info = await stream.stream_info("KEPT")
        kept = [(await stream.get_msg("KEPT", seq)).data for seq in range(1, info.state.messages + 1)]
    finally:
        await client.close()
    assert kept == [b"message 0", b"message 1", b"message 2"]


@pytest.mark.parametrize("scheme", sorted(BROKER_BACKENDS))
async def test_each_broker_backend_yields_a_live_server_of_its_scheme(
    scheme: str, request: pytest.FixtureRequest
) -> None:
    assert {"redis", "rabbitmq", "nats", "nats+jetstream"} <= set(BROKER_BACKENDS)
    async with BROKER_BACKENDS[scheme](request) as url:
        parts = urlsplit(url)
        expected = {"rabbitmq": "amqp"}.get(scheme, scheme)
        assert parts.scheme == expected, url
        assert parts.hostname == "127.0.0.1" and parts.port, url
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.settimeout(10)
            if scheme == "redis":
                sock.sendall(b"PING\r\n")
                assert sock.recv(64).startswith(b"+PONG")
            elif scheme == "rabbitmq":
                sock.sendall(AMQP_HEADER)
                assert sock.recv(1) == b"\x01"  # Connection.Start
            else:
                greeting = sock.recv(4096).decode()
                assert greeting.startswith("INFO "), greeting
                info = json.loads(greeting[5:].splitlines()[0])
                assert bool(info.get("jetstream")) == (scheme == "nats+jetstream"), info


def _running(pid: int | None) -> bool:
    """Whether `pid` is a live process (zombies awaiting their reaper count as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
