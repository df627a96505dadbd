"""The channels a gRPC client transport holds: one per node it reached, none for nodes it could not.

Nodes come and go (a new address per deploy, per autoscaled replica), and a client is told of
each one by the registry. A table that kept a channel for every address ever tried would grow
without bound in a churning fleet, each entry holding a socket or a reconnect timer. So both
gRPC transports (grpcio's `GrpcClient` and grpclib's `NamedGrpcClient`) keep theirs here, and
follow one rule: a call that could not connect (the request never left) closes and drops its
channel; a node that answered, even with a draining node's refusal, keeps it, because it is
alive and will be called again.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from ...metrics import connections

__all__ = ["Channels"]

K = TypeVar("K", bound=Hashable)
C = TypeVar("C")


class Channels(dict[K, C], Generic[K, C]):
    """key -> channel, opened on first use; `forget` after a failed connect; `aclose` at the end.

    A dict, so `len()` is the number of channels held; `close` may be sync (grpclib) or async
    (grpcio)."""

    def __init__(self, open_: Callable[[K], C], close: Callable[[C], Awaitable[None] | None]) -> None:
        super().__init__()
        self._open = open_
        self._close = close
        self._counted = connections("grpc", "client")  # channels count as connections

    def channel(self, key: K) -> C:
        channel = self.get(key)
        if channel is None:
            channel = self[key] = self._open(key)
            self._counted.connected()
        return channel

    async def forget(self, key: K) -> None:
        """Close and drop the channel of a node the call could not connect to (not one that
        refused a call: a draining node is alive)."""
        channel = self.pop(key, None)
        if channel is not None:
            await self._closed(channel)

    async def aclose(self) -> None:
        channels = list(self.values())
        self.clear()
        for channel in channels:
            await self._closed(channel)

    async def _closed(self, channel: C) -> None:
        self._counted.disconnected()
        done = self._close(channel)
        if inspect.isawaitable(done):
            await done
