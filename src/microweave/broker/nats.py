"""`nats://host:port[,host:port]?connect_timeout=&pending_msgs=&pending_bytes=`: core NATS.

**At most once.** NATS keeps nothing: a message reaches the subscribers connected when it is
published, or nobody. Each event goes to every broadcast subscriber and to one member of each
queue group (a NATS queue subscription, `queue=`), whichever process it runs in
(test_broker_nats.py: test_a_queue_group_spans_two_processes). `ack` and `nack` do nothing and
`attempt` is always 1; a failed handler's event is logged with its id and dropped
(tests/conformance/test_broker.py -k nats).

- Wire: go-micro's envelope `{"Header": {...}, "Body": "<base64>"}` on subject = topic, so go-micro
  v5 services exchange events with us (tests/interop/test_gomicro_broker_wire.py). A payload that
  is not an envelope (a plain NATS publisher) is delivered as its raw bytes, with its NATS
  headers if it has any; so is an envelope with more than `envelope.MAX_HEADERS` headers
  (test_broker_nats.py: test_a_plain_nats_payload_arrives_as_raw_bytes,
  test_a_hostile_envelope_does_not_break_the_subscriber).
- Ordering: NATS keeps one publisher's order per subscriber; with `max_in_flight=1` the handler
  sees them in that order (conformance: test_one_publisher_order_is_kept_for_one_subscriber).
- Durability: none. A subscriber that crashes loses what it held; one that cannot keep up
  loses what overflows its bounded pending queue (`pending_msgs`, `pending_bytes`): nats-py
  drops it as a slow consumer, and we log how many were dropped, at most every 5 s
  (test_broker_nats.py: test_a_subscriber_that_cannot_keep_up_loses_events_and_says_so).
- Broker restart: nats-py reconnects by itself and restores every subscription; what was
  published meanwhile to the server is lost. A publish made while reconnecting is buffered (at
  most 8 MiB, then it raises `BrokerError`) and sent once the server is back
  (test_broker_nats.py: test_after_a_server_restart_the_subscriber_gets_new_events).
- Broker down at start: `BrokerError` naming the URL (without credentials) after bounded
  retries within `connect_timeout` seconds (default 5) (test_broker_nats.py:
  test_server_down_at_start_is_a_clear_error, test_credentials_in_the_url_work_and_never_show).
- Decisions: the envelope is go-micro's, never NATS headers (go-micro reads only the envelope);
  subscribe() returns once the server has the subscription (a flush), so an event published
  right after it is not missed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from . import Broker, Event, Subscription, broker_error
from ._nats_link import NatsLink, NatsURL, parse_nats_url, unwrap
from .envelope import encode

if TYPE_CHECKING:
    from .._backends import BackendURL

__all__ = ["NatsBroker"]

log = logging.getLogger("microweave.broker")

#: messages and bytes one subscription may have waiting for a free handler; past that, NATS
#: messages are dropped (a slow consumer) and counted
PENDING_MSGS = 65_536
PENDING_BYTES = 64 * 1024 * 1024
#: seconds between two log lines about one subscription's dropped messages
DROP_LOG_EVERY = 5.0
CONNECT_TIMEOUT = 5.0
FLUSH_TIMEOUT = 5

_OPTIONS: dict[str, type] = {
    "connect_timeout": float,
    "pending_msgs": int,
    "pending_bytes": int,
    "max_deliveries": int,
}


class _Drops:
    """Messages NATS dropped for one subscription since its last log line."""

    __slots__ = ("count", "logged_at", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.logged_at = 0.0


class NatsBroker(Broker):
    scheme = "nats"
    guarantee = "at-most-once"
    redelivers = False

    def __init__(
        self,
        url: NatsURL | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        pending_msgs: int = PENDING_MSGS,
        pending_bytes: int = PENDING_BYTES,
        **kwargs: Any,
    ) -> None:
        """`url`: from `NatsBroker.from_url` (default nats://127.0.0.1:4222); `pending_msgs` and
        `pending_bytes` bound what one subscription holds while its handlers are busy."""
        super().__init__(**kwargs)
        self.url = url or NatsURL("nats", [])
        self.pending_msgs = max(1, pending_msgs)
        self.pending_bytes = max(1024, pending_bytes)
        self.link = NatsLink(self.url, connect_timeout=connect_timeout, name=self.name or "microweave")
        self.link.on_slow = self._dropped
        self._by_nats_sub: dict[NatsSubscription, tuple[Subscription, _Drops]] = {}

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> NatsBroker:
        parsed = parse_nats_url(url, types=_OPTIONS, given=kwargs)
        return cls(parsed, **parsed.options)

    @property
    def public_url(self) -> str:
        return self.url.public

    async def _connect(self) -> None:
        await self.link.open()

    async def _close(self) -> None:
        await self.link.close()
        self._by_nats_sub.clear()

    async def _publish(self, topic: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            await self.link.client().publish(topic, encode(headers, body))
        except Exception as exc:
            raise broker_error(self.url.public, f"publish to {topic}", exc) from None

    async def _subscribe(self, sub: Subscription) -> None:
        topic, queue, dispatch, dispatch_nowait = sub.topic, sub.queue, sub.dispatch, sub.dispatch_nowait

        async def deliver(msg: Msg) -> None:
            # the hot path: nats-py calls this once per message, one at a time per subscription
            headers, body = unwrap(msg)
            event = Event(topic, body, headers, queue=queue)
            if not dispatch_nowait(event):
                await dispatch(event)

        nc = self.link.client()
        nsub: NatsSubscription | None = None
        try:
            nsub = await nc.subscribe(
                topic,
                queue=queue or "",
                cb=deliver,
                pending_msgs_limit=self.pending_msgs,
                pending_bytes_limit=self.pending_bytes,
            )
            # the server has the subscription once it answered a PING sent after it: an event
            # published by anyone after subscribe() returned reaches this subscriber
            await nc.flush(timeout=FLUSH_TIMEOUT)
        except Exception as exc:
            if nsub is not None:
                with contextlib.suppress(Exception):
                    await nsub.unsubscribe()
            raise broker_error(self.url.public, f"subscribe to {topic}", exc) from None
        sub.state = nsub
        self._by_nats_sub[nsub] = (sub, _Drops())

    async def _unsubscribe(self, sub: Subscription) -> None:
        nsub: NatsSubscription | None = sub.state
        if nsub is None:
            return
        entry = self._by_nats_sub.pop(nsub, None)
        if entry is not None and entry[1].count:
            self._log_drops(sub, entry[1])
        await nsub.unsubscribe()

    def _dropped(self, nsub: NatsSubscription) -> None:
        entry = self._by_nats_sub.get(nsub)
        if entry is None:
            return
        sub, drops = entry
        drops.count += 1
        drops.total += 1
        if time.monotonic() - drops.logged_at >= DROP_LOG_EVERY:
            self._log_drops(sub, drops)

    def _log_drops(self, sub: Subscription, drops: _Drops) -> None:
        log.warning(
            "NATS dropped %d event(s) of %s for a subscriber that cannot keep up (%d in all; "
            "max_in_flight=%d, pending_msgs=%d): core NATS is at most once; raise max_in_flight "
            "or pending_msgs, or use nats+jetstream:// to keep every event",
            drops.count, sub.topic, drops.total, sub.max_in_flight, self.pending_msgs,
        )  # fmt: skip
        drops.count = 0
        drops.logged_at = time.monotonic()

    def __repr__(self) -> str:
        return f"NatsBroker({self.url.public!r})"
