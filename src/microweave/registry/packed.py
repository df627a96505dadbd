"""go-micro's packed strings: hex(zlib(JSON)), as in Consul tags (`e-`, `t-`, `v-`) and mDNS TXT.

go-micro's Consul and mDNS registries store endpoints, metadata and the version this way so the
records fit in tags and TXT strings; we write the same bytes so go-micro reads our nodes, and
read theirs. Legacy go-micro wrote `e=`/`t=`/`v=` prefixes with the same encoding.
"""

from __future__ import annotations

import binascii
import zlib
from typing import Any

import msgspec

__all__ = ["pack", "pack_raw", "unpack", "unpack_raw"]

_MAX_UNPACKED = 1 << 20  # a tag or TXT string is small; refuse to inflate one past 1 MiB


def pack_raw(data: bytes) -> str:
    """hex(zlib(data)); go-micro packs the version tag this way (raw text, not JSON)."""
    return zlib.compress(data).hex()


def unpack_raw(text: str) -> bytes:
    """The bytes packed in `text`; ValueError when it is not hex(zlib(...))."""
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(binascii.unhexlify(text), _MAX_UNPACKED)
    except (binascii.Error, zlib.error) as exc:
        raise ValueError(f"not a go-micro packed value: {exc}") from None
    if inflater.unconsumed_tail:
        raise ValueError("packed value inflates past 1 MiB")
    return data


def pack(value: Any) -> str:
    """hex(zlib(json(value))): endpoints and metadata as go-micro packs them."""
    return pack_raw(msgspec.json.encode(value))


def unpack(text: str, type: Any = Any) -> Any:
    """The value packed in `text`; ValueError when it is not hex(zlib(json)) of `type`."""
    try:
        return msgspec.json.decode(unpack_raw(text), type=type)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"not a go-micro packed value: {exc}") from None
