"""Hostile peers on the tcp port of a real service process (issue 7): a request run many times,
a peer that never reads, request bytes piled up in front of slow handlers, a PING flood,
half-open streams, slowloris, and log floods.

Each test attacks `services/hostile.py` over raw sockets and checks the node's answer on the
wire, its memory, its registry entry and its log. Times are never asserted: latency is compared
as a ratio with a baseline measured in the same test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import ServiceProcess, ServiceProcesses, async_wait_until
from test_tcp_wire import RawPeer

from microweave import Client
from microweave.server import Kind
from microweave.transport.tcp import frames as f

COUNT = "/hostile.Hostile/Count"
BIG = "/hostile.Hostile/Big"
COLLECT = "/hostile.Hostile/Collect"
MiB = 1024 * 1024


def _rss(pid: int) -> int:
    """Resident memory of a process, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _start(processes: ServiceProcesses, *args: str, limits: dict[str, Any] | None = None) -> ServiceProcess:
    env = {"HOSTILE_LIMITS": json.dumps(limits)} if limits else None
    return processes.start("hostile.py", *args, name="hostile", env=env)


def _tcp(proc: ServiceProcess) -> str:
    return str(proc.node["metadata"]["tcp_address"])


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with Client(transports=("tcp",), timeout=20) as c:
        yield c


async def _started(client: Client) -> int:
    reply = await client.call("hostile", "Hostile.Total", {})
    return int(reply["count"])


# -- 1. one request, one execution -----------------------------------------------------------


async def test_data_after_end_stream_never_runs_the_handler_again(
    processes: ServiceProcesses, client: Client
) -> None:
    proc = _start(processes)
    peer = await RawPeer.connect(_tcp(proc))
    try:
        hold = msgspec.json.encode({"seconds": 2.0})
        peer.writer.write(f.encode_headers(1, COUNT, body=hold, end_stream=True))
        await async_wait_until(lambda: _is(client, 1), what="the handler to start")
        # the request is complete: 100 more bodies with END_STREAM on the same stream
        peer.writer.write(b"".join(f.encode_data(1, hold, end_stream=True) for _ in range(100)))
        frames = await peer.read_for(1.0)
        assert await _started(client) == 1
        resets = [(fr.stream_id, fr.code) for fr in frames if isinstance(fr, f.RstStream)]
        assert resets == [(1, f.ErrorCode.STREAM_CLOSED)]
        assert not any(isinstance(fr, f.GoAway) for fr in frames)

        # DATA on a stream the client never opened is a connection error
        peer.writer.write(f.encode_data(99, hold, end_stream=True))
        frames = await peer.read_for(5)
        goaways = [fr for fr in frames if isinstance(fr, f.GoAway)]
        assert [g.code for g in goaways] == [f.ErrorCode.PROTOCOL_ERROR]
        assert await _started(client) == 1
    finally:
        await peer.aclose()


async def _is(client: Client, count: int) -> bool:
    return await _started(client) == count


async def test_long_form_takes_one_body(processes: ServiceProcesses, client: Client) -> None:
    proc = _start(processes)
    peer = await RawPeer.connect(_tcp(proc))
    try:
        body = msgspec.json.encode({"seconds": 0.0})
        burst = f.encode_headers(1, COUNT)  # the long form: the body follows in DATA
        burst += f.encode_data(1, body) + f.encode_data(1, body)  # a second message: refused
        burst += f.encode_headers(3, COUNT) + f.encode_data(3, body, end_stream=True)
        peer.writer.write(burst)
        frames = await peer.read_for(1.5)
        resets = [(fr.stream_id, fr.code) for fr in frames if isinstance(fr, f.RstStream)]
        assert resets == [(1, f.ErrorCode.PROTOCOL_ERROR)]
        replies = [fr for fr in frames if isinstance(fr, f.Trailers)]
        assert [(t.stream_id, t.status) for t in replies] == [(3, 0)]
        assert await _started(client) == 1
    finally:
        await peer.aclose()


# -- 2. a peer that never reads ------------------------------------------------------------------


async def test_a_peer_that_never_reads_cannot_grow_server_memory(
    processes: ServiceProcesses, client: Client
) -> None:
    proc = _start(processes)
    base = _rss(proc.pid)
    bound = 200 * MiB
    host, port = _tcp(proc).rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.transport.set_write_buffer_limits(high=4 * MiB)
    writer.write(f.PREFACE + f.encode_settings())
    request = msgspec.json.encode({"size": 256 * 1024})
    sid, peak = 1, base
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    try:
        while loop.time() < end and peak - base < bound:
            batch = []
            for _ in range(64):
                batch.append(f.encode_headers(sid, BIG, body=request, end_stream=True))
                sid += 2
            writer.write(b"".join(batch))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writer.drain(), 0.25)  # the server stopped reading: fine
            peak = max(peak, _rss(proc.pid))
        assert peak - base < bound, f"server RSS grew by {(peak - base) / MiB:.0f} MiB"
        # and the node still serves everyone else
        assert await client.call("hostile", "Hostile.Echo", {"text": "hi"}) == {"text": "hi"}
    finally:
        writer.transport.abort()
        del reader


# -- 2b. request bytes piled up in front of slow handlers ------------------------------------------


class _Pusher:
    """A thread that sends `frames` (built lazily, one at a time) over a blocking socket and
    never reads: it blocks as soon as the server stops reading. `stop()` ends it."""

    def __init__(self, address: str, frames: Iterable[bytes]) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.sendall(f.PREFACE + f.encode_settings())
        self.sent = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, args=(frames,))
        self._thread.start()

    def _send(self, frames: Iterable[bytes]) -> None:
        """Sets `done` only when every frame went out (not when stopped or hung up on)."""
        with contextlib.suppress(OSError):
            for frame in frames:
                if self._stop.is_set():
                    return
                self.sock.sendall(frame)
                self.sent += len(frame)
            self.done.set()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self.sock.close()


#: a message just under the default `max_frame_size` (4 MiB)
_FULL = 4 * MiB - 256


def _slow_uploads(streams: int) -> Iterator[bytes]:
    """Client streams to a handler that takes one item per 5 s, each sent a full window of
    messages as large as a frame may be."""
    item = msgspec.json.encode({"data": "x" * (_FULL - 64), "pause": 5.0})
    sids = range(1, 2 * streams, 2)
    for sid in sids:
        yield f.encode_headers(sid, COLLECT, kind=f.CallKind.CLIENT_STREAM)
    for _ in range(f.DEFAULT_INITIAL_WINDOW):
        for sid in sids:
            yield f.encode_data(sid, item)


def _half_open_requests(streams: int) -> Iterator[bytes]:
    """Unary requests whose HEADERS carry a body as large as a frame may, never completed."""
    body = msgspec.json.encode({"seconds": 0.0, "pad": "x" * (_FULL - 1024)})
    for sid in range(1, 2 * streams, 2):
        yield f.encode_headers(sid, COUNT, body=body)  # no END_STREAM: waits for more


@pytest.mark.parametrize(
    "attack", [functools.partial(_slow_uploads, 48), functools.partial(_half_open_requests, 200)],
    ids=["client streams to a slow handler", "half-open requests"],
)  # fmt: skip
async def test_request_bytes_one_connection_makes_a_node_hold_are_bounded(
    processes: ServiceProcesses, client: Client, attack: Any
) -> None:
    proc = _start(processes)
    assert await client.call("hostile", "Hostile.Echo", {"text": "warm"}) == {"text": "warm"}
    base = peak = _rss(proc.pid)
    bound = 300 * MiB
    pusher = _Pusher(_tcp(proc), attack())
    served = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + 8
    try:
        while loop.time() < end and not pusher.done.is_set() and peak - base < bound:
            # a well-behaved client on another connection keeps being served meanwhile
            text = str(served)
            assert await client.call("hostile", "Hostile.Echo", {"text": text}) == {"text": text}
            served += 1
            peak = max(peak, _rss(proc.pid))
            await asyncio.sleep(0.05)
    finally:
        pusher.stop()
    grew, sent = (peak - base) / MiB, pusher.sent / MiB
    assert peak - base < bound, f"server RSS grew by {grew:.0f} MiB; the peer sent {sent:.0f} MiB"
    assert not pusher.done.is_set(), f"the server read all {sent:.0f} MiB the peer sent"
    assert served >= 10 and proc.alive()


async def _collect(client: Client, items: list[dict[str, Any]]) -> dict[str, Any]:
    async def requests() -> AsyncIterator[dict[str, Any]]:
        for item in items:
            yield item

    replies = [
        r async for r in client.stream("hostile", "Hostile.Collect", requests(), kind=Kind.CLIENT_STREAM)
    ]
    assert len(replies) == 1
    return dict(replies[0])


async def test_client_streams_within_the_budget_complete(processes: ServiceProcesses, client: Client) -> None:
    _start(processes)
    items = [{"data": "z" * 100} for _ in range(5000)]
    assert await _collect(client, items) == {"items": 5000, "chars": 500_000}


async def test_a_small_budget_pauses_and_resumes_and_still_takes_a_larger_message(
    processes: ServiceProcesses, client: Client
) -> None:
    # 1 MiB budget: a 3 MiB message is taken (the budget is checked after a frame), and many
    # 64 KiB messages make the connection pause and resume over and over
    _start(processes, limits={"MAX_BUFFERED_BYTES": MiB})
    big = [{"data": "b" * (3 * MiB)} for _ in range(3)]
    assert await _collect(client, big) == {"items": 3, "chars": 9 * MiB}
    small = [{"data": "s" * 65536} for _ in range(200)]
    uploads = [_collect(client, small) for _ in range(4)]
    assert await asyncio.gather(*uploads) == [{"items": 200, "chars": 200 * 65536}] * 4


async def test_a_connection_paused_for_its_budget_is_not_timed_out(
    processes: ServiceProcesses, client: Client
) -> None:
    # the server stops reading while a slow handler catches up: a frame it has half read then
    # waits on the server, not on the peer, and must not count against the frame timeout
    # (the handshake timeout sets when the connection's timer first looks at the frame timeout)
    _start(processes, limits={"MAX_BUFFERED_BYTES": MiB, "FRAME_TIMEOUT": 1.0, "HANDSHAKE_TIMEOUT": 1.0})
    items = [{"data": "p" * 700_000, "pause": 1.5} for _ in range(5)]
    assert await _collect(client, items) == {"items": 5, "chars": 3_500_000}
    assert await client.call("hostile", "Hostile.Echo", {"text": "still"}) == {"text": "still"}


# -- 3. PING flood --------------------------------------------------------------------------------


class _Flood:
    """A thread that sends one frame, over and over, as fast as the socket takes it, and never
    reads what comes back; it stops when the server hangs up or on `stop()`."""

    def __init__(self, address: str, frame: bytes) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.sendall(f.PREFACE + f.encode_settings())
        self.chunk = frame * (65536 // len(frame))
        self.sent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send)]  # it never reads: the worst case
        for t in self._threads:
            t.start()

    def _send(self) -> None:
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                self.sock.sendall(self.chunk)
                self.sent += len(self.chunk)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(10)
        self.sock.close()


async def _p50(client: Client, calls: int) -> float:
    took = []
    for i in range(calls):
        start = time.perf_counter()
        await client.call("hostile", "Hostile.Echo", {"text": str(i)})
        took.append(time.perf_counter() - start)
    return statistics.median(took)


async def test_a_ping_flood_leaves_other_connections_their_latency(
    processes: ServiceProcesses, client: Client
) -> None:
    proc = _start(processes)
    await _p50(client, 50)  # warm up the connection and the handler
    baseline = await _p50(client, 300)
    flood = _Flood(_tcp(proc), f.encode_ping(b"12345678"))
    try:
        await asyncio.sleep(2)
        during = await _p50(client, 300)
    finally:
        flood.stop()
    assert during <= 5 * baseline, f"p50 {during * 1e3:.2f} ms under flood, {baseline * 1e3:.2f} ms before"
    assert proc.alive()


# -- 4. half-open streams ---------------------------------------------------------------------------


async def test_half_open_streams_are_refused_or_reaped(processes: ServiceProcesses, client: Client) -> None:
    proc = _start(processes, limits={"BODY_TIMEOUT": 1.0})
    base = _rss(proc.pid)
    streams = 2000
    body = msgspec.json.encode({"seconds": 0.0})
    for timeout_us in (1000, 0):  # a 1 ms deadline, then none (the body-wait timeout reaps)
        peer = await RawPeer.connect(_tcp(proc))
        try:
            ids = range(1, 2 * streams, 2)
            opening = [f.encode_headers(sid, COUNT, timeout_us=timeout_us, body=body) for sid in ids]
            peer.writer.write(b"".join(opening))  # HEADERS with the body, never END_STREAM

            await async_wait_until(
                functools.partial(_answered, peer, streams), timeout=20, interval=0, what="every answer"
            )
            settings = peer.frames[0]
            assert isinstance(settings, f.Settings) and settings.max_concurrent_streams < 2**32 - 1
            refused = {fr.stream_id for fr in peer.frames if isinstance(fr, f.RstStream)}
            reaped = {fr.stream_id: fr for fr in peer.frames if isinstance(fr, f.Trailers)}
            assert refused.isdisjoint(reaped) and len(refused | set(reaped)) == streams
            if not timeout_us:  # all arrive well within the body timeout: at most the limit wait
                assert len(reaped) <= settings.max_concurrent_streams
            assert all(t.error is not None and t.error.code == 408 for t in reaped.values())
            assert not any(isinstance(fr, f.GoAway) for fr in peer.frames)
        finally:
            await peer.aclose()
    assert await _started(client) == 0  # no request was complete: nothing ran
    assert _rss(proc.pid) - base < 100 * MiB


async def _answered(peer: RawPeer, streams: int) -> bool:
    """Whether `streams` streams have been refused (RST_STREAM) or answered (TRAILERS)."""
    frames = await peer.read_for(0.2)
    return len({fr.stream_id for fr in frames if isinstance(fr, f.RstStream | f.Trailers)}) >= streams


# -- 5. slowloris -----------------------------------------------------------------------------------


def _expires(registry: Path, node_id: str) -> float:
    record = json.loads((registry / "hostile" / f"{node_id}.json").read_bytes())
    return float(record["expires"])


class _Slowloris:
    """`count` connections that each send the preface one byte per `pace` seconds and
    reconnect when closed."""

    def __init__(self, address: str, count: int, pace: float) -> None:
        host, port = address.rsplit(":", 1)
        self.target = (host, int(port))
        self.pace = pace
        self.connected = 0
        self.tasks = [asyncio.get_running_loop().create_task(self._one()) for _ in range(count)]

    async def _one(self) -> None:
        payload = f.PREFACE + f.encode_settings()
        while True:
            try:
                async with asyncio.timeout(3):
                    _, writer = await asyncio.open_connection(*self.target)
            except (OSError, TimeoutError):
                await asyncio.sleep(self.pace)
                continue
            self.connected += 1
            try:
                for i in range(len(payload)):
                    writer.write(payload[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(self.pace)
                    if writer.transport.is_closing():
                        break
                while not writer.transport.is_closing():  # then a frame that never completes
                    writer.write(b"\x00")
                    await writer.drain()
                    await asyncio.sleep(self.pace)
            except OSError:
                pass
            finally:
                writer.transport.abort()
            await asyncio.sleep(self.pace)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_slowloris_under_a_small_descriptor_limit(
    processes: ServiceProcesses, client: Client, registry_dir: Path
) -> None:
    proc = _start(processes, "--nofile", "1024", "--ttl", "3")
    assert await client.call("hostile", "Hostile.Echo", {"text": "a"}) == {"text": "a"}
    attack = _Slowloris(_tcp(proc), 1100, pace=1.0)
    try:
        await async_wait_until(
            lambda: asyncio.sleep(0, attack.connected >= 1100), timeout=30, what="the attack to connect"
        )
        before = _expires(registry_dir, proc.node_id)
        loop = asyncio.get_running_loop()
        end = loop.time() + 8
        async with Client(transports=("grpc",), timeout=10) as fresh:
            while loop.time() < end:
                # the established tcp connection keeps serving, and so does a new gRPC one
                assert await client.call("hostile", "Hostile.Echo", {"text": "b"}) == {"text": "b"}
                assert await fresh.call("hostile", "Hostile.Echo", {"text": "c"}) == {"text": "c"}
                assert proc.registered(), "the node dropped out of the registry"
                await asyncio.sleep(0.5)
        assert _expires(registry_dir, proc.node_id) >= before + 4  # the heartbeat kept beating
    finally:
        await attack.stop()
    assert "Too many open files" not in proc.output()


# -- 13. log floods -----------------------------------------------------------------------------


async def test_bad_connections_do_not_flood_the_log(processes: ServiceProcesses) -> None:
    proc = _start(processes)
    host, port = _tcp(proc).rsplit(":", 1)

    async def bad() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(bad() for _ in range(50)))
    await asyncio.sleep(1.2)
    await bad()
    await asyncio.sleep(0.5)
    lines = [line for line in proc.output().splitlines() if "not a microweave peer" in line]
    assert 2 <= len(lines) <= 3, lines
    assert "suppressed" in lines[-1]


async def test_clients_wait_for_a_stream_instead_of_being_refused(
    processes: ServiceProcesses, client: Client
) -> None:
    _start(processes, limits={"MAX_CONCURRENT_STREAMS": 4})
    calls = [client.call("hostile", "Hostile.Count", {"seconds": 0.1}) for _ in range(40)]
    replies = await asyncio.gather(*calls)
    assert sorted(r["count"] for r in replies)[-1] == 40  # every call ran, none was refused
