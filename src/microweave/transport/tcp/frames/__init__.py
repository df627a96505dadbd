"""Wire layer of the `tcp` transport: bytes to frames and back, with no I/O of its own.

docs/protocol.md is the specification; this module is its reference implementation, kept free of
sockets and asyncio so the same code serves the connection layer, the tests and the fuzzers.

The decoder trusts nothing it is fed: every frame header is checked (type, flags, length, stream
id) as soon as its 10 bytes arrive, before any of the payload is buffered, so a peer cannot make
us hold more than one frame. Every violation raises the one `ProtocolError`; the connection
answers it with GOAWAY and closes. Encoders trust their caller (the connection knows the peer's
SETTINGS) and stay cheap: one header pack and one join per frame.
"""

from .decode import FrameDecoder
from .encode import (
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
from .model import (
    ACK,
    BODY,
    DEFAULT_INITIAL_WINDOW,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_BLOCK,
    DEFAULT_MAX_METADATA,
    END_STREAM,
    HEADER_SIZE,
    MAGIC,
    MAX_STREAM_ID,
    MIN_FRAME_SIZE,
    PREFACE,
    VERSION,
    CallKind,
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
    WireError,
)

__all__ = [
    "ACK", "BODY", "DEFAULT_INITIAL_WINDOW", "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_MAX_HEADER_BLOCK",
    "DEFAULT_MAX_METADATA", "END_STREAM", "HEADER_SIZE", "MAGIC", "MAX_STREAM_ID",
    "MIN_FRAME_SIZE", "PREFACE", "VERSION", "CallKind", "Data", "ErrorCode", "Frame",
    "FrameDecoder", "FrameType", "GoAway", "Headers", "Ping", "ProtocolError", "ResponseHeaders",
    "RstStream", "Settings", "Trailers", "WindowUpdate", "WireError", "encode", "encode_data",
    "encode_frame", "encode_goaway", "encode_headers", "encode_ping", "encode_response_headers",
    "encode_rst_stream", "encode_settings", "encode_trailers", "encode_window_update",
]  # fmt: skip
