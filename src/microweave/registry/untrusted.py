"""Bounds on records read from a shared engine, where anyone with write access (or a LAN
host, for mDNS) can put what it likes.

A Value tree is the one unbounded recursion in a record: JSON nested a few thousand levels
deep makes msgspec raise RecursionError (no DecodeError), and a tree that decodes just below
that depth makes every later recursive step (comparing, converting, encoding) raise it
instead. No extractor nests deeply (go-micro's and ours stop at 3 levels), so a backend
decoding a record catches RecursionError and refuses trees deeper than MAX_VALUE_DEPTH.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["MAX_VALUE_DEPTH", "too_deep"]

#: the deepest request/response Value tree accepted from the network (extractors write 3)
MAX_VALUE_DEPTH = 32


def too_deep(endpoints: Iterable[Any] | None, limit: int = MAX_VALUE_DEPTH) -> bool:
    """Whether any endpoint's request or response tree (objects with `.values`) nests past
    `limit`; iterative, so the check itself cannot overflow the stack."""
    stack = [(v, 1) for e in endpoints or () for v in (e.request, e.response) if v is not None]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in value.values or ())
    return False
