"""What every stack of `rpc.py` implements: a server half, a client half, and the common payload.

Kept apart from the stacks themselves so stacks can live in several modules (`rpc_stacks.py`
for microweave, grpc.aio and raw TCP; `rpc_nats.py` for the NATS stacks) without import cycles.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = ["BODY_SIZE", "JSON_DATA", "PAYLOAD", "Server", "Stack", "StackClient", "expect"]

BODY_SIZE = 64
PAYLOAD = b"x" * BODY_SIZE
#: the string field that makes `{"data":"..."}` exactly BODY_SIZE bytes of JSON
JSON_DATA = "x" * (BODY_SIZE - len(b'{"data":""}'))


class Server(abc.ABC):
    """A running server half: where to reach it, and how to stop it."""

    address: str

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class StackClient(abc.ABC):
    """A connected client half, shared by every concurrent worker of one load process."""

    @abc.abstractmethod
    async def worker(self) -> Callable[[], Awaitable[Any]]:
        """A callable making one unary echo call; called once per concurrent worker."""

    def stream(self, count: int) -> AsyncIterator[Any]:
        """One server-streaming call yielding `count` 64-byte messages."""
        raise NotImplementedError

    @abc.abstractmethod
    async def check(self) -> None:
        """One call whose reply is compared with what was sent (raises if it differs)."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class Stack(abc.ABC):
    name: str = ""
    #: serves the server-streaming measurement
    streams: bool = False
    #: what `rpc.py --list` and the README say about it
    description: str = ""
    #: a message broker `rpc.py` must start for this stack (its URL goes to both halves in the
    #: environment, see `rpc_nats.py`), or None
    broker: str | None = None

    def unavailable(self) -> str | None:
        """Why this stack cannot run here (say what to install), or None when it can."""
        return None

    @abc.abstractmethod
    async def serve(self, host: str) -> Server: ...

    @abc.abstractmethod
    async def client(self, address: str) -> StackClient: ...


def expect(got: Any, want: Any, stack: str) -> None:
    if got != want:
        raise RuntimeError(f"{stack}: echo returned {got!r}, expected {want!r}")
