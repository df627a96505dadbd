"""Redis: Debian's `redis-server` on a free loopback port, its data in a directory of its own.

With `aof=True` (the default) every write is appended and fsynced before Redis acknowledges it
(`--appendonly yes --appendfsync always`), so a stop, or a SIGKILL, and a start on the same
port and directory keep every acknowledged write: a broker outage as clients see it. With
`aof=False` nothing is kept (`--save ''` turns the RDB snapshots off too). Ready in a few
hundredths of a second, so each test gets a server of its own.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from engines import Engine, broker_backend, find_binary, free_port

__all__ = ["RedisServer", "redis_server"]


class RedisServer(Engine):
    """One redis-server; `stop()` / `start()` (or `kill()` / `start()`) keep port and data."""

    def __init__(self, log_dir: Path, *, aof: bool = True) -> None:
        self.port = free_port()
        self.aof = aof
        self.data_dir = log_dir / f"redis-{self.port}"
        self.data_dir.mkdir(parents=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
        argv = [
            find_binary("redis-server", debian="redis-server"),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            *persistence,
        ]  # fmt: skip
        super().__init__(f"redis-{self.port}", argv, ready=self._pong, log_dir=log_dir, ready_timeout=15)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}"

    def _pong(self) -> bool:
        # an inline PING; while Redis still loads its AOF it answers -LOADING instead
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


@contextlib.contextmanager
def redis_server(log_dir: Path, *, aof: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(log_dir, aof=aof)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_engine(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own with AOF on (stop()/start() or kill()/start() it for
    an outage that keeps every acknowledged write)."""
    with redis_server(tmp_path) as server:
        yield server


@broker_backend("redis")
@contextlib.asynccontextmanager
async def redis_broker_backend(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The URL of a fresh redis-server of this test's own."""
    with redis_server(request.getfixturevalue("tmp_path")) as server:
        yield server.url
