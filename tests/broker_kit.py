"""What the broker conformance suite and the broker integration tests share.

A backend joins the suite by adding a factory to `engines.BROKER_BACKENDS` (an engine module's,
with `@broker_backend("scheme")`): an async context manager taking the pytest request and
yielding the URL of a broker of its own (a fresh server, or a shared one: tests use unique
topics). The engine-free backends (memory, direct) are here. `open_broker` builds the broker
from the URL the way a user does (`load_broker`), bound to a client on a registry of the test's
own, so `direct://` finds the subscribers of this test only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import SERVICES, LoggedProcess, wait_until

from microweave import Client
from microweave._backends import load_broker
from microweave.broker import Broker, Event

WAIT = 20.0  # generous bound on anything a broker does asynchronously


@contextlib.asynccontextmanager
async def _memory(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    yield f"memory://{uuid.uuid4().hex}"


@contextlib.asynccontextmanager
async def _direct(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    yield "direct://"


BROKER_KIT: dict[str, Callable[..., contextlib.AbstractAsyncContextManager[str]]] = {
    "memory": _memory,
    "direct": _direct,
}


def unique_topic(prefix: str = "t") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def open_broker(url: str, *, registry: str | None = None, **options: Any) -> AsyncIterator[Broker]:
    """A connected broker from `url`; `registry` (a URL) is where `direct://` looks up subscribers."""
    client = Client(registry=registry or f"memory://{uuid.uuid4().hex}", name="broker-kit")
    broker = load_broker(url, **options)
    broker.bind(client)
    try:
        await broker.connect()
        yield broker
    finally:
        await broker.aclose(grace=2.0)
        await client.aclose()


class Inbox:
    """Collects what a subscriber receives; `wait(n)` until n events arrived."""

    def __init__(self, action: Callable[[Event], Awaitable[None]] | None = None) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._action = action

    async def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        if self._action is not None:
            await self._action(event)

    async def wait(self, count: int, *, timeout: float = WAIT) -> list[Event]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.events

    @property
    def bodies(self) -> list[bytes]:
        return [e.body for e in self.events]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]


async def settle_time(broker: Broker) -> None:
    """Let a broker deliver anything still in flight before a test says "nothing more came"."""
    await asyncio.sleep(0.5 if broker.scheme in ("memory",) else 1.5)


def start_consumer(
    tmp_path: Path, url: str, topic: str, queue: str, mode: str, in_flight: int = 64
) -> LoggedProcess:
    """tests/integration/services/event_consumer.py in a process of its own, once subscribed
    (mode `hold` never settles what it takes: SIGKILL it to crash a consumer holding events)."""
    argv = [sys.executable, str(SERVICES / "event_consumer.py"), url, topic, queue, mode, str(in_flight)]
    log_path = tmp_path / f"consumer-{uuid.uuid4().hex[:6]}.log"
    process = LoggedProcess(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, log_path=log_path)

    def ready() -> bool:
        assert process.alive(), process.output()
        return "ready" in process.output().splitlines()

    wait_until(ready, timeout=WAIT, what="the consumer process to subscribe")
    return process


def deliveries(process: LoggedProcess) -> list[dict[str, Any]]:
    """What a consumer process printed: one {"id", "attempt", "body"} per delivery."""
    return [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]
