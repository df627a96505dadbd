"""The protocol's vocabulary: constants, frame types, header blocks and struct layouts."""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Final, TypeAlias

import msgspec

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
