"""Frames to bytes: one header pack and one join per frame (the hot path of every call)."""

from __future__ import annotations

from collections.abc import Mapping

from .model import (
    _DATA,
    _GOAWAY,
    _HDR,
    _HDR_GOAWAY,
    _HDR_U32,
    _HEADERS,
    _NO_METADATA,
    _PING,
    _RST,
    _SETTING,
    _SETTING_IDS,
    _SETTINGS,
    _TRAILERS,
    _WINDOW,
    ACK,
    BODY,
    END_STREAM,
    Bytes,
    CallKind,
    Data,
    ErrorCode,
    Frame,
    GoAway,
    Headers,
    Ping,
    ResponseHeaders,
    RstStream,
    Settings,
    Trailers,
    WindowUpdate,
    WireError,
    _encode_block,
)

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
