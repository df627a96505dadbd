"""Context: what a handler knows about the call it serves.

The current context lives in a contextvar, so a call made from inside a handler inherits what is
left of the caller's deadline and its tracing metadata without the user threading it through.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .broker import Event
    from .config import Config

__all__ = ["BaseContext", "Context", "MessageContext", "current_context"]

# Metadata keys on the wire (lowercase: gRPC and HTTP/2 require it; go-micro matches case-insensitively).
FROM_SERVICE: Final = "micro-from-service"
FROM_NODE: Final = "micro-from-id"
ENDPOINT: Final = "micro-endpoint"
SERVICE: Final = "micro-service"
_INTERNAL: Final = frozenset({FROM_SERVICE, FROM_NODE, ENDPOINT, SERVICE})


class BaseContext:
    """What every inbound message carries, whatever delivered it: metadata and a deadline.

    The RPC `Context` adds the endpoint and response metadata; a broker message context sits
    beside it with its topic and delivery attempt. Tracing keys travel in `metadata`. `config`
    is the serving service's live configuration (None outside a service).
    """

    __slots__ = ("config", "deadline", "metadata")

    def __init__(
        self,
        *,
        deadline: float | None = None,
        metadata: Mapping[str, str] | None = None,
        config: Config | None = None,
    ) -> None:
        #: absolute `time.monotonic()` value, or None for no deadline
        self.deadline = deadline
        self.metadata: dict[str, str] = dict(metadata) if metadata else {}
        self.config = config

    @property
    def caller(self) -> str:
        """The calling service's name, or "" when the caller is not a microweave service."""
        return self.metadata.get(FROM_SERVICE, "")

    @property
    def caller_node(self) -> str:
        return self.metadata.get(FROM_NODE, "")

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def propagated_metadata(self) -> dict[str, str]:
        """Metadata an outbound call made inside this handler carries on (tracing, user keys)."""
        return {k: v for k, v in self.metadata.items() if k not in _INTERNAL}


class Context(BaseContext):
    """One inbound call: deadline, metadata in and out, who called, which endpoint."""

    __slots__ = ("_response_metadata", "endpoint", "service")

    def __init__(
        self,
        *,
        service: str = "",
        endpoint: str = "",
        deadline: float | None = None,
        metadata: Mapping[str, str] | None = None,
        config: Config | None = None,
    ) -> None:
        # BaseContext's fields set here too: one call less on every inbound call
        self.deadline = deadline
        self.metadata: dict[str, str] = dict(metadata) if metadata else {}
        self.config = config
        self.service = service
        self.endpoint = endpoint
        self._response_metadata: dict[str, str] | None = None

    def set_response_metadata(self, key: str, value: str) -> None:
        """Send a key/value back to the caller with the reply (gRPC trailing metadata)."""
        if self._response_metadata is None:
            self._response_metadata = {}
        self._response_metadata[key.lower()] = value

    @property
    def response_metadata(self) -> dict[str, str]:
        return self._response_metadata or {}

    def __repr__(self) -> str:
        left = self.time_remaining()
        return (
            f"Context(endpoint={self.endpoint!r}, caller={self.caller!r}, "
            f"time_remaining={left if left is None else round(left, 3)})"
        )


class MessageContext(Context):
    """One event a subscriber serves: its topic, id, headers and delivery attempt, beside what
    every call has (`endpoint` is the subscriber's name; `metadata` its headers, lowercased, so
    a call made from the subscriber carries the publisher's trace context on).

    In `ack="manual"` mode the subscriber settles the event with `ack()` or `nack()`."""

    __slots__ = ("event",)

    def __init__(
        self,
        event: Event,
        *,
        service: str = "",
        endpoint: str = "",
        config: Config | None = None,
    ) -> None:
        self.deadline = None
        self.metadata = {k.lower(): v for k, v in event.headers.items()}
        self.config = config
        self.service = service
        self.endpoint = endpoint
        self._response_metadata = None
        self.event = event

    @property
    def topic(self) -> str:
        return self.event.topic

    @property
    def id(self) -> str:
        return self.event.id

    @property
    def headers(self) -> dict[str, str]:
        return self.event.headers

    @property
    def attempt(self) -> int:
        return self.event.attempt

    @property
    def queue(self) -> str | None:
        return self.event.queue

    async def ack(self) -> None:
        await self.event.ack()

    async def nack(self, *, requeue: bool = True, delay: float | None = None) -> None:
        await self.event.nack(requeue=requeue, delay=delay)

    def propagated_metadata(self) -> dict[str, str]:
        """The trace context and user keys go on; the event's own headers do not."""
        return {k: v for k, v in self.metadata.items() if k not in _INTERNAL and k not in _EVENT_HEADERS}

    def __repr__(self) -> str:
        return f"MessageContext(topic={self.topic!r}, id={self.id!r}, attempt={self.attempt})"


_EVENT_HEADERS: Final = frozenset({"micro-topic", "micro-id", "content-type"})

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar("microweave_context", default=None)


def current_context() -> Context | None:
    """The context of the call being served by this task, if any."""
    return _current.get()


def _set_current(ctx: Context) -> contextvars.Token[Context | None]:
    return _current.set(ctx)
