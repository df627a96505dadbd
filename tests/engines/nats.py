"""NATS: Debian's `nats-server` on free loopback ports, and the `nats` CLI when built.

go-micro's NATS registry protocol has fixed subjects and no prefix, so two tests sharing a
server would see each other's nodes: each test (and each conformance case) gets its own server.
It is ready in a few hundredths of a second, so that costs little. `jetstream_engine` is one
with JetStream on and a store of its own, which keeps its streams across a restart.
"""

from __future__ import annotations

import contextlib
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engines import Engine, broker_backend, find_binary, free_port, registry_backend

NATSCLI_VERSION = "0.5.1"  # keep in step with scripts/peers/natscli


class NatsServer(Engine):
    """One nats-server; `url` is what NatsRegistry and the nats CLI connect to."""

    def __init__(self, log_dir: Path, *, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.monitor = free_port()
        argv = [
            find_binary("nats-server", debian="nats-server"),
            "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor),
            *(extra or []),
        ]  # fmt: skip
        super().__init__(f"nats-{self.port}", argv, ready=self._healthy, log_dir=log_dir, ready_timeout=15)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"nats://{self.address}"

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/healthz", timeout=1) as answer:
            return bool(answer.status == 200)


@contextlib.contextmanager
def nats_server(log_dir: Path, *, extra: list[str] | None = None) -> Iterator[NatsServer]:
    server = NatsServer(log_dir, extra=extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_engine(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own (stop()/start() it for an outage on the same port)."""
    with nats_server(tmp_path) as server:
        yield server


@contextlib.contextmanager
def jetstream_server(log_dir: Path) -> Iterator[NatsServer]:
    """A nats-server with JetStream on, its store in a new directory under `log_dir`: stop()
    and start() it again and its streams and their messages are still there."""
    store = tempfile.mkdtemp(prefix="js-", dir=log_dir)
    with nats_server(log_dir, extra=["-js", "-sd", store]) as server:
        yield server


@pytest.fixture
def jetstream_engine(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with JetStream of this test's own (stop()/start() it for an outage that
    keeps its streams)."""
    with jetstream_server(tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def nats_cli() -> str:
    """The `nats` CLI built by scripts/peers/natscli (an error saying so when it is missing)."""
    return find_binary("nats", peer=("natscli", f"natscli-{NATSCLI_VERSION}/nats"))


@registry_backend("nats")
@contextlib.asynccontextmanager
async def nats_backend(request: pytest.FixtureRequest, **options: Any) -> AsyncIterator[Any]:
    from microweave.registry.nats import NatsRegistry

    tmp = request.getfixturevalue("tmp_path")
    with nats_server(tmp) as server:
        async with NatsRegistry([server.address], **options) as registry:
            yield registry


@broker_backend("nats")
@contextlib.asynccontextmanager
async def nats_broker_backend(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The URL of a fresh nats-server of this test's own (core NATS only)."""
    with nats_server(request.getfixturevalue("tmp_path")) as server:
        yield server.url


@broker_backend("nats+jetstream")
@contextlib.asynccontextmanager
async def jetstream_broker_backend(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The URL (scheme nats+jetstream) of a fresh nats-server with JetStream of this test's own."""
    with jetstream_server(request.getfixturevalue("tmp_path")) as server:
        yield f"nats+jetstream://{server.address}"


__all__ = ["NatsServer", "jetstream_server", "nats_server"]
