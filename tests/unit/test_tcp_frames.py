"""The tcp transport's frame codec: round trips, splitting, limits and every malformed case."""

from __future__ import annotations

import re
import struct
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from microweave.transport.tcp.frames import (
    ACK,
    BODY,
    DEFAULT_MAX_FRAME_SIZE,
    END_STREAM,
    HEADER_SIZE,
    MIN_FRAME_SIZE,
    PREFACE,
    CallKind,
    Data,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    GoAway,
    Headers,
    Ping,
    ProtocolError,
    ResponseHeaders,
    RstStream,
    Settings,
    Trailers,
    WindowUpdate,
    WireError,
    encode,
    encode_data,
    encode_frame,
    encode_goaway,
    encode_headers,
    encode_ping,
    encode_response_headers,
    encode_rst_stream,
    encode_settings,
    encode_trailers,
    encode_window_update,
)

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
START = PREFACE + encode_settings()
MD = {"micro-from-service": "web", "traceparent": "00-abc-def-01"}


def decoder(
    *,
    server: bool,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    max_header_block: int | None = None,
    max_metadata: int = 128,
) -> FrameDecoder:
    """A decoder past the preface and SETTINGS, ready for stream frames."""
    dec = FrameDecoder(
        server=server,
        max_frame_size=max_frame_size,
        max_header_block=max_header_block,
        max_metadata=max_metadata,
    )
    assert dec.feed(START) == [Settings()]
    return dec


def block_frame(ftype: int, flags: int, sid: int, block: bytes, body: bytes = b"") -> bytes:
    """A HEADERS/TRAILERS frame around an arbitrary (possibly invalid) block."""
    return encode_frame(ftype, flags, sid, struct.pack(">I", len(block)) + block + body)


def raises(dec: FrameDecoder, wire: bytes, code: ErrorCode, match: str = "") -> ProtocolError:
    with pytest.raises(ProtocolError, match=match or None) as info:
        dec.feed(wire)
    assert info.value.code is code
    return info.value


# -- round trips ---------------------------------------------------------------------------

CLIENT_FRAMES: list[Frame] = [
    Headers(1, BODY | END_STREAM, "/greeter.Greeter/SayHello", "application/json",
            CallKind.UNARY, 250_000, MD, b'{"name":"Ada"}'),
    Headers(3, 0, "/greeter.Greeter/Chat", "application/msgpack", CallKind.BIDI, 0, {}),
    Headers(5, END_STREAM, "/a.B/C", "", CallKind.CLIENT_STREAM, 2**63 - 1, {"k": ""}),
    Headers(7, BODY, "/a.B/C", "application/protobuf", CallKind.SERVER_STREAM, 1, {}, b""),
    Data(3, BODY, b"x" * 1000),
    Data(3, BODY, b""),
    Data(3, BODY | END_STREAM, b"last"),
    Data(5, END_STREAM, None),
    RstStream(3, ErrorCode.CANCEL),
    RstStream(3, 0xDEAD),
    WindowUpdate(3, 1),
    WindowUpdate(3, 2**31 - 1),
    Ping(False, b"12345678"),
    Ping(True, b"\x00" * 8),
    GoAway(0, ErrorCode.NO_ERROR, ""),
]  # fmt: skip

SERVER_FRAMES: list[Frame] = [
    ResponseHeaders(1, 0, MD),
    ResponseHeaders(3, BODY, {}, b"first"),
    Data(1, BODY, b"reply"),
    Trailers(1, BODY, 0, None, {}, b'{"message":"Hello Ada"}'),
    Trailers(3, 0, 0, None, {"x-took": "3ms"}),
    Trailers(5, 0, 5, WireError("greeter", 404, "no user Bob", "Not Found"), {}),
    Trailers(7, BODY, 13, WireError(code=500), {"a": "b"}, b""),
    RstStream(9, ErrorCode.REFUSED_STREAM),
    WindowUpdate(1, 8),
    Ping(True, b"abcdefgh"),
    GoAway(2**31 - 1, ErrorCode.ENHANCE_YOUR_CALM, "calm down ✋"),
    GoAway(7, 0x1234, ""),
]


@pytest.mark.parametrize(
    ("server", "frame"),
    [(True, f) for f in CLIENT_FRAMES] + [(False, f) for f in SERVER_FRAMES],
    ids=repr,
)
def test_every_frame_round_trips(server: bool, frame: Frame) -> None:
    assert decoder(server=server).feed(encode(frame)) == [frame]


def test_settings_round_trip_and_defaults() -> None:
    custom = Settings(MIN_FRAME_SIZE, 1, 0, 1024, 0, 30_000)
    assert FrameDecoder(server=True).feed(PREFACE + encode_settings(custom)) == [custom]
    empty = encode_frame(FrameType.SETTINGS, 0, 0, b"")
    assert FrameDecoder(server=False).feed(PREFACE + empty) == [Settings()]


def test_settings_ignores_unknown_ids_and_last_value_wins() -> None:
    payload = struct.pack(">HIHIHI", 0x99, 7, 0x2, 5, 0x2, 9)
    frames = FrameDecoder(server=True).feed(PREFACE + encode_frame(4, 0, 0, payload))
    assert frames == [Settings(initial_window=9)]


def test_frame_header_layout() -> None:
    assert encode_data(5, b"hi") == b"\x00\x00\x00\x02\x00\x02\x00\x00\x00\x05hi"
    assert encode_data(5, None, end_stream=True) == bytes.fromhex("00000000 00 01 00000005")
    assert encode_rst_stream(3, 8) == bytes.fromhex("00000004 03 00 00000003 00000008")
    assert encode_window_update(3, 4) == bytes.fromhex("00000004 07 00 00000003 00000004")
    ping = bytes.fromhex("00000008 05 01 00000000") + b"ABCDEFGH"
    assert encode_ping(b"ABCDEFGH", ack=True) == ping
    assert encode_goaway(7, 2, "x") == bytes.fromhex("00000009 06 00 00000000 00000007 00000002 78")


def test_unary_fast_and_long_forms_carry_the_same_call() -> None:
    fast = encode_headers(1, "/g.G/M", metadata=MD, body=b"req", end_stream=True, timeout_us=9)
    long = encode_headers(3, "/g.G/M", metadata=MD, timeout_us=9)
    long += encode_data(3, b"req", end_stream=True)
    dec = decoder(server=True)
    (h1,) = dec.feed(fast)
    h3, d3 = dec.feed(long)
    assert isinstance(h1, Headers) and isinstance(h3, Headers) and isinstance(d3, Data)
    assert (h1.path, h1.metadata, h1.timeout_us, h1.body) == ("/g.G/M", MD, 9, b"req")
    assert h1.flags == BODY | END_STREAM and h3.flags == 0 and h3.body is None
    assert d3 == Data(3, BODY | END_STREAM, b"req")


def test_headers_accepts_any_mapping_for_metadata() -> None:
    from types import MappingProxyType

    (h,) = decoder(server=True).feed(encode_headers(1, "/a.B/C", metadata=MappingProxyType(MD)))
    assert isinstance(h, Headers) and h.metadata == MD


def test_header_blocks_ignore_trailing_fields_from_later_versions() -> None:
    block = msgspec.msgpack.encode(["/a.B/C", "", 0, 0, {}, "future", [1, 2]])
    (h,) = decoder(server=True).feed(block_frame(FrameType.HEADERS, 0, 1, block))
    assert isinstance(h, Headers) and h.path == "/a.B/C"
    error = {"id": "x", "code": 404, "future": True}
    block = msgspec.msgpack.encode([5, error, {}, "future"])
    (t,) = decoder(server=False).feed(block_frame(FrameType.TRAILERS, 0, 1, block))
    assert isinstance(t, Trailers) and t.error == WireError(id="x", code=404)


def test_non_canonical_msgpack_is_accepted() -> None:
    # path as str16, kind as uint64, timeout as uint64, metadata as map16
    path = b"\xda\x00\x06/a.B/C"
    block = b"\x95" + path + b"\xa0" + b"\xcf" + bytes(8) + b"\xcf" + (7).to_bytes(8, "big")
    block += b"\xde\x00\x01\xa1k\xa1v"
    (h,) = decoder(server=True).feed(block_frame(FrameType.HEADERS, 0, 1, block))
    assert h == Headers(1, 0, "/a.B/C", "", CallKind.UNARY, 7, {"k": "v"})


# -- splitting -----------------------------------------------------------------------------


def conversation() -> tuple[bytes, list[Frame]]:
    frames: list[Frame] = [Settings(initial_window=4), *CLIENT_FRAMES]
    return PREFACE + b"".join(encode(f) for f in frames), frames


def test_split_at_every_offset() -> None:
    wire, expected = conversation()
    for cut in range(len(wire) + 1):
        dec = FrameDecoder(server=True)
        got = dec.feed(wire[:cut]) + dec.feed(wire[cut:])
        assert got == expected, cut
        assert dec.buffered == 0


def test_one_byte_at_a_time() -> None:
    wire, expected = conversation()
    dec = FrameDecoder(server=True)
    got: list[Frame] = []
    for i in range(len(wire)):
        got += dec.feed(wire[i : i + 1])
        assert dec.buffered <= HEADER_SIZE + 1000 + 8  # the largest frame in the stream
    assert got == expected


def test_three_way_splits_and_buffer_types() -> None:
    wire, expected = conversation()
    step = 7
    for a in range(0, len(wire), step):
        for b in range(a, len(wire), step * 5):
            for kind in (bytes, bytearray, memoryview):
                dec = FrameDecoder(server=True)
                got = [f for part in (wire[:a], wire[a:b], wire[b:]) for f in dec.feed(kind(part))]
                assert got == expected


def test_payloads_are_copies_so_the_caller_may_reuse_its_buffer() -> None:
    buf = bytearray(PREFACE + encode_settings() + encode_data(1, b"hello"))
    frames = FrameDecoder(server=False).feed(memoryview(buf))
    buf[:] = bytes(len(buf))
    assert frames[-1] == Data(1, BODY, b"hello")
    assert type(frames[-1].body) is bytes


def test_large_frame_straddling_many_chunks() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    wire = encode_data(1, body)
    dec = decoder(server=False)
    got: list[Frame] = []
    for i in range(0, len(wire), 65536):
        got += dec.feed(wire[i : i + 65536])
        assert dec.buffered <= HEADER_SIZE + len(body)
    assert got == [Data(1, BODY, body)]


def test_expect_preface_false() -> None:
    dec = FrameDecoder(server=True, expect_preface=False)
    assert dec.feed(encode_settings()) == [Settings()]


# -- preface and SETTINGS ------------------------------------------------------------------


def test_wrong_preface_fails_on_the_first_wrong_byte() -> None:
    dec = FrameDecoder(server=True)
    raises(dec, b"G", ErrorCode.PROTOCOL_ERROR, "not a microweave peer")
    dec = FrameDecoder(server=True)
    assert dec.feed(b"MWE") == []
    raises(dec, b"X", ErrorCode.PROTOCOL_ERROR, "not a microweave peer")


def test_http_client_is_told_clearly() -> None:
    exc = raises(FrameDecoder(server=True), b"GET / HTTP/1.1\r\n", ErrorCode.PROTOCOL_ERROR)
    assert "MWEAVE" in exc.message and "GET" in exc.message


@pytest.mark.parametrize("version", [0, 2, 0x0100, 0xFFFF])
def test_wrong_version(version: int) -> None:
    preface = b"MWEAVE" + version.to_bytes(2, "big")
    exc = raises(FrameDecoder(server=True), preface, ErrorCode.UNSUPPORTED_VERSION)
    assert f"version {version}" in exc.message and "speaks 1" in exc.message


def test_preface_split_byte_by_byte() -> None:
    dec = FrameDecoder(server=False)
    for b in PREFACE:
        assert dec.feed(bytes([b])) == []
    assert dec.feed(encode_settings()) == [Settings()]


def test_first_frame_must_be_settings() -> None:
    dec = FrameDecoder(server=True)
    raises(dec, PREFACE + encode_ping(b"12345678"), ErrorCode.PROTOCOL_ERROR, "first frame")


def test_settings_only_once() -> None:
    raises(decoder(server=True), encode_settings(), ErrorCode.PROTOCOL_ERROR, "only be sent once")


@pytest.mark.parametrize(
    ("key", "value"),
    [(0x1, MIN_FRAME_SIZE - 1), (0x1, 2**31), (0x2, 0), (0x2, 2**31), (0x4, 1023)],
)
def test_settings_out_of_range(key: int, value: int) -> None:
    frame = encode_frame(FrameType.SETTINGS, 0, 0, struct.pack(">HI", key, value))
    raises(FrameDecoder(server=True), PREFACE + frame, ErrorCode.PROTOCOL_ERROR, "out of range")


def test_settings_bad_sizes() -> None:
    frame = encode_frame(FrameType.SETTINGS, 0, 0, b"\x00\x01\x00")
    raises(FrameDecoder(server=True), PREFACE + frame, ErrorCode.FRAME_SIZE_ERROR, "multiple of 6")
    frame = encode_frame(FrameType.SETTINGS, 0, 0, bytes(6 * 65))
    raises(FrameDecoder(server=True), PREFACE + frame, ErrorCode.FRAME_SIZE_ERROR)
    frame = encode_frame(FrameType.SETTINGS, ACK, 0, b"")
    raises(FrameDecoder(server=True), PREFACE + frame, ErrorCode.PROTOCOL_ERROR, "flags")
    frame = encode_frame(FrameType.SETTINGS, 0, 1, b"")
    raises(FrameDecoder(server=True), PREFACE + frame, ErrorCode.PROTOCOL_ERROR, "stream id")


# -- malformed frame headers ---------------------------------------------------------------


@pytest.mark.parametrize("ftype", [8, 9, 0x42, 0xFF])
def test_unknown_frame_type(ftype: int) -> None:
    exc = raises(decoder(server=True), encode_frame(ftype, 0, 1, b""), ErrorCode.PROTOCOL_ERROR)
    assert f"unknown frame type 0x{ftype:02x}" in exc.message


def test_unknown_type_is_refused_from_its_header_alone() -> None:
    raises(decoder(server=True), struct.pack(">IBBI", 2**20, 0x42, 0, 1), ErrorCode.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("server", "frame", "match"),
    [
        (True, encode_frame(0, 0, 1, b"x"), "invalid flags"),
        (True, encode_frame(0, 0x04, 1, b"x"), "invalid flags"),
        (True, encode_frame(0, 0x80 | BODY, 1, b"x"), "invalid flags"),
        (False, encode_data(1, b"x", end_stream=True), "invalid flags"),
        (False, encode_data(1, None, end_stream=True), "invalid flags"),
        (False, encode_response_headers(1)[:5] + b"\x01" + encode_response_headers(1)[6:], "flags"),
        (True, encode_trailers(1), "a client does not send TRAILERS"),
        (True, encode_frame(3, 1, 1, bytes(4)), "invalid flags"),
        (True, encode_frame(5, 2, 0, bytes(8)), "invalid flags"),
        (True, encode_frame(6, 1, 0, bytes(8)), "invalid flags"),
        (True, encode_frame(7, 1, 1, b"\x00\x00\x00\x01"), "invalid flags"),
    ],
)
def test_invalid_flags_and_direction(server: bool, frame: bytes, match: str) -> None:
    raises(decoder(server=server), frame, ErrorCode.PROTOCOL_ERROR, match)


@pytest.mark.parametrize(
    "frame",
    [
        encode_data(2, b"x"),  # even: server-initiated streams do not exist
        encode_data(0, b"x"),
        encode_data(2**31 + 1, b"x"),
        encode_rst_stream(0, 8),
        encode_window_update(0, 1),  # no connection-level window in version 1
        encode_frame(FrameType.PING, 0, 1, bytes(8)),
        encode_goaway(0)[:6] + b"\x00\x00\x00\x01" + encode_goaway(0)[10:],
        encode_headers(4, "/a.B/C"),
    ],
)
def test_stream_id_rules(frame: bytes) -> None:
    raises(decoder(server=True), frame, ErrorCode.PROTOCOL_ERROR, "stream id must be")


def test_request_stream_ids_must_increase() -> None:
    dec = decoder(server=True)
    dec.feed(encode_headers(5, "/a.B/C"))
    raises(dec, encode_headers(3, "/a.B/C"), ErrorCode.PROTOCOL_ERROR, "lower stream id 3")
    dec = decoder(server=True)
    dec.feed(encode_headers(5, "/a.B/C"))
    raises(dec, encode_headers(5, "/a.B/C"), ErrorCode.PROTOCOL_ERROR, "reuse")


def test_response_headers_may_name_any_open_stream() -> None:
    dec = decoder(server=False)
    assert len(dec.feed(encode_response_headers(5) + encode_response_headers(3))) == 2


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (encode_frame(FrameType.PING, 0, 0, bytes(7)), "PING payload is 7 bytes, not 8"),
        (encode_frame(FrameType.PING, 0, 0, bytes(9)), "not 8"),
        (encode_frame(FrameType.RST_STREAM, 0, 1, bytes(5)), "not 4"),
        (encode_frame(FrameType.WINDOW_UPDATE, 0, 1, bytes(3)), "not 4"),
        (encode_frame(FrameType.GOAWAY, 0, 0, bytes(7)), "GOAWAY payload is 7 bytes"),
        (encode_frame(FrameType.DATA, END_STREAM, 1, b"x"), "not 0"),
        (encode_frame(FrameType.HEADERS, 0, 1, bytes(4)), "HEADERS payload is 4 bytes"),
    ],
)
def test_fixed_and_minimum_sizes(frame: bytes, match: str) -> None:
    raises(decoder(server=True), frame, ErrorCode.FRAME_SIZE_ERROR, match)


def test_window_update_increment_bounds() -> None:
    raises(decoder(server=True), encode_window_update(1, 0), ErrorCode.PROTOCOL_ERROR, "of 0")
    raises(decoder(server=True), encode_window_update(1, 2**31), ErrorCode.PROTOCOL_ERROR)


def test_goaway_must_name_a_client_stream() -> None:
    raises(decoder(server=False), encode_goaway(4), ErrorCode.PROTOCOL_ERROR, "not a client")
    raises(decoder(server=False), encode_goaway(2**31 + 1), ErrorCode.PROTOCOL_ERROR)


def test_goaway_debug_text_is_never_fatal() -> None:
    frame = encode_frame(FrameType.GOAWAY, 0, 0, struct.pack(">II", 1, 2) + b"bad \xff utf-8")
    assert decoder(server=False).feed(frame) == [GoAway(1, 2, "bad \ufffd utf-8")]


# -- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [2**32 - 1, 2**31, 4 * 1024 * 1024 + 1])
def test_oversized_frame_is_refused_from_its_header_before_any_buffering(length: int) -> None:
    dec = decoder(server=True)
    header = struct.pack(">IBBI", length, FrameType.DATA, BODY, 1)
    tracemalloc.start()
    try:
        exc = raises(dec, header + bytes(100), ErrorCode.FRAME_SIZE_ERROR, "exceeds")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert str(length) in exc.message
    assert dec.buffered == 0


def test_oversized_header_alone_split_over_feeds() -> None:
    dec = decoder(server=True)
    header = struct.pack(">IBBI", 2**32 - 1, FrameType.DATA, BODY, 1)
    assert dec.feed(header[:9]) == []
    raises(dec, header[9:], ErrorCode.FRAME_SIZE_ERROR)


def test_configured_max_frame_size_is_exact() -> None:
    dec = decoder(server=True, max_frame_size=MIN_FRAME_SIZE)
    body = bytes(MIN_FRAME_SIZE)
    assert dec.feed(encode_data(1, body)) == [Data(1, BODY, body)]
    raises(dec, encode_data(1, body + b"x"), ErrorCode.FRAME_SIZE_ERROR)


def test_header_block_limit_without_body_is_checked_from_the_frame_header() -> None:
    dec = decoder(server=True, max_header_block=1024)
    big = {"k": "v" * 2000}
    frame = encode_headers(1, "/a.B/C", metadata=big)
    raises(dec, frame[:HEADER_SIZE], ErrorCode.HEADERS_TOO_LARGE, "block exceeds 1024")


def test_header_block_limit_with_body_is_checked_from_the_block_length() -> None:
    dec = decoder(server=False, max_header_block=1024)
    frame = encode_trailers(1, metadata={"k": "v" * 2000}, body=b"x")
    raises(dec, frame, ErrorCode.HEADERS_TOO_LARGE, "block exceeds 1024")


def test_metadata_entry_limit() -> None:
    many = {f"k{i}": "" for i in range(11)}
    dec = decoder(server=True, max_metadata=10)
    dec.feed(encode_headers(1, "/a.B/C", metadata=dict(list(many.items())[:10])))
    raises(dec, encode_headers(3, "/a.B/C", metadata=many), ErrorCode.HEADERS_TOO_LARGE)
    dec = decoder(server=False, max_metadata=0)
    raises(dec, encode_trailers(1, metadata={"a": "b"}), ErrorCode.HEADERS_TOO_LARGE)


def test_goaway_debug_limit() -> None:
    dec = decoder(server=False, max_header_block=1024)
    raises(dec, encode_goaway(1, 0, "x" * 1025), ErrorCode.FRAME_SIZE_ERROR)


def test_decoder_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(server=True, max_frame_size=1024)
    with pytest.raises(ValueError, match="max_header_block"):
        FrameDecoder(server=True, max_frame_size=MIN_FRAME_SIZE, max_header_block=MIN_FRAME_SIZE)
    small = FrameDecoder(server=True, max_frame_size=MIN_FRAME_SIZE)  # block limit follows
    small.feed(START)
    small.feed(encode_headers(1, "/a.B/C", metadata={"k": "v" * (MIN_FRAME_SIZE - 100)}))


# -- malformed header blocks ---------------------------------------------------------------

GOOD_REQUEST = ["/a.B/C", "application/json", 0, 0, {}]


@pytest.mark.parametrize(
    "block",
    [
        b"",  # block length 0 is below the minimum payload; see the size test
        b"\x95",  # truncated array
        msgspec.msgpack.encode(GOOD_REQUEST)[:-1] + b"\x81\xa1k",  # map value missing
        msgspec.msgpack.encode(GOOD_REQUEST) + b"\x00",  # trailing byte inside the block
        msgspec.msgpack.encode(GOOD_REQUEST[:4]),  # too short
        msgspec.msgpack.encode({"path": "/a.B/C"}),  # not an array
        msgspec.msgpack.encode(["", "", 0, 0, {}]),  # empty path
        msgspec.msgpack.encode([b"/a.B/C", "", 0, 0, {}]),  # bin, not str
        msgspec.msgpack.encode(["/a.B/C", "", 4, 0, {}]),  # unknown kind
        msgspec.msgpack.encode(["/a.B/C", "", 0, -1, {}]),  # negative timeout
        msgspec.msgpack.encode(["/a.B/C", "", 0, 1.5, {}]),  # float timeout
        msgspec.msgpack.encode(["/a.B/C", "", 0, 0, {"": "v"}]),  # empty key
        msgspec.msgpack.encode(["/a.B/C", "", 0, 0, {"k": 1}]),  # non-str value
        msgspec.msgpack.encode(["/a.B/C", "", 0, 0, {"k": None}]),
        msgspec.msgpack.encode(["/a.B/C", "", 0, 0, [["k", "v"]]]),  # metadata not a map
        b"\x95\xa6/a.B/C\xa0\x00\x00\x81\x01\xa1v",  # int key
        b"\x95\xa6/a.B/C\xa0\x00\x00\x81\xa2\xff\xfe\xa1v",  # invalid utf-8 key
        b"\x95\xa6/a.B/C\xa0\x00\x00\x81\xa1k\xa2\xff\xfe",  # invalid utf-8 value
        b"\x96\xa6/a.B/C\xa0\x00\x00\x80" + b"\x91" * 60000 + b"\x00",  # nested too deep
    ],
)
def test_bad_request_blocks(block: bytes) -> None:
    frame = block_frame(FrameType.HEADERS, 0, 1, block)
    code = ErrorCode.FRAME_SIZE_ERROR if not block else ErrorCode.PROTOCOL_ERROR
    raises(decoder(server=True), frame, code)


@pytest.mark.parametrize(
    "block",
    [
        msgspec.msgpack.encode([0, {"code": 1}, {}]),  # error with status 0
        msgspec.msgpack.encode([5, None, {}]),  # status without error
        msgspec.msgpack.encode([-1, None, {}]),
        msgspec.msgpack.encode([5, {"code": "404"}, {}]),  # go-micro code is an int
        msgspec.msgpack.encode([5, "not found", {}]),
        msgspec.msgpack.encode([0, None]),
        b"\x93\x01\x81\xa1x" + b"\x91" * 60000 + b"\x00\x80",  # nested too deep
    ],
)
def test_bad_trailer_blocks(block: bytes) -> None:
    frame = block_frame(FrameType.TRAILERS, 0, 1, block)
    raises(decoder(server=False), frame, ErrorCode.PROTOCOL_ERROR)


def test_bad_response_header_block() -> None:
    frame = block_frame(FrameType.HEADERS, 0, 1, msgspec.msgpack.encode([{"k": 1}]))
    raises(decoder(server=False), frame, ErrorCode.PROTOCOL_ERROR, "malformed HEADERS")


@pytest.mark.parametrize("flags", [0, BODY])
def test_block_length_must_fit_the_frame(flags: int) -> None:
    block = msgspec.msgpack.encode(GOOD_REQUEST)
    payload = struct.pack(">I", len(block) + 1) + block
    frame = encode_frame(FrameType.HEADERS, flags, 1, payload)
    raises(decoder(server=True), frame, ErrorCode.PROTOCOL_ERROR, "does not fit")


def test_bytes_after_the_block_need_the_body_flag() -> None:
    frame = block_frame(FrameType.HEADERS, 0, 1, msgspec.msgpack.encode(GOOD_REQUEST), b"body")
    raises(decoder(server=True), frame, ErrorCode.PROTOCOL_ERROR, "does not fit")


def test_errors_are_sticky() -> None:
    dec = decoder(server=True)
    first = raises(dec, encode_frame(0x42, 0, 1, b""), ErrorCode.PROTOCOL_ERROR)
    with pytest.raises(ProtocolError) as again:
        dec.feed(encode_data(1, b"fine"))
    assert again.value is first


def test_frames_before_an_error_in_the_same_feed_are_not_returned() -> None:
    # the connection answers with GOAWAY naming the last stream it processed; the peer retries
    dec = decoder(server=True)
    wire = encode_headers(1, "/a.B/C") + encode_frame(0x42, 0, 1, b"")
    raises(dec, wire, ErrorCode.PROTOCOL_ERROR)


def test_protocol_error_text() -> None:
    exc = ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "too big")
    assert str(exc) == "FRAME_SIZE_ERROR: too big"
    assert (exc.code, exc.message) == (ErrorCode.FRAME_SIZE_ERROR, "too big")


# -- encoders refuse what no decoder would accept ------------------------------------------


def test_encoder_misuse() -> None:
    with pytest.raises(ValueError, match="must end the stream"):
        encode_data(1, None)
    with pytest.raises(ValueError, match="8 bytes"):
        encode_ping(b"short")
    with pytest.raises(ValueError, match="exactly when"):
        encode_trailers(1, status=5)
    with pytest.raises(ValueError, match="exactly when"):
        encode_trailers(1, error=WireError(code=500))
    with pytest.raises(TypeError, match="not a frame"):
        encode(object())  # type: ignore[arg-type]


def test_ok_trailers_fast_path_gives_independent_metadata() -> None:
    dec = decoder(server=False)
    first, second = dec.feed(encode_trailers(1) + encode_trailers(3))
    assert isinstance(first, Trailers) and isinstance(second, Trailers)
    first.metadata["x"] = "y"
    assert second.metadata == {}


# -- the worked example in docs/protocol.md ------------------------------------------------


def doc_example(name: str) -> bytes:
    text = PROTOCOL_MD.read_text()
    match = re.search(rf"<!-- example: {name} -->\n```text\n(.*?)```", text, re.S)
    assert match, f"example {name!r} missing from {PROTOCOL_MD}"
    return bytes.fromhex("".join(line.split("|")[0] for line in match.group(1).splitlines()))


def test_doc_example_client_bytes() -> None:
    request = encode_headers(
        1,
        "/greeter.Greeter/SayHello",
        kind=CallKind.UNARY,
        content_type="application/json",
        timeout_us=250_000,
        metadata={"micro-from-service": "web"},
        body=b'{"name":"Ada"}',
        end_stream=True,
    )
    wire = doc_example("client")
    assert wire == PREFACE + encode_settings() + request
    frames = FrameDecoder(server=True).feed(wire)
    assert frames[1] == Headers(
        1, BODY | END_STREAM, "/greeter.Greeter/SayHello", "application/json",
        CallKind.UNARY, 250_000, {"micro-from-service": "web"}, b'{"name":"Ada"}',
    )  # fmt: skip


def test_doc_example_server_bytes() -> None:
    wire = doc_example("server")
    assert wire == PREFACE + encode_settings() + encode_trailers(1, body=b'{"message":"Hello Ada"}')
    frames = FrameDecoder(server=False).feed(wire)
    assert frames[1] == Trailers(1, BODY, 0, None, {}, b'{"message":"Hello Ada"}')


def test_doc_example_error_bytes() -> None:
    error = WireError(id="greeter", code=404, detail="no user Bob", status="Not Found")
    assert doc_example("error") == encode_trailers(3, status=5, error=error)


def test_doc_example_long_form_headers() -> None:
    text = PROTOCOL_MD.read_text()
    data_req = encode_data(1, b'{"name":"Ada"}', end_stream=True)[:HEADER_SIZE]
    data_resp = encode_data(1, b'{"message":"Hello Ada"}')[:HEADER_SIZE]
    assert f"`{data_req.hex(' ')}`" in text
    assert f"`{data_resp.hex(' ')}`" in text
    assert f"`{encode_trailers(1)[14:].hex(' ')}`" in text
