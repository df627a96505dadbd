"""What both ends of a `tcp` connection share: the asyncio Protocol, framing, flow control,
keepalive and the GOAWAY handshake. `server.py` and `client.py` add what each side does with
a stream.

asyncio Protocols rather than streams: a call is a callback on bytes already read, with no task
switch until a handler really waits — that is most of the distance between this transport and
grpcio (see docs/protocol.md for the wire format).

Every connection is also a peer we may not trust: it gets a handshake deadline, a frame-progress
deadline (only complete frames prove it alive), a PING budget, a cap on the frames handled per
turn of the event loop, and (on the server) no reading while its own output is backed up or
while the request bytes it holds for its handlers are over budget. The defaults live in
`transport/limits.py`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from typing import Any

from ...metrics import ConnectionStats, connections
from ...server import Kind
from .. import limits
from . import frames as f

__all__ = ["CALL_KINDS", "Connection"]


log = logging.getLogger("microweave.transport.tcp")

#: our call kinds as the wire numbers them
CALL_KINDS = {
    Kind.UNARY: f.CallKind.UNARY,
    Kind.SERVER_STREAM: f.CallKind.SERVER_STREAM,
    Kind.CLIENT_STREAM: f.CallKind.CLIENT_STREAM,
    Kind.BIDI: f.CallKind.BIDI,
}
KEEPALIVE = 30.0  # seconds of silence before we PING the peer
KEEPALIVE_TIMEOUT = 10.0  # seconds without any frame after our PING: the connection is dead


class _Throttle:
    """Connection-level warnings, at most one line per kind per `limits.LOG_INTERVAL`; the next
    line that gets through says how many were held back. A thousand bad peers then cost the log
    one line a second, not a thousand (the kinds are a handful of fixed strings)."""

    def __init__(self) -> None:
        self._quiet_until: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._quiet_until.get(kind, 0.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._quiet_until[kind] = now + limits.LOG_INTERVAL
        held = self._held.pop(kind, 0)
        if held:
            message += " (%d more like this suppressed)"
            args = (*args, held)
        log.warning(message, *args)


warn = _Throttle().warning


class Connection(asyncio.Protocol):
    """Preface, SETTINGS, PING and GOAWAY; subclasses handle the stream frames."""

    is_server = False
    #: stop reading while our output to the peer is backed up. Only a server does: if both ends
    #: did, two peers writing to each other at once could each wait for the other to read.
    pause_when_backed_up = False
    #: request bytes held for the application (`buffered`) above which reading stops until
    #: they are back under half; only a server sets one, a client must keep reading (above)
    max_buffered = sys.maxsize

    def __init__(
        self, *, max_frame_size: int = f.DEFAULT_MAX_FRAME_SIZE, window: int = f.DEFAULT_INITIAL_WINDOW,
        handshake_timeout: float | None = None, frame_timeout: float | None = None,
        ping_budget: int | None = None, ping_window: float | None = None,
        frames_per_turn: int | None = None,
    ) -> None:  # fmt: skip
        self.handshake_timeout = limits.HANDSHAKE_TIMEOUT if handshake_timeout is None else handshake_timeout
        self.frame_timeout = limits.FRAME_TIMEOUT if frame_timeout is None else frame_timeout
        self.ping_budget = limits.PING_BUDGET if ping_budget is None else ping_budget
        self.ping_window = limits.PING_WINDOW if ping_window is None else ping_window
        self.frames_per_turn = limits.FRAMES_PER_TURN if frames_per_turn is None else frames_per_turn
        self.transport: asyncio.Transport | None = None
        # the header block limit we announce is the one our decoder enforces (smaller than the
        # default when frames are: a block must fit in one)
        block = min(f.DEFAULT_MAX_HEADER_BLOCK, max_frame_size - 4)
        self.decoder = f.FrameDecoder(
            server=self.is_server, max_frame_size=max_frame_size, max_header_block=block
        )
        self.settings = f.Settings(
            max_frame_size=max_frame_size, initial_window=window, max_header_block=block
        )
        self.peer = f.Settings()  # until the peer's SETTINGS frame arrives
        self.closed = False
        self.goaway_received: f.GoAway | None = None
        self.goaway_sent = False
        self._paused: asyncio.Future[None] | None = None
        self._opened = self._last_seen = time.monotonic()
        self._partial_since: float | None = None  # when the frame now half-received began
        self._pings = 0  # PINGs received in the current budget window
        self._pings_reset = 0.0  # when the window ends
        self._write_blocked = False  # the transport's buffer is above its high-water mark
        #: bytes of messages received and not yet read by the application (see `Inbox`)
        self.buffered = 0
        self.over_budget = False  # `buffered` went over `max_buffered`, not yet back under half
        self._reading_paused = False
        self._backlog: list[f.Frame] | None = None  # frames decoded but not yet handled
        self._backlog_pos = 0
        self._ping_sent: float | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._peer_name: str | None = None
        # one deadline timer per connection, at the earliest deadline, not one per call: a timer
        # made and cancelled costs about 2 us a call, a comparison next to nothing
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = math.inf
        self._out: list[bytes] | None = None  # frames written since the last flush
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()  # resolves when the connection closes
        self.ready = self.loop.create_future()  # resolves when the peer's SETTINGS arrive
        self._counted: ConnectionStats | None = None  # in micro_transport_connections while open

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._counted = connections("tcp", "server" if self.is_server else "client")
        self._counted.connected()
        transport.write(f.PREFACE + f.encode_settings(self.settings))
        self._opened = time.monotonic()
        self._schedule_keepalive(min(KEEPALIVE, self.handshake_timeout))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except f.ProtocolError as exc:
            self._protocol_error(exc)
            return
        now = time.monotonic()
        if frames:  # complete frames prove the peer alive; bytes trickling in do not
            self._last_seen = now
            self._ping_sent = None
        if self.decoder.buffered:  # part of a frame (or of the preface) is waiting for the rest
            if frames or self._partial_since is None:
                self._partial_since = now
        else:
            self._partial_since = None
        if self._backlog is not None:  # a read that was under way when reading paused
            self._backlog.extend(frames)
        elif len(frames) <= self.frames_per_turn:  # the usual case: the whole read in one go
            try:
                for frame in frames:
                    self.frame_received(frame)
            except f.ProtocolError as exc:
                self._protocol_error(exc)
                return
            self.flush()  # the replies to everything this read held go out in one send
        else:
            self._handle(frames, 0)

    def _handle(self, frames: list[f.Frame], pos: int) -> None:
        """Handle up to `frames_per_turn` frames from `pos`; leave the rest for a later turn of
        the loop, not reading meanwhile, so one busy peer cannot hold the loop from the others."""
        stop = min(len(frames), pos + self.frames_per_turn)
        try:
            while pos < stop and not self.closed:
                self.frame_received(frames[pos])
                pos += 1
        except f.ProtocolError as exc:
            self._protocol_error(exc)
            return
        self.flush()
        if pos < len(frames) and not self.closed:
            self._backlog, self._backlog_pos = frames, pos
            if not self._write_blocked:
                self.loop.call_soon(self._next_turn)
        else:
            self._backlog = None
        self._update_reading()

    def _next_turn(self) -> None:
        if self._backlog is None or self.closed or self._write_blocked:
            return
        frames, self._backlog = self._backlog, None
        self._handle(frames, self._backlog_pos)

    def _update_reading(self) -> None:
        """Read from the peer unless frames are waiting, our output to it is backed up, or it
        has us holding more request bytes than the budget: independent reasons, reading resumes
        when none holds."""
        pause = self._backlog is not None or self._write_blocked or self.over_budget
        if pause == self._reading_paused or self.transport is None or self.transport.is_closing():
            return
        self._reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            # while we did not read, the peer could not prove itself alive nor finish a frame:
            # its clocks start again now
            now = self._last_seen = time.monotonic()
            self._ping_sent = None
            if self._partial_since is not None:
                self._partial_since = now
            self.transport.resume_reading()

    # -- the request-byte budget (`buffered`, `max_buffered`) ---------------------------------

    def hold(self, size: int) -> None:
        """Count `size` more request bytes held for the application; stop reading above the
        budget. Checked after the message is accepted: one message larger than the budget
        (but within max_frame_size) still gets through, alone."""
        self.buffered += size
        if self.buffered > self.max_buffered:
            self.budget_exceeded()

    def release(self, size: int) -> None:
        """`size` request bytes were handed on or dropped; read again once under half."""
        self.buffered -= size
        if self.over_budget and self.buffered <= self.max_buffered >> 1:
            self.budget_freed()

    def budget_exceeded(self) -> None:
        if not self.over_budget:
            self.over_budget = True
            self._update_reading()

    def budget_freed(self) -> None:
        self.over_budget = False
        self._update_reading()

    def _protocol_error(self, exc: f.ProtocolError) -> None:
        warn("protocol", "closing connection to %s: %s", self.peer_name, exc)
        self.close(exc.code, exc.message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._counted is not None:  # not one refused over the server's cap
            self._counted.disconnected()
            self._counted = None
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self.streams_lost(exc)
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError("closed before SETTINGS arrived"))
            self.ready.exception()  # retrieved: whoever awaits it re-raises
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = asyncio.get_running_loop().create_future()
        if self.pause_when_backed_up:
            self._write_blocked = True  # a peer that does not read gets no more work done
            self._update_reading()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        if self._write_blocked:
            self._write_blocked = False
            self._update_reading()
            if self._backlog is not None:
                self.loop.call_soon(self._next_turn)

    # -- for subclasses ----------------------------------------------------------------------

    @property
    def peer_name(self) -> str:
        """host:port of the peer, read once (every call on the connection names it)."""
        if self._peer_name is None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            self._peer_name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        return self._peer_name

    def write(self, data: bytes) -> None:
        """Queue a frame; frames queued in one loop iteration leave in one send (one syscall
        for a whole batch of calls, instead of one each)."""
        if self._out is None:
            self._out = [data]
            self.loop.call_soon(self.flush)
        else:
            self._out.append(data)

    def flush(self) -> None:
        out, self._out = self._out, None
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def drain(self) -> None:
        """Wait while the kernel buffer is full (streams only: a unary reply is one frame)."""
        if self._paused is not None and not self._paused.done():
            await self._paused

    def frame_received(self, frame: f.Frame) -> None:
        if isinstance(frame, f.Ping):
            if not frame.ack:
                if self._over_ping_budget():
                    warn("ping", "closing connection to %s: more than %d PINGs in %gs",
                         self.peer_name, self.ping_budget, self.ping_window)  # fmt: skip
                    self.close(f.ErrorCode.ENHANCE_YOUR_CALM, "too many PINGs")
                    return
                self.write(f.encode_ping(frame.opaque, ack=True))
        elif isinstance(frame, f.Settings):
            self.peer = frame
            if not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(frame, f.GoAway):
            self.goaway_received = frame
            self.goaway(frame)
        else:
            self.stream_frame(frame)

    def _over_ping_budget(self) -> bool:
        now = time.monotonic()
        if now >= self._pings_reset:
            self._pings_reset = now + self.ping_window
            self._pings = 0
        self._pings += 1
        return self._pings > self.ping_budget

    def stream_frame(self, frame: f.Frame) -> None:
        raise NotImplementedError

    def goaway(self, frame: f.GoAway) -> None:
        """The peer will accept no new streams above `frame.last_stream_id`."""

    def streams_lost(self, exc: Exception | None) -> None:
        """The connection is gone: fail or cancel every open stream."""

    def active(self) -> int:
        """Open streams (for idle detection and drain)."""
        return 0

    def close(self, code: int = f.ErrorCode.NO_ERROR, debug: str = "") -> None:
        if self.transport is not None and not self.closed:
            self.flush()
            self.transport.write(f.encode_goaway(self.last_stream_id(), code, debug))
            self.closed = True
            self.transport.close()

    def last_stream_id(self) -> int:
        return 0

    # -- deadlines ------------------------------------------------------------------------------

    def sweep_at(self, deadline: float) -> None:
        """Make sure `expire` runs no later than `deadline` (a `time.monotonic()` value)."""
        if deadline >= self._sweep_at:
            return
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep_at = deadline
        self._sweep = self.loop.call_at(self.loop.time() + (deadline - time.monotonic()), self._swept)

    def _swept(self) -> None:
        self._sweep, self._sweep_at = None, math.inf
        upcoming = self.expire(time.monotonic())
        if upcoming < math.inf:
            self.sweep_at(upcoming)

    def expire(self, now: float) -> float:
        """End what is past its deadline at `now`; return the next deadline (inf: none)."""
        return math.inf

    # -- keepalive ----------------------------------------------------------------------------

    def _schedule_keepalive(self, delay: float) -> None:
        self._keepalive = self.loop.call_later(max(delay, 0.001), self._check_alive)

    def _check_alive(self) -> None:
        """The connection's one timer: handshake and frame-progress deadlines, keepalive, idle."""
        if self.closed:
            return
        now = time.monotonic()
        if not self.ready.done() and now - self._opened >= self.handshake_timeout:
            warn("handshake", "closing connection to %s: no preface and SETTINGS within %gs",
                 self.peer_name, self.handshake_timeout)  # fmt: skip
            self.close(f.ErrorCode.NO_ERROR, "handshake timeout")
            return
        if self.over_budget:
            # we stopped reading, not the peer: its silence and its half-read frame are ours
            self._last_seen, self._ping_sent = now, None
            if self._partial_since is not None:
                self._partial_since = now
        partial = self._partial_since
        if partial is not None and now - partial >= self.frame_timeout:
            warn("frame", "closing connection to %s: a frame did not complete within %gs",
                 self.peer_name, self.frame_timeout)  # fmt: skip
            self.close(f.ErrorCode.NO_ERROR, "frame timeout")
            return
        if self._ping_sent is not None and now - self._ping_sent > KEEPALIVE_TIMEOUT:
            warn("keepalive", "connection to %s missed its keepalive; closing", self.peer_name)
            self.close(f.ErrorCode.NO_ERROR, "keepalive timeout")
            return
        if self.idle_expired(now):
            self.close(f.ErrorCode.NO_ERROR, "idle")
            return
        if now - self._last_seen >= KEEPALIVE and self._ping_sent is None:
            self._ping_sent = now
            self.write(f.encode_ping(os.urandom(8)))
        wake = min(KEEPALIVE, self.frame_timeout)
        if not self.ready.done():
            wake = min(wake, self._opened + self.handshake_timeout - now)
        if partial is not None:
            wake = min(wake, partial + self.frame_timeout - now)
        self._schedule_keepalive(wake)

    def idle_expired(self, now: float) -> bool:
        return False
