"""The tcp transport against a hostile or failing network: garbage, oversized frames, a server
killed mid-stream and brought back."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from helpers import ServiceProcesses, async_wait_until, free_port

from microweave import BadRequest, Client, NotImplementedError_, Service, TooManyRequests, Unavailable
from microweave.server import Kind
from microweave.transport.tcp import TcpClient
from microweave.transport.tcp import frames as f


class Note(msgspec.Struct):
    text: str


class Echo:
    async def echo(self, req: Note) -> Note:
        return req

    async def hold(self, reqs: AsyncIterator[Note]) -> Note:
        """Reads nothing: whatever the client sends beyond its window must be refused."""
        await asyncio.sleep(30)
        return Note("late")

    async def flood(self, req: Note) -> AsyncIterator[Note]:
        for i in range(100_000):
            yield Note(str(i))


@pytest.fixture
async def tcp_service() -> AsyncIterator[tuple[Service, Client]]:
    registry = f"memory://wire-{uuid.uuid4().hex}"
    service = Service("wire", registry=registry, drain_delay=0)
    service.handler(Echo())
    async with service, Client(registry=registry, transports=("tcp",)) as client:
        yield service, client


async def _exchange(address: str, payload: bytes) -> bytes:
    """Send raw bytes to the tcp port and read what comes back until the server closes."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


def _goaway_code(reply: bytes) -> int | None:
    """The error code of the GOAWAY frame in the server's reply, if it sent one."""
    pos = len(f.PREFACE)
    while pos + f.HEADER_SIZE <= len(reply):
        length, ftype, _, _ = struct.unpack_from(">IBBI", reply, pos)
        if ftype == f.FrameType.GOAWAY:
            return int(struct.unpack_from(">I", reply, pos + f.HEADER_SIZE + 4)[0])
        pos += f.HEADER_SIZE + length
    return None


HOSTILE = {
    "wrong preface": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "newer version": f.MAGIC + b"\x00\x09" + f.encode_settings(),
    "oversized frame": f.PREFACE + f.encode_settings() + struct.pack(">IBBI", 2**31, 0, 2, 1),
    "unknown frame type": f.PREFACE + f.encode_settings() + struct.pack(">IBBI", 0, 0x42, 0, 1),
    "headers before settings": f.PREFACE + f.encode_headers(1, "/wire.Echo/Echo", end_stream=True),
    "garbage block": f.PREFACE
    + f.encode_settings()
    + struct.pack(">IBBII", 9, 1, 1, 1, 5)
    + b"\xc1\xc1\xc1\xc1\xc1",
    "even stream id": f.PREFACE + f.encode_settings() + f.encode_window_update(2, 1),
}


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=HOSTILE.keys())
async def test_bad_bytes_close_only_that_connection(
    tcp_service: tuple[Service, Client], payload: bytes
) -> None:
    service, client = tcp_service
    assert await client.call("wire", "Echo.Echo", Note("before"), response=Note) == Note("before")
    reply = await _exchange(service.addresses["tcp"], payload)
    if payload.startswith(f.PREFACE[:6]):
        assert _goaway_code(reply) not in (None, f.ErrorCode.NO_ERROR)  # said why, then closed
    # the server, and the client's own connection, carry on
    assert await client.call("wire", "Echo.Echo", Note("after"), response=Note) == Note("after")


async def test_oversized_frame_is_refused_before_it_is_buffered(tcp_service: tuple[Service, Client]) -> None:
    service, client = tcp_service
    # Declare a 3 GiB frame, send a little of it and wait: the server must hang up at once,
    # from the header alone, not wait for (or allocate) the payload.
    head = f.PREFACE + f.encode_settings() + struct.pack(">IBBI", 3 * 2**30, 0, 2, 1) + b"x" * 100
    reply = await _exchange(service.addresses["tcp"], head)
    assert _goaway_code(reply) == f.ErrorCode.FRAME_SIZE_ERROR
    assert await client.call("wire", "Echo.Echo", Note("ok"), response=Note) == Note("ok")


async def test_killed_mid_stream_is_unavailable_then_reconnects(processes: ServiceProcesses) -> None:
    port = free_port()
    env = {"MICRO_TCP_ADDRESS": f"127.0.0.1:{port}"}
    first = processes.start("examples/greeter/service.py", name="greeter", env=env)
    async with Client(transports=("tcp",)) as client:
        stream = client.stream("greeter", "Greeter.SayHelloStream", {"name": "x" * 10_000})
        assert await anext(stream) == {"message": "Hello x"}
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        with pytest.raises(Unavailable):
            async for _ in stream:
                pass
        with pytest.raises(Unavailable):
            await client.call("greeter", "Greeter.SayHello", {"name": "y"}, timeout=5)

        processes.start("examples/greeter/service.py", name="greeter", env=env)

        async def answered() -> bool:
            try:
                reply = await client.call("greeter", "Greeter.SayHello", {"name": "back"}, timeout=5)
            except Unavailable:
                return False  # still within the reconnect backoff
            return bool(reply == {"message": "Hello back"})

        await async_wait_until(answered, timeout=30, interval=0.2, what="the pool to reconnect")


class Sizes:
    async def big_reply(self, req: Note) -> Note:
        return Note("y" * int(req.text))

    async def letters(self, req: Note) -> AsyncIterator[Note]:
        for letter in req.text:
            yield Note(letter)


@pytest.fixture
async def small_frames() -> AsyncIterator[tuple[Service, Client]]:
    """A server and client whose frames are capped at 64 KiB, so limits are cheap to reach."""
    registry = f"memory://sizes-{uuid.uuid4().hex}"
    service = Service("sizes", registry=registry, drain_delay=0, max_message=64 * 1024)
    service.handler(Sizes())
    async with service, Client(registry=registry, transports=("tcp",), max_message=64 * 1024) as client:
        yield service, client


async def test_request_over_the_servers_limit_fails_locally(small_frames: tuple[Service, Client]) -> None:
    _, client = small_frames
    with pytest.raises(TooManyRequests, match="at most"):
        await client.call("sizes", "Sizes.BigReply", Note("1" + " " * 100_000))
    # nothing was sent, so the connection and the server are fine
    assert await client.call("sizes", "Sizes.BigReply", Note("3"), response=Note) == Note("yyy")


async def _items() -> AsyncIterator[dict[str, str]]:
    yield {"data": "x"}


@pytest.mark.parametrize(
    ("metadata", "limit"),
    [({"x-big": "A" * 70_000}, "max_header_block"), ({f"x-{i}": "v" for i in range(200)}, "max_metadata")],
    ids=["header block", "metadata entries"],
)
async def test_metadata_over_the_servers_limit_fails_locally_and_spares_the_connection(
    processes: ServiceProcesses, metadata: dict[str, str], limit: str
) -> None:
    # The server's SETTINGS say what a header block may hold: a client that sent more would
    # have the whole shared connection closed (HEADERS_TOO_LARGE), every call on it lost.
    processes.start("hostile.py", name="hostile")
    async with Client(transports=("tcp",), timeout=20) as client:
        await client.call("hostile", "Hostile.Echo", {"text": "warm"})  # one pooled connection
        held = [
            asyncio.ensure_future(client.call("hostile", "Hostile.Count", {"seconds": 1.0})) for _ in range(3)
        ]
        await asyncio.sleep(0.3)  # the three are in flight on that connection
        try:
            with pytest.raises(BadRequest, match=limit) as info:
                await client.call("hostile", "Hostile.Echo", {"text": "big"}, metadata=metadata)
        finally:
            replies = await asyncio.gather(*held, return_exceptions=True)
        assert info.value.code == 400
        assert [r if isinstance(r, BaseException) else r["count"] for r in replies] == [3, 3, 3]
        with pytest.raises(BadRequest, match=limit):  # a stream's HEADERS too
            stream = client.stream(
                "hostile", "Hostile.Collect", _items(), kind=Kind.CLIENT_STREAM, metadata=metadata
            )
            await anext(stream)
        assert await client.call("hostile", "Hostile.Echo", {"text": "after"}) == {"text": "after"}
        (tcp,) = [t for t in client.transports if isinstance(t, TcpClient)]
        assert len(tcp._pool) == 1 and not next(iter(tcp._pool.values())).closed


async def test_reply_over_the_callers_limit_is_resource_exhausted(
    small_frames: tuple[Service, Client],
) -> None:
    _, client = small_frames
    with pytest.raises(TooManyRequests) as info:
        await client.call("sizes", "Sizes.BigReply", Note("100000"))
    assert info.value.code == 429
    assert await client.call("sizes", "Sizes.BigReply", Note("2"), response=Note) == Note("yy")


async def test_call_of_the_wrong_kind_is_unimplemented(small_frames: tuple[Service, Client]) -> None:
    _, client = small_frames
    with pytest.raises(NotImplementedError_, match="server-streaming; called as unary"):
        await client.call("sizes", "Sizes.Letters", Note("ab"))
    got = [n async for n in client.stream("sizes", "Sizes.Letters", Note("ab"), response=Note)]
    assert got == [Note("a"), Note("b")]


class RawPeer:
    """A hand-driven client connection: what a misbehaving or slow peer can do."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = f.FrameDecoder(server=False)
        self.frames: list[f.Frame] = []

    @classmethod
    async def connect(cls, address: str) -> RawPeer:
        host, port = address.rsplit(":", 1)
        peer = cls(*await asyncio.open_connection(host, int(port)))
        peer.writer.write(f.PREFACE + f.encode_settings())
        return peer

    async def read_for(self, seconds: float) -> list[f.Frame]:
        """Frames that arrive within `seconds` (a bounded read, not a timing assertion)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                break
            if not data:
                break
            self.frames.extend(self.decoder.feed(data))
        return self.frames

    async def aclose(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_overrunning_the_window_resets_only_that_stream(tcp_service: tuple[Service, Client]) -> None:
    service, _ = tcp_service
    peer = await RawPeer.connect(service.addresses["tcp"])
    try:
        body = msgspec.json.encode(Note("x"))
        burst = f.encode_headers(1, "/wire.Echo/Hold", kind=f.CallKind.CLIENT_STREAM)
        burst += b"".join(f.encode_data(1, body) for _ in range(f.DEFAULT_INITIAL_WINDOW + 4))
        burst += f.encode_headers(3, "/wire.Echo/Echo", body=body, end_stream=True)
        peer.writer.write(burst)
        frames = await peer.read_for(3)
        resets = [fr for fr in frames if isinstance(fr, f.RstStream)]
        assert [(r.stream_id, r.code) for r in resets] == [(1, f.ErrorCode.FLOW_CONTROL_ERROR)]
        replies = [fr for fr in frames if isinstance(fr, f.Trailers) and fr.stream_id == 3]
        assert len(replies) == 1 and replies[0].body == body  # the connection kept serving
        assert not any(isinstance(fr, f.GoAway) for fr in frames)
    finally:
        await peer.aclose()


async def test_a_reader_that_never_grants_credit_gets_one_window(tcp_service: tuple[Service, Client]) -> None:
    service, client = tcp_service
    peer = await RawPeer.connect(service.addresses["tcp"])
    try:
        request = msgspec.json.encode(Note(""))
        peer.writer.write(
            f.encode_headers(
                1, "/wire.Echo/Flood", kind=f.CallKind.SERVER_STREAM, body=request, end_stream=True
            )
        )
        frames = await peer.read_for(2)
        messages = [fr for fr in frames if isinstance(fr, f.Data) and fr.stream_id == 1]
        assert len(messages) == f.DEFAULT_INITIAL_WINDOW  # then the server waits, holding nothing more
        peer.writer.write(f.encode_window_update(1, 4))
        frames = await peer.read_for(2)
        messages = [fr for fr in frames if isinstance(fr, f.Data) and fr.stream_id == 1]
        assert len(messages) == f.DEFAULT_INITIAL_WINDOW + 4
        # other callers are not held up by the stalled stream
        assert await client.call("wire", "Echo.Echo", Note("free"), response=Note) == Note("free")
    finally:
        await peer.aclose()


async def test_a_silent_peer_is_pinged_then_dropped(
    tcp_service: tuple[Service, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    from microweave.transport.tcp import connection

    monkeypatch.setattr(connection, "KEEPALIVE", 0.2)
    monkeypatch.setattr(connection, "KEEPALIVE_TIMEOUT", 0.3)
    service, client = tcp_service
    peer = await RawPeer.connect(service.addresses["tcp"])
    try:
        frames = await peer.read_for(10)  # returns early when the server hangs up
        assert any(isinstance(fr, f.Ping) and not fr.ack for fr in frames)
        assert isinstance(frames[-1], f.GoAway) and "keepalive" in frames[-1].debug
        assert peer.reader.at_eof()
    finally:
        await peer.aclose()
    assert await client.call("wire", "Echo.Echo", Note("alive"), response=Note) == Note("alive")


async def test_idle_pooled_connections_are_closed_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    from microweave.transport.tcp import client as tcp_client
    from microweave.transport.tcp import connection

    monkeypatch.setattr(connection, "KEEPALIVE", 0.2)
    monkeypatch.setattr(tcp_client, "IDLE_CLOSE", 0.5)
    registry = f"memory://idle-{uuid.uuid4().hex}"
    service = Service("wire", registry=registry, drain_delay=0)
    service.handler(Echo())
    async with service, Client(registry=registry, transports=("tcp",)) as client:
        assert await client.call("wire", "Echo.Echo", Note("one"), response=Note) == Note("one")
        (tcp,) = [t for t in client.transports if isinstance(t, TcpClient)]
        pool = tcp._pool
        (conn,) = pool.values()
        await asyncio.wait_for(conn.done, 10)  # closed by the client once idle
        assert await client.call("wire", "Echo.Echo", Note("two"), response=Note) == Note("two")
        assert next(iter(pool.values())) is not conn  # a fresh connection
