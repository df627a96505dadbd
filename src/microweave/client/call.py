"""One outbound call as every layer of the client sees it, and the options a caller sets."""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

from ..registry import Node
from ..selector import Filter
from ..server import Kind

__all__ = ["MAX_TIMEOUT", "UNSET", "ClientCall", "Unset", "check_timeout"]


class Unset(enum.Enum):
    """The type of `UNSET`: "use the default", where `None` means something else."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET

#: a timeout longer than this (about 30 days, and `inf`) means no deadline at all
MAX_TIMEOUT: Final = 30 * 24 * 3600.0


def check_timeout(timeout: float | None, *, what: str = "timeout") -> float | None:
    """Validate a timeout at the API boundary: seconds > 0, or None for no deadline.
    `inf` and anything past `MAX_TIMEOUT` mean no deadline; NaN, zero, negatives and
    non-numbers are refused with a message that says what to pass instead."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"{what} must be a number of seconds or None (no deadline), not {timeout!r}")
    if math.isnan(timeout) or timeout <= 0:
        raise ValueError(
            f"{what} must be a positive number of seconds or None (no deadline), not {timeout!r}"
        )
    if timeout > MAX_TIMEOUT:
        return None
    return float(timeout)


@dataclass(slots=True)
class ClientCall:
    """One call on its way out; middleware may read and change it before passing it on."""

    service: str
    endpoint: str  # as the caller named it: Greeter.SayHello, or a gRPC path
    path: str  # /greeter.Greeter/SayHello
    kind: Kind
    body: bytes | AsyncIterator[bytes]
    content_type: str
    #: the caller's own metadata; `PropagateMetadata` adds the caller's identity and context
    metadata: dict[str, str]
    #: absolute `time.monotonic()` for the whole call, retries included; None: no deadline
    deadline: float | None
    filters: Sequence[Filter] = ()
    #: whether the endpoint may run twice: None asks the registry (`@idempotent` endpoints)
    idempotent: bool | None = None
    response_metadata: dict[str, str] | None = None
    attempt: int = 1
    #: seconds this attempt may take (set by `Deadline` from `deadline`)
    timeout: float | None = None
    #: the node this attempt goes to (set when selected), and the ones already tried
    node: Node | None = None
    tried: tuple[str, ...] = ()
    transport: str = ""  # which transport carried the attempt
