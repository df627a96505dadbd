"""Leases: one per TTL, refreshed over ONE long-lived LeaseKeepAlive stream per registry.

A heartbeat (`register()` of an unchanged record) costs one small message on that stream and
its answer, not a new lease, a new stream or a rewrite of the value. The stream is opened on
first use and again only after it broke (etcd restarted, the network failed). etcd answers a
refresh of a lease it no longer has (expired while we could not reach it) with TTL 0: the
registry then grants a new lease and puts its keys again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import grpc

from ...errors import RegistryError
from ._conn import Connection, rpc

__all__ = ["KeepAlive", "lease_seconds"]


def lease_seconds(ttl: float) -> int:
    """etcd grants whole seconds: round up, so a node never expires before its TTL."""
    return max(1, math.ceil(ttl))


class KeepAlive:
    """The keep-alive stream: one refresh at a time, each answered before the next is sent."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._call: Any = None
        self._lock = asyncio.Lock()
        #: streams etcd answered on so far (1 while etcd stays up, whatever the number of heartbeats)
        self.streams = 0

    async def refresh(self, lease_id: int) -> int:
        """Refresh the lease; the TTL etcd granted it again, 0 when etcd no longer has it."""
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._call is None
                if fresh:
                    metadata = await self._conn.metadata()
                    self._call = self._conn.lease.LeaseKeepAlive(metadata=metadata)
                call = self._call
                try:
                    async with asyncio.timeout(self._conn.options.timeout):
                        await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                        reply = await call.read()
                    if reply is grpc.aio.EOF:
                        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "stream ended")
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                    self.close()
                    if attempt == 1 and isinstance(exc, grpc.aio.AioRpcError) and self._conn.stale_token(exc):
                        self._conn.forget_token()
                        continue
                    if attempt == 1 and not fresh:  # an old stream broke: one new one, now
                        continue
                    if isinstance(exc, grpc.aio.AioRpcError):
                        raise self._conn.error("refreshing the lease", exc) from None
                    raise RegistryError(f"{self._conn.public}: the keep-alive stream failed") from None
                except TimeoutError:
                    self.close()
                    raise RegistryError(
                        f"{self._conn.public}: refreshing the lease timed out; is etcd running there?"
                    ) from None
                if fresh:  # counted once etcd has answered on it
                    self.streams += 1
                return int(reply.TTL)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            with contextlib.suppress(Exception):
                call.cancel()
