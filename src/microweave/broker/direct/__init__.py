"""`direct://`, the default broker: no server. Subscribers are found in the registry and each
event is delivered to them as a call, over the transports a call takes (in-process, tcp, gRPC).

    service = Service("mailer")          # no broker named: MICRO_BROKER, else direct://

    @service.subscriber("user.created", queue="mailer")
    async def welcome(user: UserCreated) -> None: ...

    await client.publish("user.created", UserCreated(id=7))

**How.** A subscriber is what go-micro's registry records already say: an endpoint
`Subscriber.<Name>` with metadata `{"topic": T, "subscriber": "true", "queue": Q}`, on a node
whose metadata says `"broker": "direct"`. A publish looks the topic up (`directory`: the
client's registry cache, a watch keeping it current) and calls `/<service>.Subscriber/<Name>`
on each broadcast node and on one node of each queue group (`delivery`), through the client's
pipeline: its middleware, its transports, a deadline. The event's headers travel as call
metadata, exactly as published. On the subscriber's node the call runs through the whole server
pipeline into the subscriber's `Subscription`, which bounds the handlers running at once by
`max_in_flight` (`inbound`). A Service's subscribers are served by the service's own node, on
the listeners and the registry record it has anyway; `broker.subscribe(...)` without a Service
starts a small node of the broker's own (`node`: tcp and in-process, one registry record per
subscription in the bound client's registry).

**Guarantees** (the tests named here back each one: `tests/conformance/test_broker.py -k direct`
and `tests/integration/test_broker_direct.py`):

- *Delivery: at most once.* Each broadcast subscriber node, and one member of each queue group,
  gets each event once or not at all (`test_a_queue_group_gets_each_event_once`,
  `test_group_members_in_processes_share_the_events_and_every_broadcast_node_gets_each`). A
  member that certainly did not take the event (unreachable, draining, no longer subscribed:
  the handler never ran) is skipped for another member of the group; a delivery that may have
  reached the handler (timed out, connection broken mid-call) is never sent again. A handler
  that fails is logged on its node with the event id (and its traceback under a correlation id)
  and the event is dropped: ack and nack change nothing
  (`test_a_failing_handler_does_not_stop_the_subscriber`,
  `test_a_payload_that_does_not_decode_is_logged_with_its_id_and_consuming_goes_on`).
- *Publish waits for the handlers.* `publish` returns once every delivery was answered: each
  handler ran (or failed; `ack="manual"`: settled). The call's reply is the acknowledgement.
  A subscriber with `max_in_flight` handlers running makes the delivery wait for a free slot:
  backpressure, nothing dropped (`test_max_in_flight_bounds_the_handlers_running`,
  `test_a_service_subscriber_is_served_by_its_own_node_bounded_by_max_in_flight`). Deliveries
  to the subscribers of one event run at once. The whole publish is bounded by `timeout`
  (lookup included): a handler still running then keeps running, the publisher logs it and
  returns (`test_publish_gives_up_waiting_after_its_timeout_and_the_handler_runs_on`). Only a
  publish that cannot find the subscribers raises (`BrokerError`); a failed delivery is a
  warning with the event id, since at most once never promised it. A subscriber that publishes
  to a topic it subscribes to itself, with `max_in_flight` handlers busy doing so, waits for
  its own slots until the timeout.
- *Ordering:* events one publisher publishes one after another reach each subscriber in that
  order, each handled before the next is sent
  (`test_one_publisher_order_is_kept_for_one_subscriber`); concurrent publishes have no order.
- *Durability: none.* An event lives in the publishing call only: nothing is stored, a
  subscriber that is not running when it is published never gets it.
- *Consumer crash:* the events its handlers were running are lost (their publishers see a broken
  connection, log it, and do not resend). Until its registry TTL runs out the dead node is still
  listed; a delivery to it fails at connect, so its queue groups go to another member and the
  node is tried last for `DOWN_FOR` seconds (skipped by broadcasts meanwhile)
  (`test_a_killed_group_member_is_not_picked_anymore`). A node that stops gracefully leaves the
  registry first and refuses new events unrun while it drains.
- *Registry outage:* publishing goes on to the subscribers the cache holds (stale beats failing;
  a node that died meanwhile is skipped as above); subscribers that registered during the outage
  are found once it is back. A publisher that knows nothing yet gets a `BrokerError` naming the
  registry (`test_a_registry_outage_keeps_known_subscribers_reachable`). Nodes keep serving;
  their heartbeats retry with backoff. A new standalone subscription on an unreachable network
  registry fails after `register_timeout`.
- *Freshness:* a new node or changed endpoints of a known service are seen as soon as the
  registry reports them; a service that is new to the publisher within `refresh` seconds, or at
  once when the topic had no subscriber at all
  (`test_no_subscriber_is_nothing_to_do_and_a_fresh_one_is_found_at_once`; `directory` says
  what each lookup costs).
- *Only direct:// nodes are called:* a node on another broker (or a go-micro node) is not a
  destination, and its subscriber paths refuse such calls unrun
  (`test_a_subscriber_path_refuses_calls_when_its_broker_is_not_direct`).

**Options** (keyword arguments or URL query, `direct://HOST:PORT?timeout=10`): HOST:PORT is
where the broker's own node listens (standalone subscriptions only; default 127.0.0.1:0);
`timeout` (seconds one publish may take, default 30), `refresh` (seconds the list of services
is trusted, default 1), `ttl` (registry TTL of standalone subscriptions, default 15),
`register_timeout` (seconds a standalone subscription keeps trying an unreachable network
registry, default 5), `max_deliveries` (accepted like every broker; nothing is redelivered).
Limits: an event's headers travel as one JSON metadata entry of at most `MAX_HEADER_BYTES`
(tcp takes 64 KiB of metadata; gRPC, used only for a node without tcp, 8 KiB).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from ...codec import JSON
from ...errors import ConfigurationError, MicroError
from ...registry.url_options import typed_options
from .. import CONTENT_TYPE, MESSAGE_ID, Broker, EventHandler, Subscription, broker_error, header
from ..subscriber import Subscriber
from .delivery import Courier
from .directory import Directory
from .inbound import HEADERS_KEY, Inbound, ServedByNode, encode_headers

if TYPE_CHECKING:
    from ..._backends import BackendURL
    from ...client import Client
    from ...server.pipeline import Pipeline
    from .node import OwnNode

__all__ = ["DirectBroker"]

log = logging.getLogger("microweave.broker")
#: seconds between two "nobody subscribes to this topic" lines for one topic
NOBODY_EVERY: Final = 60.0

DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_REFRESH: Final = 1.0
DEFAULT_TTL: Final = 15.0
DEFAULT_REGISTER_TIMEOUT: Final = 5.0
#: bytes of JSON an event's headers may take (a call's metadata must fit the transport's limit)
MAX_HEADER_BYTES: Final = 48 * 1024
#: seconds the broker's own node lets in-flight calls finish when it closes (its subscriptions
#: were drained with the caller's grace already)
NODE_GRACE: Final = 2.0

_OPTIONS: Final = {
    "timeout": float,
    "refresh": float,
    "ttl": float,
    "register_timeout": float,
    "max_deliveries": int,
}


class DirectBroker(Broker):
    scheme = "direct"
    guarantee = "at-most-once"
    redelivers = False

    def __init__(
        self,
        *,
        address: str = "127.0.0.1:0",
        timeout: float = DEFAULT_TIMEOUT,
        refresh: float = DEFAULT_REFRESH,
        ttl: float = DEFAULT_TTL,
        register_timeout: float = DEFAULT_REGISTER_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for option, value in (("timeout", timeout), ("refresh", refresh), ("ttl", ttl)):
            if not value > 0:
                raise ConfigurationError(
                    f"direct://: {option} must be a positive number of seconds, not {value}"
                )
        if not register_timeout >= 0:
            raise ConfigurationError(f"direct://: register_timeout must be >= 0, not {register_timeout}")
        _host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigurationError(f"direct://{address}: the address must be host:port (port 0 picks one)")
        self.address = address
        self.timeout = timeout
        self.refresh = refresh
        self.ttl = ttl
        self.register_timeout = register_timeout
        self._client: Client | None = None
        self._directory: Directory | None = None
        self._courier: Courier | None = None
        self._said_nobody: dict[str, float] = {}  # topic -> when "nobody subscribes" was logged
        self._node: OwnNode | None = None
        self._node_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> DirectBroker:
        if len(url.hosts) > 1:
            raise ConfigurationError(
                f"direct://{','.join(url.hosts)}: name one address for the broker's own node, or none"
            )
        if url.path.strip("/"):
            raise ConfigurationError(f"direct:// takes no path (got {url.path!r})")
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTIONS}
        options = typed_options(cls._shown(url), url.query, given, _OPTIONS)
        if url.hosts:
            kwargs.setdefault("address", url.hosts[0])
        return cls(**options, **kwargs)

    @staticmethod
    def _shown(url: BackendURL) -> str:
        return f"direct://{url.hosts[0] if url.hosts else ''}"

    def service_handler(self, subscriber: Subscriber, pipeline: Pipeline) -> EventHandler:
        """A Service's events come as calls over its own listeners, already through its pipeline."""
        return ServedByNode(subscriber, pipeline)

    def bind(self, client: Client) -> None:
        """Publish through `client` (its registry cache, its pipeline) and register standalone
        subscriptions in its registry."""
        if client is not self._client:
            self._client = client
            self._directory = None  # the previous client's cache may be closed
            self._courier = None

    def _bound(self) -> Client:
        if self._client is None:
            raise ConfigurationError(
                "direct:// finds subscribers through a client's registry: use it as client.broker "
                "(or Service(broker=...)), or call broker.bind(client) first"
            )
        return self._client

    # -- the backend ----------------------------------------------------------------------

    async def _connect(self) -> None:
        self._bound()

    async def _close(self) -> None:
        node, self._node = self._node, None
        if node is not None:
            await node.aclose()
        directory, self._directory = self._directory, None
        if directory is not None:
            await directory.aclose()

    async def _publish(self, topic: str, body: bytes, headers: dict[str, str]) -> None:
        client = self._bound()
        if self._directory is None:
            self._directory = Directory(client.registry, client.cache, refresh=self.refresh)
        if self._courier is None:
            self._courier = Courier(client)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                found = await self._directory.find(topic)
        except TimeoutError:
            raise broker_error(
                "direct://", f"publish to {topic}",
                TimeoutError(f"finding its subscribers in {client.registry!r} took over {self.timeout:g}s"),
            ) from None  # fmt: skip
        except MicroError as exc:
            raise broker_error(
                "direct://", f"publish to {topic}",
                MicroError(f"cannot find its subscribers: {exc.detail}; is the registry running?"),
            ) from None  # fmt: skip
        event_id = header(headers, MESSAGE_ID) or ""
        if not found:
            self._nobody(topic, event_id, repr(client.registry))
            return
        encoded = encode_headers(headers)
        if len(encoded) > MAX_HEADER_BYTES:
            too_many = (
                f"its headers take {len(encoded):,} bytes; direct:// carries at most {MAX_HEADER_BYTES:,}"
            )
            raise broker_error("direct://", f"publish to {topic}", MicroError(too_many))
        metadata = {HEADERS_KEY: encoded}
        content_type = header(headers, CONTENT_TYPE) or JSON
        await self._courier.deliver(found, topic, event_id, body, metadata, content_type, deadline=deadline)

    def _nobody(self, topic: str, event_id: str, registry: str) -> None:
        """No direct:// subscriber: said once a minute per topic (a typo in a topic, or a
        subscriber on another broker, is otherwise invisible)."""
        now = asyncio.get_running_loop().time()
        said = self._said_nobody
        if now - said.get(topic, -NOBODY_EVERY) < NOBODY_EVERY:
            return
        if len(said) >= 1024:  # bounded: publishers may invent topics
            said.clear()
        said[topic] = now
        others = self._directory.elsewhere.get(topic) if self._directory is not None else None
        if others:
            log.warning(
                "event %s on %s reaches nobody: its subscribers use the %s broker, not direct://; "
                "give publisher and subscribers the same broker (MICRO_BROKER or broker=)",
                event_id, topic, ", ".join(sorted(others)),
            )  # fmt: skip
        else:
            log.warning(
                "event %s on %s reaches nobody: no subscriber of it in %s (direct:// delivers only "
                "to subscribers running now; said once a minute per topic)",
                event_id, topic, registry,
            )  # fmt: skip

    async def _subscribe(self, sub: Subscription) -> None:
        handler = sub.handler
        if isinstance(handler, ServedByNode):  # a Service's: its own node serves the events
            subscriber = handler.subscriber
            subscriber.inbound = Inbound(sub, name=subscriber.name, path=subscriber.target.path)
            sub.state = subscriber
            return
        node = await self._own_node()
        try:
            await node.add(sub)
        except (MicroError, OSError) as exc:  # the registry refused; the address is taken
            raise broker_error("direct://", f"subscribe to {sub.topic}", exc) from None
        sub.state = node

    async def _unsubscribe(self, sub: Subscription) -> None:
        state = sub.state
        if isinstance(state, Subscriber):
            if state.inbound is not None and state.inbound.subscription is sub:
                state.inbound = None  # the node refuses its events unrun from now on
        elif state is not None:
            await state.remove(sub)

    async def _own_node(self) -> OwnNode:
        async with self._node_lock:
            if self._node is None:
                from .node import OwnNode

                client = self._bound()
                self._node = OwnNode(
                    client.registry,
                    name=self.name or client.name or "microweave",
                    address=self.address,
                    ttl=self.ttl,
                    start_timeout=self.register_timeout,
                    grace=NODE_GRACE,
                    max_message=client.max_message,
                )
            return self._node

    def __repr__(self) -> str:
        where = "" if self.address == "127.0.0.1:0" else self.address
        return f"DirectBroker('direct://{where}')"
