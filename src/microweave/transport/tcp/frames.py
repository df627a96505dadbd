"""Wire layer of the `tcp` transport: bytes to frames and back, with no I/O of its own.

docs/protocol.md is the specification; this module is its reference implementation, kept free of
sockets and asyncio so the same code serves the connection layer, the tests and the fuzzers.

The decoder trusts nothing it is fed: every frame header is checked (type, flags, length, stream
id) as soon as its 10 bytes arrive, before any of the payload is buffered, so a peer cannot make
us hold more than one frame. Every violation raises the one `ProtocolError`; the connection
answers it with GOAWAY and closes. Encoders trust their caller (the connection knows the peer's
SETTINGS) and stay cheap: one header pack and one join per frame.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from typing import Annotated, Final, NoReturn, TypeAlias

import msgspec

__all__ = [
    "ACK", "BODY", "DEFAULT_INITIAL_WINDOW", "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_MAX_HEADER_BLOCK",
    "DEFAULT_MAX_METADATA", "END_STREAM", "HEADER_SIZE", "MAGIC", "MAX_STREAM_ID",
    "MIN_FRAME_SIZE", "PREFACE", "VERSION", "CallKind", "Data", "ErrorCode", "Frame",
    "FrameDecoder", "FrameType", "GoAway", "Headers", "Ping", "ProtocolError", "ResponseHeaders",
    "RstStream", "Settings", "Trailers", "WindowUpdate", "WireError", "encode", "encode_data",
    "encode_frame", "encode_goaway", "encode_headers", "encode_ping", "encode_response_headers",
    "encode_rst_stream", "encode_settings", "encode_trailers", "encode_window_update",
]  # fmt: skip

VERSION: Final = 1
MAGIC: Final = b"MWEAVE"
PREFACE: Final = MAGIC + VERSION.to_bytes(2, "big")
HEADER_SIZE: Final = 10
MAX_STREAM_ID: Final = 2**31 - 1
MIN_FRAME_SIZE: Final = 16 * 1024
MAX_SETTINGS: Final = 64  # entries in one SETTINGS frame
DEFAULT_MAX_FRAME_SIZE: Final = 4 * 1024 * 1024
DEFAULT_INITIAL_WINDOW: Final = 16
DEFAULT_MAX_HEADER_BLOCK: Final = 64 * 1024
DEFAULT_MAX_METADATA: Final = 128

END_STREAM: Final = 0x01  # HEADERS, DATA: the client sends nothing more on this stream
BODY: Final = 0x02  # HEADERS, DATA, TRAILERS: the frame carries one message
ACK: Final = 0x01  # PING: this is the answer

Bytes: TypeAlias = bytes | bytearray | memoryview


class FrameType(enum.IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    TRAILERS = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PING = 0x5
    GOAWAY = 0x6
    WINDOW_UPDATE = 0x7


# plain ints for the hot path: comparing with enum members costs an attribute lookup each time
_DATA, _HEADERS, _TRAILERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW = range(8)
_KNOWN_TYPES: Final = frozenset(FrameType)


class CallKind(enum.IntEnum):
    UNARY = 0
    SERVER_STREAM = 1
    CLIENT_STREAM = 2
    BIDI = 3


class ErrorCode(enum.IntEnum):
    """RST_STREAM and GOAWAY codes; HTTP/2's numbers where the meaning is the same."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    ENHANCE_YOUR_CALM = 0xB
    UNSUPPORTED_VERSION = 0x10
    HEADERS_TOO_LARGE = 0x11
    DEADLINE_EXCEEDED = 0x12


class ProtocolError(Exception):
    """The peer broke the protocol; the connection is unusable and must be closed with GOAWAY."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code.name}: {message}")


# -- frames: msgspec Structs because they are the cheapest Python objects to build -------------


class Data(msgspec.Struct, frozen=True, gc=False):
    stream_id: int
    flags: int
    body: bytes | None  # None: a bare END_STREAM with no message


class Headers(msgspec.Struct, frozen=True, gc=False):
    """Request HEADERS: opens a call (client to server only)."""

    stream_id: int
    flags: int
    path: str
    content_type: str
    kind: CallKind
    timeout_us: int  # 0: no deadline
    metadata: dict[str, str]
    body: bytes | None = None


class ResponseHeaders(msgspec.Struct, frozen=True, gc=False):
    """Response HEADERS: metadata sent before the first reply (server to client only)."""

    stream_id: int
    flags: int
    metadata: dict[str, str]
    body: bytes | None = None


class WireError(msgspec.Struct, frozen=True, gc=False):
    """go-micro's error shape; encoded as a map with exactly these keys."""

    id: str = ""
    code: int = 0
    detail: str = ""
    status: str = ""


class Trailers(msgspec.Struct, frozen=True, gc=False):
    """Ends a call (server to client only); status is a gRPC code, 0 when error is None."""

    stream_id: int
    flags: int
    status: int
    error: WireError | None
    metadata: dict[str, str]
    body: bytes | None = None


class RstStream(msgspec.Struct, frozen=True, gc=False):
    stream_id: int
    code: int  # an ErrorCode; unknown values are kept, and treated as INTERNAL_ERROR


class WindowUpdate(msgspec.Struct, frozen=True, gc=False):
    stream_id: int
    increment: int  # messages


class Ping(msgspec.Struct, frozen=True, gc=False):
    ack: bool
    opaque: bytes


class GoAway(msgspec.Struct, frozen=True, gc=False):
    last_stream_id: int
    code: int
    debug: str = ""


class Settings(msgspec.Struct, frozen=True, gc=False):
    """What the sender accepts; a value the peer did not send is the default below."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    initial_window: int = DEFAULT_INITIAL_WINDOW
    max_concurrent_streams: int = 2**32 - 1  # "no limit"
    max_header_block: int = DEFAULT_MAX_HEADER_BLOCK
    max_metadata: int = DEFAULT_MAX_METADATA
    idle_timeout_ms: int = 0  # 0: never closes idle connections


Frame: TypeAlias = (
    Data | Headers | ResponseHeaders | Trailers | RstStream | WindowUpdate | Ping | GoAway
    | Settings
)  # fmt: skip

# setting id -> (field, lowest, highest)
_SETTING_IDS: Final = {
    0x1: ("max_frame_size", MIN_FRAME_SIZE, 2**31 - 1),
    0x2: ("initial_window", 1, 2**31 - 1),
    0x3: ("max_concurrent_streams", 0, 2**32 - 1),
    0x4: ("max_header_block", 1024, 2**31 - 1),
    0x5: ("max_metadata", 0, 2**32 - 1),
    0x6: ("idle_timeout_ms", 0, 2**32 - 1),
}

# -- header blocks (msgpack arrays; trailing elements a receiver does not know are ignored) ------

_Key = Annotated[str, msgspec.Meta(min_length=1)]


class _RequestBlock(msgspec.Struct, array_like=True, gc=False):
    path: Annotated[str, msgspec.Meta(min_length=1)]
    content_type: str
    kind: CallKind
    timeout_us: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    metadata: dict[_Key, str]


class _ResponseBlock(msgspec.Struct, array_like=True, gc=False):
    metadata: dict[_Key, str]


class _TrailerBlock(msgspec.Struct, array_like=True, gc=False):
    status: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
    error: WireError | None
    metadata: dict[_Key, str]


_encode_block = msgspec.msgpack.Encoder().encode
_REQUEST = msgspec.msgpack.Decoder(_RequestBlock)
_RESPONSE = msgspec.msgpack.Decoder(_ResponseBlock)
_TRAILER = msgspec.msgpack.Decoder(_TrailerBlock)
_NO_METADATA: Final[dict[str, str]] = {}
_OK_BLOCK: Final = _encode_block((0, None, _NO_METADATA))

_HDR = struct.Struct(">IBBI")  # payload length, type, flags, stream id
_HDR_U32 = struct.Struct(">IBBII")  # ... then one u32 (block length, code, increment)
_HDR_GOAWAY = struct.Struct(">IBBIII")
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_SETTING = struct.Struct(">HI")

# -- encoding --------------------------------------------------------------------------------


def encode_frame(ftype: int, flags: int, stream_id: int, payload: Bytes = b"") -> bytes:
    return _HDR.pack(len(payload), ftype, flags, stream_id) + payload


def encode_data(stream_id: int, body: Bytes | None, *, end_stream: bool = False) -> bytes:
    """One message; `body=None, end_stream=True` half-closes without one."""
    if body is None:
        if not end_stream:
            raise ValueError("a DATA frame without a body must end the stream")
        return _HDR.pack(0, _DATA, END_STREAM, stream_id)
    flags = BODY | END_STREAM if end_stream else BODY
    return _HDR.pack(len(body), _DATA, flags, stream_id) + body


def _block_frame(ftype: int, flags: int, stream_id: int, block: bytes, body: Bytes | None) -> bytes:
    if body is None:
        return _HDR_U32.pack(4 + len(block), ftype, flags, stream_id, len(block)) + block
    size = 4 + len(block) + len(body)
    head = _HDR_U32.pack(size, ftype, flags | BODY, stream_id, len(block))
    return b"".join((head, block, body))


def _metadata(metadata: Mapping[str, str] | None) -> Mapping[str, str]:
    if metadata is None:
        return _NO_METADATA
    return metadata if type(metadata) is dict else dict(metadata)


def encode_headers(
    stream_id: int, path: str, *, kind: CallKind = CallKind.UNARY,
    content_type: str = "application/json", timeout_us: int = 0,
    metadata: Mapping[str, str] | None = None, body: Bytes | None = None, end_stream: bool = False,
) -> bytes:  # fmt: skip
    """Open a call; a unary call is one frame: `body=...` with `end_stream=True`."""
    block = _encode_block((path, content_type, kind, timeout_us, _metadata(metadata)))
    return _block_frame(_HEADERS, END_STREAM if end_stream else 0, stream_id, block, body)


def encode_response_headers(
    stream_id: int, *, metadata: Mapping[str, str] | None = None, body: Bytes | None = None
) -> bytes:
    return _block_frame(_HEADERS, 0, stream_id, _encode_block((_metadata(metadata),)), body)


def encode_trailers(
    stream_id: int, *, status: int = 0, error: WireError | None = None,
    metadata: Mapping[str, str] | None = None, body: Bytes | None = None,
) -> bytes:  # fmt: skip
    """End a call; a unary reply is one frame: `body=...` with status 0."""
    if (status == 0) != (error is None):
        raise ValueError("TRAILERS carry an error exactly when the status is not 0")
    block = _encode_block((status, error, _metadata(metadata)))
    return _block_frame(_TRAILERS, 0, stream_id, block, body)


def encode_rst_stream(stream_id: int, code: int) -> bytes:
    return _HDR_U32.pack(4, _RST, 0, stream_id, code)


def encode_window_update(stream_id: int, increment: int) -> bytes:
    return _HDR_U32.pack(4, _WINDOW, 0, stream_id, increment)


def encode_ping(opaque: bytes, *, ack: bool = False) -> bytes:
    if len(opaque) != 8:
        raise ValueError("a PING payload is exactly 8 bytes")
    return _HDR.pack(8, _PING, ACK if ack else 0, 0) + opaque


def encode_goaway(last_stream_id: int, code: int = ErrorCode.NO_ERROR, debug: str = "") -> bytes:
    text = debug.encode()
    return _HDR_GOAWAY.pack(8 + len(text), _GOAWAY, 0, 0, last_stream_id, code) + text


def encode_settings(settings: Settings | None = None) -> bytes:
    """Every known setting, in id order; `None` announces the defaults."""
    values = settings or Settings()
    payload = b"".join(
        _SETTING.pack(key, getattr(values, name)) for key, (name, _, _) in _SETTING_IDS.items()
    )
    return encode_frame(_SETTINGS, 0, 0, payload)


def encode(frame: Frame) -> bytes:
    """Any decoded frame back to bytes: what a proxy or a test needs, not the hot path."""
    match frame:
        case Data(sid, flags, body):
            return encode_data(sid, body, end_stream=bool(flags & END_STREAM))
        case Headers(sid, flags, path, ctype, kind, timeout, metadata, body):
            end = bool(flags & END_STREAM)
            return encode_headers(
                sid, path, kind=kind, content_type=ctype, timeout_us=timeout,
                metadata=metadata, body=body, end_stream=end,
            )  # fmt: skip
        case ResponseHeaders(sid, _, metadata, body):
            return encode_response_headers(sid, metadata=metadata, body=body)
        case Trailers(sid, _, status, error, metadata, body):
            return encode_trailers(sid, status=status, error=error, metadata=metadata, body=body)
        case RstStream(sid, code):
            return encode_rst_stream(sid, code)
        case WindowUpdate(sid, increment):
            return encode_window_update(sid, increment)
        case Ping(ack, opaque):
            return encode_ping(opaque, ack=ack)
        case GoAway(last, code, debug):
            return encode_goaway(last, code, debug)
        case Settings():
            return encode_settings(frame)
    raise TypeError(f"not a frame: {frame!r}")


# -- decoding --------------------------------------------------------------------------------

_Rule: TypeAlias = tuple[int, int, int, int]  # lowest length, highest length, id mask, id value
_ON_STREAM: Final = (0x8000_0001, 1)  # odd, below 2**31
_ON_CONNECTION: Final = (0xFFFF_FFFF, 0)
_REJECT: Final = (1, 0, 0, 1)  # the rule of pairs not in the table: no length fits


class FrameDecoder:
    """Turns a byte stream, split anywhere, into validated frames.

    `server=True` decodes what a client sends (request HEADERS, END_STREAM on DATA), `False`
    what a server sends (response HEADERS, TRAILERS). The peer's preface comes first, then its
    SETTINGS. A payload inside one fed `bytes` chunk is copied once (feed bytes: any other buffer
    is first copied to bytes); only a frame that straddles chunks is buffered (at most
    HEADER_SIZE + max_frame_size bytes) and copied again when complete. After a ProtocolError
    the decoder raises it again on every feed.
    """

    __slots__ = (
        "_buf", "_error", "_full", "_last_opened", "_max_block", "_max_frame",
        "_max_metadata", "_need", "_preface", "_rules", "_server",
    )  # fmt: skip

    def __init__(
        self, *, server: bool, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_header_block: int | None = None, max_metadata: int = DEFAULT_MAX_METADATA,
        expect_preface: bool = True,
    ) -> None:  # fmt: skip
        if not MIN_FRAME_SIZE <= max_frame_size <= 2**31 - 1:
            raise ValueError(f"max_frame_size must be in [{MIN_FRAME_SIZE}, 2**31 - 1]")
        if max_header_block is None:
            max_header_block = min(DEFAULT_MAX_HEADER_BLOCK, max_frame_size - 4)
        if not 1024 <= max_header_block <= max_frame_size - 4:
            raise ValueError("max_header_block must be in [1024, max_frame_size - 4]")
        self._server = server
        self._max_frame = max_frame_size
        self._max_block = max_header_block
        self._max_metadata = max_metadata
        self._preface: bytearray | None = bytearray() if expect_preface else None
        self._buf = bytearray()
        self._need = 0  # full size of the straddling frame once its header is known
        self._last_opened = 0
        self._error: ProtocolError | None = None
        self._full = self._table()
        self._rules: dict[int, _Rule] = {_SETTINGS << 8: (0, 6 * MAX_SETTINGS, *_ON_CONNECTION)}

    def _table(self) -> dict[int, _Rule]:
        """Every legal (type, flags) pair for this direction, with its length and id bounds."""
        frame, block = self._max_frame, 4 + self._max_block
        s, c = _ON_STREAM, _ON_CONNECTION
        rules: list[tuple[int, int, int, int, tuple[int, int]]] = [
            (_RST, 0, 4, 4, s), (_WINDOW, 0, 4, 4, s), (_PING, 0, 8, 8, c),
            (_PING, ACK, 8, 8, c), (_GOAWAY, 0, 8, 8 + self._max_block, c),
            (_HEADERS, 0, 5, block, s), (_HEADERS, BODY, 5, frame, s), (_DATA, BODY, 0, frame, s),
        ]  # fmt: skip
        if self._server:
            rules += [
                (_HEADERS, END_STREAM, 5, block, s), (_HEADERS, BODY | END_STREAM, 5, frame, s),
                (_DATA, BODY | END_STREAM, 0, frame, s), (_DATA, END_STREAM, 0, 0, s),
            ]  # fmt: skip
        else:
            rules += [(_TRAILERS, 0, 5, block, s), (_TRAILERS, BODY, 5, frame, s)]
        return {t << 8 | f: (lo, hi, *sid) for t, f, lo, hi, sid in rules}

    @property
    def buffered(self) -> int:
        """Bytes held between feeds: never more than HEADER_SIZE + max_frame_size."""
        return len(self._buf) + (len(self._preface) if self._preface else 0)

    def feed(self, data: Bytes) -> list[Frame]:
        """Every frame `data` completes, in order; the caller may reuse `data` afterwards."""
        if self._error is not None:
            raise self._error
        # slicing bytes is the one copy a payload gets; other buffers are made bytes first
        src = data if type(data) is bytes else bytes(data)
        frames: list[Frame] = []
        try:
            pos = self._resume(src, frames) if self._buf or self._preface is not None else 0
            end, rules, unpack = len(src), self._rules, _HDR.unpack_from
            while end - pos >= HEADER_SIZE:
                length, ftype, flags, sid = unpack(src, pos)
                lowest, highest, id_mask, id_value = rules.get(ftype << 8 | flags, _REJECT)
                if length > highest or length < lowest or sid & id_mask != id_value:
                    self._check(length, ftype, flags, sid)
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    self._need = HEADER_SIZE + length
                    break
                if ftype == _DATA:  # the hot path, inlined
                    frames.append(Data(sid, flags, src[start:stop] if flags & BODY else None))
                elif ftype <= _TRAILERS:
                    frames.append(self._block(ftype, flags, sid, src, start, stop))
                else:
                    frames.append(self._build(ftype, flags, sid, src, start, stop))
                    rules = self._rules  # SETTINGS switches to the full table
                pos = stop
            if pos < end:
                self._buf = bytearray(memoryview(src)[pos:])
        except ProtocolError as exc:
            self._error = exc
            raise
        return frames

    def _resume(self, src: bytes, frames: list[Frame]) -> int:
        """Finish the preface and the frame that straddled earlier feeds; return bytes used."""
        view = memoryview(src)
        pos = self._take_preface(view) if self._preface is not None else 0
        buf = self._buf
        if not buf:
            return pos
        if len(buf) < HEADER_SIZE:
            take = min(HEADER_SIZE - len(buf), len(view) - pos)
            buf += view[pos : pos + take]
            pos += take
            if len(buf) < HEADER_SIZE:
                return pos
            length, ftype, flags, sid = _HDR.unpack_from(buf)
            self._check(length, ftype, flags, sid)
            self._need = HEADER_SIZE + length
        take = min(self._need - len(buf), len(view) - pos)
        buf += view[pos : pos + take]
        if len(buf) == self._need:
            self._buf = bytearray()
            _, ftype, flags, sid = _HDR.unpack_from(buf)
            frames.append(self._build(ftype, flags, sid, memoryview(buf), HEADER_SIZE, len(buf)))
        return pos + take

    def _take_preface(self, mv: memoryview) -> int:
        got = self._preface
        assert got is not None
        take = min(len(PREFACE) - len(got), len(mv))
        got += mv[:take]
        head = bytes(got[: len(MAGIC)])
        if head != MAGIC[: len(head)]:
            got_text = f"expected preface {PREFACE!r}, got {bytes(got)!r}"
            _fail(ErrorCode.PROTOCOL_ERROR, f"not a microweave peer: {got_text}")
        if len(got) == len(PREFACE):
            version = int.from_bytes(got[len(MAGIC) :], "big")
            if version != VERSION:
                speaks = f"peer speaks protocol version {version}; this endpoint speaks {VERSION}"
                _fail(ErrorCode.UNSUPPORTED_VERSION, speaks)
            self._preface = None
        return take

    def _check(self, length: int, ftype: int, flags: int, sid: int) -> None:
        """Say precisely why a frame header is refused (the slow path of the table lookup)."""
        rule = self._rules.get(ftype << 8 | flags)
        if rule is not None and rule[0] <= length <= rule[1] and sid & rule[2] == rule[3]:
            return
        if ftype not in _KNOWN_TYPES:
            _fail(ErrorCode.PROTOCOL_ERROR, f"unknown frame type 0x{ftype:02x}")
        name = FrameType(ftype).name
        if ftype == _SETTINGS and self._rules is self._full:
            _fail(ErrorCode.PROTOCOL_ERROR, "SETTINGS may only be sent once, as the first frame")
        if ftype != _SETTINGS and self._rules is not self._full:
            _fail(ErrorCode.PROTOCOL_ERROR, f"the first frame must be SETTINGS, got {name}")
        if not any(key >> 8 == ftype for key in self._rules):
            sender = "client" if self._server else "server"
            _fail(ErrorCode.PROTOCOL_ERROR, f"a {sender} does not send {name} frames")
        if rule is None:
            _fail(ErrorCode.PROTOCOL_ERROR, f"invalid flags 0x{flags:02x} on {name}")
        if length > self._max_frame:
            _fail(ErrorCode.FRAME_SIZE_ERROR, f"{name} of {length} bytes exceeds {self._max_frame}")
        if length > rule[1] and ftype in (_HEADERS, _TRAILERS):
            _fail(ErrorCode.HEADERS_TOO_LARGE, f"{name} block exceeds {self._max_block} bytes")
        if not rule[0] <= length <= rule[1]:
            bounds = f"{rule[0]}" if rule[0] == rule[1] else f"{rule[0]}..{rule[1]}"
            _fail(ErrorCode.FRAME_SIZE_ERROR, f"{name} payload is {length} bytes, not {bounds}")
        where = "0" if rule[3] == 0 else f"odd and at most {MAX_STREAM_ID}"
        _fail(ErrorCode.PROTOCOL_ERROR, f"{name} on stream {sid}: the stream id must be {where}")

    def _build(
        self, ftype: int, flags: int, sid: int, src: bytes | memoryview, start: int, stop: int
    ) -> Frame:
        if ftype == _DATA:
            return Data(sid, flags, bytes(src[start:stop]) if flags & BODY else None)
        if ftype <= _TRAILERS:  # HEADERS or TRAILERS
            return self._block(ftype, flags, sid, src, start, stop)
        if ftype == _RST:
            return RstStream(sid, _U32.unpack_from(src, start)[0])
        if ftype == _WINDOW:
            increment = _U32.unpack_from(src, start)[0]
            if not 0 < increment <= 2**31 - 1:
                _fail(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE of {increment} on stream {sid}")
            return WindowUpdate(sid, increment)
        if ftype == _PING:
            return Ping(bool(flags & ACK), bytes(src[start:stop]))
        if ftype == _GOAWAY:
            last, code = _U32X2.unpack_from(src, start)
            if last and last & 0x8000_0001 != 1:
                _fail(ErrorCode.PROTOCOL_ERROR, f"GOAWAY names stream {last}, not a client stream")
            return GoAway(last, code, bytes(src[start + 8 : stop]).decode(errors="replace"))
        return self._settings(src[start:stop])

    def _block(
        self, ftype: int, flags: int, sid: int, src: bytes | memoryview, start: int, stop: int
    ) -> Frame:
        size = _U32.unpack_from(src, start)[0]
        end = start + 4 + size
        if size > self._max_block or end > stop or (end != stop and not flags & BODY):
            name = FrameType(ftype).name
            if size > self._max_block:
                _fail(ErrorCode.HEADERS_TOO_LARGE, f"{name} block exceeds {self._max_block} bytes")
            _fail(ErrorCode.PROTOCOL_ERROR, f"{name} block length {size} does not fit the frame")
        block = src[start + 4 : end]
        body = bytes(src[end:stop]) if flags & BODY else None
        frame: Frame
        try:
            if self._server:  # request HEADERS, the only block a client sends
                h = _REQUEST.decode(block)
                if sid <= self._last_opened:
                    _fail(ErrorCode.PROTOCOL_ERROR, f"HEADERS reuse or lower stream id {sid}")
                self._last_opened = sid
                metadata, ctype = h.metadata, h.content_type
                frame = Headers(sid, flags, h.path, ctype, h.kind, h.timeout_us, metadata, body)
            elif ftype == _TRAILERS:
                if block == _OK_BLOCK:  # the usual reply: [0, nil, {}]
                    return Trailers(sid, flags, 0, None, {}, body)
                t = _TRAILER.decode(block)
                if (t.status == 0) != (t.error is None):
                    _fail(ErrorCode.PROTOCOL_ERROR, "TRAILERS: error present iff status is not 0")
                metadata = t.metadata
                frame = Trailers(sid, flags, t.status, t.error, metadata, body)
            else:
                metadata = _RESPONSE.decode(block).metadata
                frame = ResponseHeaders(sid, flags, metadata, body)
        except (ValueError, RecursionError) as exc:  # msgspec, invalid UTF-8, deep nesting
            name = FrameType(ftype).name
            _fail(ErrorCode.PROTOCOL_ERROR, f"malformed {name} block on stream {sid}: {exc}")
        if len(metadata) > self._max_metadata:
            _fail(ErrorCode.HEADERS_TOO_LARGE, f"more than {self._max_metadata} metadata entries")
        return frame

    def _settings(self, p: bytes | memoryview) -> Settings:
        if len(p) % _SETTING.size:
            _fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        values: dict[str, int] = {}
        for key, value in _SETTING.iter_unpack(p):
            known = _SETTING_IDS.get(key)
            if known is None:
                continue  # settings this version does not know are ignored
            name, lowest, highest = known
            if not lowest <= value <= highest:
                _fail(ErrorCode.PROTOCOL_ERROR, f"SETTINGS {name}={value} out of range")
            values[name] = value
        self._rules = self._full
        return Settings(**values)


def _fail(code: ErrorCode, message: str) -> NoReturn:
    raise ProtocolError(code, message)
