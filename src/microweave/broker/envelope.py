"""go-micro's broker envelope, as its NATS broker writes it: `{"Header": {...}, "Body": "<base64>"}`.

msgspec writes and reads `bytes` as standard base64, which is what Go's encoding/json does with
a `[]byte`, so one Struct serves both directions. A payload that is not an envelope (a plain
NATS publisher) is delivered as its raw bytes with no headers, rather than dropped.
"""

from __future__ import annotations

import msgspec

__all__ = ["MAX_HEADERS", "decode", "encode"]

#: headers one envelope may carry; more is a hostile or broken publisher
MAX_HEADERS = 256


class _Envelope(msgspec.Struct):
    Header: dict[str, str] = msgspec.field(default_factory=dict)
    Body: bytes = b""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Envelope)


def encode(headers: dict[str, str], body: bytes) -> bytes:
    return _encoder.encode(_Envelope(headers, body))


def decode(payload: bytes) -> tuple[dict[str, str], bytes, bool]:
    """(headers, body, True) for an envelope; (empty, payload, False) for anything else."""
    if payload[:1] == b"{":
        try:
            envelope = _decoder.decode(payload)
        except (msgspec.DecodeError, RecursionError):  # nested past msgspec's depth: not ours
            pass
        else:
            if len(envelope.Header) <= MAX_HEADERS:
                return envelope.Header, envelope.Body, True
    return {}, payload, False
