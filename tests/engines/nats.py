"""NATS: Debian's `nats-server` on free loopback ports, and the `nats` CLI when built.

go-micro's NATS registry protocol has fixed subjects and no prefix, so two tests sharing a
server would see each other's nodes: each test (and each conformance case) gets its own server.
It is ready in a few hundredths of a second, so that costs little.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engines import Engine, find_binary, free_port, registry_backend

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


__all__ = ["NatsServer", "nats_server"]
