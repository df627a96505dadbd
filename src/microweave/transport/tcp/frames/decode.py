"""Bytes to frames: the incremental, validating decoder."""

from __future__ import annotations

from typing import Final, NoReturn, TypeAlias

from .model import (
    _DATA,
    _GOAWAY,
    _HDR,
    _HEADERS,
    _KNOWN_TYPES,
    _OK_BLOCK,
    _PING,
    _REQUEST,
    _RESPONSE,
    _RST,
    _SETTING,
    _SETTING_IDS,
    _SETTINGS,
    _TRAILER,
    _TRAILERS,
    _U32,
    _U32X2,
    _WINDOW,
    ACK,
    BODY,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_BLOCK,
    DEFAULT_MAX_METADATA,
    END_STREAM,
    HEADER_SIZE,
    MAGIC,
    MAX_SETTINGS,
    MAX_STREAM_ID,
    MIN_FRAME_SIZE,
    PREFACE,
    VERSION,
    Bytes,
    Data,
    ErrorCode,
    Frame,
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
)

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
