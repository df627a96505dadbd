"""Queue names, queue arguments and AMQP headers: what two processes must agree on byte for byte.

A queue group's queue is declared by every member with the same name and arguments (RabbitMQ
refuses a redeclaration that differs, PRECONDITION_FAILED), so both are computed here from the
group, the topic and the exchange only.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any, Final

from .. import DEAD_LETTER_REASON, dead_letter_topic, header

__all__ = [
    "BROKER_HEADERS",
    "MAX_HEADERS",
    "broadcast_queue_name",
    "group_queue_arguments",
    "group_queue_name",
    "text_headers",
]

#: what names our queues, so an operator tells them from go-micro's and others' in rabbitmqctl
PREFIX: Final = "microweave"
#: headers one delivery may carry into an Event; more is a broken or hostile publisher
MAX_HEADERS: Final = 256
#: bytes of one header value kept (RabbitMQ's frame size bounds the total anyway)
MAX_HEADER_VALUE: Final = 16 * 1024
#: headers RabbitMQ adds for its own bookkeeping: never handed on, never published again (a
#: dead-lettered copy carrying x-delivery-count would look redelivered on its first delivery)
BROKER_HEADERS: Final = frozenset(
    {"x-delivery-count", "x-death", "x-first-death-exchange", "x-first-death-queue"}
)


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A")


def group_queue_name(queue: str, topic: str) -> str:
    """`microweave:<group>:<topic>`: one durable queue per (group, topic).

    Why this name: it is the same in every member (they share the queue), it differs per topic
    (a group subscribing to two topics must not get one topic's events in the other's handler),
    it never equals go-micro's group queue (named just `<group>`, non-durable and auto-delete: a
    durable quorum queue of that name would make one of the two declarations fail), and `:`
    inside either part is escaped so no two (group, topic) pairs share a name. A name past
    AMQP's 255 bytes ends with a hash of the whole instead.
    """
    name = f"{PREFIX}:{_escape(queue)}:{_escape(topic)}"
    if len(name.encode()) <= 255:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return name.encode()[:200].decode(errors="ignore") + ":" + digest


def broadcast_queue_name(topic: str) -> str:
    """A broadcast subscriber's own queue: named by us, not by the server, so aio-pika can
    declare it again under the same name after a reconnect (a client may not declare `amq.*`)."""
    short = topic.encode()[:180].decode(errors="ignore")
    return f"{PREFIX}:broadcast:{_escape(short)}:{uuid.uuid4().hex}"


def group_queue_arguments(*, exchange: str, topic: str, delivery_limit: int) -> dict[str, Any]:
    """A quorum queue (replicated, durable, counts deliveries in `x-delivery-count`) that
    RabbitMQ dead-letters itself to the topic's dead-letter key once an event was returned
    `delivery_limit` times: the safety net under our own dead-lettering."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": dead_letter_topic(topic),
    }


def text_headers(table: Mapping[str, Any] | None) -> dict[str, str]:
    """AMQP header values as text, as go-micro reads them (`5` -> "5", `true` -> "true"),
    bounded in count and size; RabbitMQ's own bookkeeping headers left out."""
    if not table:
        return {}
    out: dict[str, str] = {}
    for key, value in table.items():
        if len(out) >= MAX_HEADERS:
            break
        if key in BROKER_HEADERS:
            continue
        if isinstance(value, str):
            text = value
        elif isinstance(value, bytes | bytearray):
            text = bytes(value).decode(errors="replace")
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = str(value)
        else:
            continue  # tables and arrays (x-death and the like) are not event headers
        out[key] = text[:MAX_HEADER_VALUE]
    # an event RabbitMQ dead-lettered itself (the delivery limit) says so like ours do
    first = out.get("x-first-death-reason")
    if first and header(out, DEAD_LETTER_REASON) is None:
        out[DEAD_LETTER_REASON] = f"RabbitMQ dead-lettered it ({first})"
    return out
