"""Stream entries as this backend writes them, read back defensively: another writer may put
anything on a stream."""

from __future__ import annotations

from typing import Final

import msgspec

from . import BODY, HEADERS

__all__ = ["CHUNK", "MAX_HEADERS_BYTES", "chunks", "decode_entry", "text"]

#: a header object larger than this is not decoded: the entry is dead-lettered as malformed
MAX_HEADERS_BYTES: Final = 64 * 1024
#: entry ids per XCLAIM or XACK command
CHUNK: Final = 1000
_headers = msgspec.json.Decoder(dict[str, str])


def decode_entry(fields: dict[bytes, bytes] | None) -> tuple[dict[str, str] | None, bytes]:
    if not fields:
        return None, b""
    body = fields.get(BODY)
    raw = fields.get(HEADERS)
    if body is None or raw is None or len(raw) > MAX_HEADERS_BYTES:
        return None, body or b""
    try:
        return _headers.decode(raw), body
    except msgspec.DecodeError:
        return None, body


def chunks(ids: list[bytes]) -> list[list[bytes]]:
    return [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]


def text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
