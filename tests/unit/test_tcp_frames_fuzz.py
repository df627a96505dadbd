"""Property tests and a mutation fuzzer for the tcp frame decoder.

What must hold for any input: the decoder either returns frames or raises `ProtocolError` (never
anything else), never holds more than one frame's worth of bytes between feeds, and every frame
it accepts re-encodes to bytes that decode to the same frame.

`MICROWEAVE_FUZZ_CASES` sets the number of mutated streams (default 3000, a couple of seconds),
`MICROWEAVE_FUZZ_SEED` the seed, `MICROWEAVE_HYPOTHESIS_EXAMPLES` the examples per property.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microweave.transport.tcp.frames import (
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
    encode_goaway,
    encode_headers,
    encode_ping,
    encode_response_headers,
    encode_rst_stream,
    encode_settings,
    encode_trailers,
    encode_window_update,
)

FUZZ_CASES = int(os.environ.get("MICROWEAVE_FUZZ_CASES", "3000"))
FUZZ_SEED = int(os.environ.get("MICROWEAVE_FUZZ_SEED", "20261121"))
EXAMPLES = int(os.environ.get("MICROWEAVE_HYPOTHESIS_EXAMPLES", "200"))
MAX_FRAME = MIN_FRAME_SIZE  # small, so that the buffering bound is tight
BOUND = HEADER_SIZE + MAX_FRAME

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,  # timing belongs in bench/, not in assertions
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ----------------------------------------------------------------------------

sids = st.integers(0, 2**30 - 1).map(lambda n: 2 * n + 1)
u32 = st.integers(0, 2**32 - 1)
metadata = st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=24), max_size=4)
bodies = st.binary(max_size=300)
maybe_body = st.none() | bodies
short_text = st.text(max_size=40)


@st.composite
def request_headers(draw: st.DrawFn) -> Headers:
    body = draw(maybe_body)
    flags = (BODY if body is not None else 0) | draw(st.sampled_from([0, END_STREAM]))
    return Headers(
        draw(sids), flags, draw(st.text(min_size=1, max_size=40)), draw(short_text),
        draw(st.sampled_from(CallKind)), draw(st.integers(0, 2**63 - 1)), draw(metadata), body,
    )  # fmt: skip


@st.composite
def client_data(draw: st.DrawFn) -> Data:
    flags = draw(st.sampled_from([BODY, BODY | END_STREAM, END_STREAM]))
    return Data(draw(sids), flags, draw(bodies) if flags & BODY else None)


@st.composite
def trailers(draw: st.DrawFn) -> Trailers:
    body = draw(maybe_body)
    status = draw(st.integers(0, 2**31 - 1) | st.integers(0, 16))
    error = None
    if status:
        code = draw(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([400, 404, 500, 503]))
        error = WireError(draw(short_text), code, draw(short_text), draw(short_text))
    flags = BODY if body is not None else 0
    return Trailers(draw(sids), flags, status, error, draw(metadata), body)


@st.composite
def response_headers(draw: st.DrawFn) -> ResponseHeaders:
    body = draw(maybe_body)
    return ResponseHeaders(draw(sids), BODY if body is not None else 0, draw(metadata), body)


common = st.one_of(
    st.builds(RstStream, sids, u32),
    st.builds(WindowUpdate, sids, st.integers(1, 2**31 - 1)),
    st.builds(Ping, st.booleans(), st.binary(min_size=8, max_size=8)),
    st.builds(GoAway, st.just(0) | sids, u32, short_text),
)
client_frames = st.one_of(request_headers(), client_data(), common)
server_frames = st.one_of(
    response_headers(), trailers(), st.builds(Data, sids, st.just(BODY), bodies), common
)
settings_frames = st.builds(
    Settings,
    st.integers(MIN_FRAME_SIZE, 2**31 - 1),
    st.integers(1, 2**31 - 1),
    u32,
    st.integers(1024, 2**31 - 1),
    u32,
    u32,
)


def renumber(frames: list[Frame]) -> list[Frame]:
    """Request HEADERS ids must increase on a connection."""
    out: list[Frame] = []
    next_id = 1
    for frame in frames:
        if isinstance(frame, Headers):
            frame = msgspec.structs.replace(frame, stream_id=next_id)
            next_id += 2
        out.append(frame)
    return out


def feed_in_chunks(dec: FrameDecoder, wire: bytes, cuts: list[int]) -> list[Frame]:
    got: list[Frame] = []
    points = sorted({min(c, len(wire)) for c in cuts})
    for a, b in zip([0, *points], [*points, len(wire)], strict=True):
        got += dec.feed(wire[a:b])
        assert dec.buffered <= HEADER_SIZE + DEFAULT_MAX_FRAME_SIZE
    return got


# -- round trips ---------------------------------------------------------------------------


@PROPERTY
@given(
    side=st.booleans(),
    data=st.data(),
    first=settings_frames,
    cuts=st.lists(st.integers(0, 4000), max_size=8),
)
def test_any_valid_conversation_round_trips(
    side: bool, data: st.DataObject, first: Settings, cuts: list[int]
) -> None:
    frames = renumber(data.draw(st.lists(client_frames if side else server_frames, max_size=8)))
    wire = PREFACE + encode(first) + b"".join(encode(f) for f in frames)
    got = feed_in_chunks(FrameDecoder(server=side), wire, cuts)
    assert got == [first, *frames]


@PROPERTY
@given(frame=client_frames | server_frames)
def test_one_byte_at_a_time_equals_all_at_once(frame: Frame) -> None:
    side = not isinstance(frame, (Trailers, ResponseHeaders))  # which side may receive it
    wire = PREFACE + encode_settings() + encode(frame)
    whole = FrameDecoder(server=side).feed(wire)
    dec = FrameDecoder(server=side)
    single = [f for i in range(len(wire)) for f in dec.feed(wire[i : i + 1])]
    assert single == whole == [Settings(), frame]


# -- hostile input -------------------------------------------------------------------------


def survive(wire: bytes, *, server: bool, cuts: list[int]) -> tuple[list[Frame], bool]:
    """Feed hostile bytes; only ProtocolError may escape, and memory stays bounded."""
    dec = FrameDecoder(server=server, max_frame_size=MAX_FRAME)
    got: list[Frame] = []
    points = sorted({min(c, len(wire)) for c in cuts})
    for a, b in zip([0, *points], [*points, len(wire)], strict=True):
        try:
            got += dec.feed(wire[a:b])
        except ProtocolError as exc:
            assert isinstance(exc.code, ErrorCode) and exc.message
            with pytest.raises(ProtocolError):
                dec.feed(b"")
            return got, True
        assert dec.buffered <= BOUND
    return got, False


def check_reencodes(frames: list[Frame], *, server: bool) -> None:
    """Anything the decoder accepted is a frame the encoder can reproduce."""
    for frame in frames:
        dec = FrameDecoder(server=server, expect_preface=False)
        if not isinstance(frame, Settings):
            dec.feed(encode_settings())
        assert dec.feed(encode(frame)) == [frame]


@PROPERTY
@given(noise=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_random_bytes_from_the_start(noise: bytes, cuts: list[int]) -> None:
    for server in (True, False):
        frames, _ = survive(noise, server=server, cuts=cuts)
        check_reencodes(frames, server=server)


@PROPERTY
@given(
    noise=st.binary(max_size=600),
    server=st.booleans(),
    cuts=st.lists(st.integers(0, 700), max_size=6),
)
def test_random_bytes_after_a_valid_start(noise: bytes, server: bool, cuts: list[int]) -> None:
    frames, _ = survive(PREFACE + encode_settings() + noise, server=server, cuts=cuts)
    check_reencodes(frames, server=server)


@PROPERTY
@given(
    data=st.data(),
    server=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
def test_mutated_valid_streams(
    data: st.DataObject, server: bool, edits: list[tuple[int, int]], cuts: list[int]
) -> None:
    frames = renumber(data.draw(st.lists(client_frames if server else server_frames, max_size=6)))
    wire = bytearray(PREFACE + encode_settings() + b"".join(encode(f) for f in frames))
    for where, value in edits:
        wire[where % len(wire)] = value
    got, _ = survive(bytes(wire), server=server, cuts=cuts)
    check_reencodes(got, server=server)


# -- the mutation fuzzer -------------------------------------------------------------------


def corpus() -> list[tuple[bool, bytes]]:
    """Valid streams in both directions, covering every frame type and flag."""
    md = {"micro-from-service": "web", "traceparent": "00-0af7651916cd43dd-b7ad6b7169203331-01"}
    start = PREFACE + encode_settings(Settings(max_frame_size=MAX_FRAME, initial_window=4))
    client = start + b"".join([
        encode_headers(1, "/greeter.Greeter/SayHello", metadata=md, body=b'{"name":"Ada"}',
                       end_stream=True, timeout_us=250_000),
        encode_headers(3, "/greeter.Greeter/Chat", kind=CallKind.BIDI, content_type="x"),
        encode_data(3, b"m" * 40), encode_data(3, b"", end_stream=True),
        encode_headers(5, "/a.B/C", kind=CallKind.CLIENT_STREAM, body=b"first"),
        encode_data(5, None, end_stream=True), encode_window_update(3, 4),
        encode_rst_stream(5, ErrorCode.CANCEL), encode_ping(b"pingpong"),
        encode_ping(b"pongping", ack=True), encode_goaway(0, 0, "bye"),
    ])  # fmt: skip
    server = start + b"".join([
        encode_response_headers(3, metadata=md), encode_data(3, b"r" * 40),
        encode_trailers(1, body=b'{"message":"Hello Ada"}'),
        encode_trailers(3, status=5, error=WireError("greeter", 404, "no user", "Not Found")),
        encode_trailers(5, metadata={"x": "y"}), encode_window_update(5, 1),
        encode_rst_stream(7, ErrorCode.REFUSED_STREAM), encode_goaway(5, 0, "draining"),
    ])  # fmt: skip
    return [(True, client), (False, server)]


INTERESTING_U32 = [0, 1, 4, 5, 7, 8, MAX_FRAME, MAX_FRAME + 1, 2**31 - 1, 2**31, 2**32 - 1]


def mutate(rng: random.Random, wire: bytes, other: bytes) -> bytes:
    data = bytearray(wire)
    for _ in range(rng.randint(1, 4)):
        n = len(data)
        if n == 0:
            data += rng.randbytes(rng.randint(1, 16))
            continue
        i = rng.randrange(n)
        op = rng.randrange(9)
        if op == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[i] = rng.choice([0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xC0, 0xFF])
        elif op == 2:
            data[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            del data[i : i + rng.randint(1, 16)]
        elif op == 4:
            j = rng.randrange(n)
            data[i:i] = data[j : j + rng.randint(1, 32)]
        elif op == 5:
            data[i : i + 4] = struct.pack(">I", rng.choice(INTERESTING_U32))
        elif op == 6:
            del data[i:]
        elif op == 7:
            j = rng.randrange(len(other))
            data[i:] = other[j:]
        else:
            data[i] = rng.randrange(256)
    return bytes(data)


def test_mutation_fuzz(record_property: Callable[[str, object], None]) -> None:
    rng = random.Random(FUZZ_SEED)
    seeds = corpus()
    rejected = accepted_frames = 0
    for _ in range(FUZZ_CASES):
        server, wire = rng.choice(seeds)
        mutant = mutate(rng, wire, rng.choice(seeds)[1])
        chunking = rng.randrange(3)
        if chunking == 0:
            cuts: list[int] = []
        elif chunking == 1:
            cuts = list(range(1, len(mutant)))
        else:
            cuts = [rng.randrange(len(mutant) + 1) for _ in range(rng.randint(1, 8))]
        frames, failed = survive(mutant, server=server, cuts=cuts)
        rejected += failed
        accepted_frames += len(frames)
        if rng.random() < 0.2:
            check_reencodes(frames, server=server)
    print(
        f"\nfuzz: {FUZZ_CASES} mutated streams (seed {FUZZ_SEED}): {rejected} raised "
        f"ProtocolError, {FUZZ_CASES - rejected} decoded cleanly, {accepted_frames} frames accepted"
    )
    record_property("fuzz_cases", FUZZ_CASES)
    record_property("fuzz_rejected", rejected)
    assert rejected > FUZZ_CASES // 10  # the mutations really do reach the checks
