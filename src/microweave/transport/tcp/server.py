"""The `tcp` server: listens, caps connections below the descriptor limit, drains on stop.
Each connection is a `ServerConnection` (server_connection.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TypeVar

from ...server.pipeline import Pipeline
from .. import ServerTransport, limits
from . import frames as f
from .connection import log
from .server_connection import ServerConnection

__all__ = ["TcpServer"]

_T = TypeVar("_T")


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _connection_cap(wanted: int, reserve: int) -> int:
    """`wanted`, but never more than the descriptors the process may still open minus
    `reserve`: a flood of connections must not leave the registry heartbeat, the gRPC port or
    outgoing calls without a descriptor (the node would drop out of discovery)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 0
    cap = max(1, min(wanted, soft - in_use - reserve))
    if cap < wanted:
        log.info("tcp: at most %d connections (descriptor limit %d, %d kept in reserve)", cap, soft, reserve)
    return cap


class TcpServer(ServerTransport):
    """The `tcp` listener. Every option bounds what one peer can make the node hold or do;
    `None` takes the default from `microweave.transport.limits` (docs/protocol.md, section 15)."""

    name = "tcp"

    def __init__(
        self, *, max_frame_size: int = f.DEFAULT_MAX_FRAME_SIZE, window: int = f.DEFAULT_INITIAL_WINDOW,
        max_concurrent_streams: int | None = None, max_connections: int | None = None,
        fd_reserve: int | None = None, handshake_timeout: float | None = None,
        frame_timeout: float | None = None, body_timeout: float | None = None,
        ping_budget: int | None = None, ping_window: float | None = None,
        frames_per_turn: int | None = None, max_buffered_bytes: int | None = None,
    ) -> None:  # fmt: skip
        self.max_frame_size = max_frame_size
        self.window = window
        self.max_concurrent_streams = _pick(max_concurrent_streams, limits.MAX_CONCURRENT_STREAMS)
        self.handshake_timeout = _pick(handshake_timeout, limits.HANDSHAKE_TIMEOUT)
        self.frame_timeout = _pick(frame_timeout, limits.FRAME_TIMEOUT)
        self.body_timeout = _pick(body_timeout, limits.BODY_TIMEOUT)
        self.ping_budget = _pick(ping_budget, limits.PING_BUDGET)
        self.ping_window = _pick(ping_window, limits.PING_WINDOW)
        self.frames_per_turn = _pick(frames_per_turn, limits.FRAMES_PER_TURN)
        self.max_buffered_bytes = _pick(max_buffered_bytes, limits.MAX_BUFFERED_BYTES)
        self.max_connections = _connection_cap(
            _pick(max_connections, limits.MAX_CONNECTIONS), _pick(fd_reserve, limits.FD_RESERVE)
        )
        self.connections: set[ServerConnection] = set()
        self.draining = False
        self.drained = asyncio.Event()  # set when a connection goes quiet while draining
        self._server: asyncio.Server | None = None
        self.pipeline: Pipeline

    async def start(self, pipeline: Pipeline, *, host: str, port: int) -> str:
        self.pipeline = pipeline
        loop = asyncio.get_running_loop()
        # `host` as an address writes it (IPv6 in brackets, which gRPC wants too); sockets take it bare
        self._server = await loop.create_server(lambda: ServerConnection(self), host.strip("[]"), port)
        bound = self._server.sockets[0].getsockname()
        return f"{host}:{bound[1]}"

    async def stop(self, grace: float) -> None:
        """GOAWAY to every connection, finish in-flight calls for up to `grace`, then close."""
        if self._server is None:
            return
        self.draining = True
        self._server.close()
        for conn in list(self.connections):
            conn.goaway_sent = True
            conn.write(f.encode_goaway(conn.last_opened, f.ErrorCode.NO_ERROR, "draining"))
        deadline = time.monotonic() + grace
        while any(c.active() for c in self.connections) and (left := deadline - time.monotonic()) > 0:
            self.drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drained.wait(), left)
        for conn in list(self.connections):
            conn.close(f.ErrorCode.NO_ERROR, "server stopped")
        await self._server.wait_closed()
        self._server = None
