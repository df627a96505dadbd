"""`redis://`: events on Redis Streams with consumer groups, delivered at least once.

    redis://[user:password@]host[:port][/db][?prefix=app:&maxlen=100000&claim_idle=30&retry_for=5]

Each claim below names the test in tests/integration/test_broker_redis.py that backs it; the
conformance suite (tests/conformance/test_broker.py) holds this backend to the common contract.

Guarantee: at least once. `publish` returns once Redis answered the XADD. On a server with
`appendonly yes` and `appendfsync always` that entry is on disk, so it survives a restart or a
SIGKILL of redis-server:
    test_redis_restart_mid_stream_loses_no_confirmed_publish
With other persistence settings an event is as durable as the server makes it.

Layout: one stream per topic, key = `prefix` + topic (no prefix unless `?prefix=` says so);
each entry has two fields, `headers` (a JSON object, every header as given, case kept) and
`body` (the bytes as published). Every XADD trims the stream to about `maxlen` entries
(`MAXLEN ~`, default 100,000), so Redis memory stays bounded:
    test_streams_stay_bounded_by_maxlen
The price: a group that falls more than `maxlen` entries behind loses the oldest ones, and an
entry trimmed while pending is not redelivered. Size `maxlen` above any group's largest backlog.

Queue groups: a consumer group named after the queue, created at the stream's end (`$`, with
MKSTREAM; BUSYGROUP ignored) when a member subscribes, so a new group gets the events published
from then on, as a newly bound queue does on RabbitMQ. A group on a dead-letter topic (a
topic ending in `.dead-letter`, queue or broadcast) is created at the stream's start (`0`)
instead, so a new reader gets every dead letter the stream still holds, written before anyone
subscribed to it:
    test_dead_letters_written_before_anyone_subscribed_are_read_later
Each subscription is a consumer of its
own (`<service>@<host>:<pid>:<random>:<n>`), so a group spreads entries over every subscription
of every process. Broadcast subscribers get a group of their own each (`*broadcast*<consumer>`;
`*` cannot occur in a queue name), not a plain XREAD from `$`, so they get acks, nacks,
delivery counts and redelivery like queue members (the conformance suite's failing-handler and
manual-ack tests subscribe without a queue). That group is destroyed on unsubscribe; one a
crashed process left behind is destroyed by the next subscriber of the stream once its consumer
has been idle for an hour, and so is an idle queue member holding nothing:
    test_what_crashed_subscribers_left_is_swept_by_the_next_one

Delivery: each subscription reads with XREADGROUP COUNT n BLOCK (at most 1 s), n being how many
more entries it may hold: entries in handlers plus entries waiting for a redelivery never exceed
`max_in_flight` (and at most as many acknowledged ones wait for their XACK). Ordering: one
publisher's events reach a subscriber with `max_in_flight=1` in publish order (a stream is
ordered); redeliveries and a larger `max_in_flight` reorder. `Event.attempt` is the entry's
delivery count in its group: 1 on the first delivery, one more for every claim (XCLAIM,
XAUTOCLAIM).

Settling: ack -> XACK, sent by the subscription's acker: the acks that gathered while the last
XACK was on the wire go in one command, and `ack()` does not wait for it (as AMQP's basic.ack;
an ack lost to a crash means one redelivery). Entries are never XDELed: other groups of the
stream may not have read them; MAXLEN trims them.
nack(requeue=True, delay) -> the entry stays pending with this consumer, which claims it back
(XCLAIM: a delivery counted) and dispatches it when the delay is up. nack(requeue=False), or a
failure on delivery `max_deliveries` -> the event (same body and headers, Micro-Id included,
plus `Micro-Dead-Letter-Reason`) is XADDed to the stream of `dead_letter_topic(topic)` and the
original XACKed, both in one MULTI/EXEC; the subscriber goes on consuming:
    test_poison_and_failing_events_go_to_the_dead_letter_stream_and_consuming_goes_on
An entry some other writer put on the stream (no `headers`/`body`, headers not a JSON object of
strings, or over 64 KiB of them) is dead-lettered the same way, never handed to a handler:
    test_an_entry_another_writer_put_on_the_stream_is_dead_lettered_not_handled

Consumer crash: every consumer runs XAUTOCLAIM when it starts and every `claim_idle / 2`
seconds, taking entries of its group idle longer than `claim_idle` (default 30 s), at most as
many as it has room for. So a killed consumer's entries go to the other members:
    test_a_sigkilled_consumers_pending_entries_are_claimed_by_another_member
A slow handler or a long nack delay is not mistaken for a crash: each consumer resets the idle
time of what it holds every `claim_idle / 3` seconds (XCLAIM JUSTID: no delivery counted); the
same test shows a live holder keeping its entries over two claim_idles. An entry claimed more
than `max_deliveries` times without being settled (it kills whoever takes it) is dead-lettered:
    test_an_entry_that_killed_its_consumers_max_deliveries_times_is_dead_lettered
On unsubscribe a queue member hands what it still holds to the others at once (marked idle for
`claim_idle`), and leaves the group if it holds nothing:
    test_unsubscribe_leaves_no_group_or_consumer_behind

Broker restart: each subscription's reader logs the outage once, retries with backoff (up to
5 s apart) and goes on where its group stands: with AOF the groups and their pending lists
survive; a group that is gone (its data lost) is created again at `$` (at `0` on a
dead-letter topic). An ack that fails during
the outage is retried for `retry_for` seconds; if it still fails its entry stays pending and is
claimed and delivered again after `claim_idle`: a duplicate, at most one per entry held when
Redis went away (the restart test counts them).

Publishing while Redis is away: retried with backoff for `retry_for` seconds (default 5), then
`BrokerError` naming the URL (never the credentials) and asking whether redis-server runs there.
Nothing is buffered, nothing dropped silently; once Redis is back publishing works again:
    test_publish_while_redis_is_down_fails_after_bounded_retries_and_works_again
redis-py's own retries are turned off, since it would resend an XADD after a lost reply without
telling us. Ours do the same knowingly: a reply lost after Redis wrote the entry cannot be told
from a write that never happened, so each retry of one publish can add one copy with the same
Micro-Id (consumers may drop repeats by id). Down at start: `connect()` retries the same way:
    test_redis_down_at_start_is_a_clear_error_after_bounded_retries

Credentials: `redis://:password@host` (AUTH) and `redis://user:password@host` (ACL user), with
%-escapes; a wrong password is not retried; the password never shows in repr, errors or logs:
    test_credentials_work_and_never_show
TLS: `rediss://host:port?ssl_ca_certs=ca.pem` (and `ssl_certfile`, `ssl_keyfile` for a client
certificate):
    test_rediss_over_tls

Options (URL query or keyword arguments; an unknown one is refused, naming the known ones):
`prefix`, `maxlen`, `claim_idle` (s), `retry_for` (s: how long connect, publish and ack retry),
`timeout` (s: one command, connect included), `max_deliveries`, and for rediss://
`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`. One server: Redis Cluster and Sentinel are not
supported.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...errors import BrokerError, ConfigurationError
from ...registry.url_options import typed_options
from .. import Broker, Subscription, broker_error
from ._batch import Batcher

if TYPE_CHECKING:
    from ..._backends import BackendURL
    from ._consumer import Consumer

__all__ = ["RedisBroker"]

log = logging.getLogger("microweave.broker.redis")
T = TypeVar("T")

DEFAULT_PORT: Final = 6379
#: entries a topic's stream keeps (approximately: Redis trims whole nodes, `MAXLEN ~`)
DEFAULT_MAXLEN: Final = 100_000
#: seconds an entry stays pending with a silent consumer before another member claims it
DEFAULT_CLAIM_IDLE: Final = 30.0
#: seconds a connect, publish or acknowledgement keeps retrying while Redis is unreachable
DEFAULT_RETRY_FOR: Final = 5.0
#: seconds one command may take (connect included) before it counts as failed
DEFAULT_TIMEOUT: Final = 5.0
#: connections publishes, acknowledgements and claims share (each subscription reads on its own);
#: publishes use one at a time (see _batch), each subscription's acks one
POOL_SIZE: Final = 64
#: stream entry fields: the headers as a JSON object, the body as it was published
HEADERS: Final = b"headers"
BODY: Final = b"body"
#: a broadcast subscriber's group name starts with this; '*' is refused in queue names, so a
#: queue group can never be mistaken for one
BROADCAST_GROUP: Final = "*broadcast*"

_OPTIONS: dict[str, type] = {
    "prefix": str,
    "maxlen": int,
    "claim_idle": float,
    "retry_for": float,
    "timeout": float,
    "max_deliveries": int,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
}
_TLS_ONLY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
#: worth retrying: the server is away (down, restarting, loading its AOF) or slow
_TRANSIENT = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
#: not worth retrying: a wrong user or password stays wrong
_DENIED = (redis_errors.AuthenticationError, redis_errors.AuthorizationError)
_encode = msgspec.json.Encoder().encode
#: a redis.asyncio.Redis: its annotations (invariant lists, sync-or-async unions) do not fit
#: strict mypy, so calls on it are checked by the tests instead
Client = Any


def encode_headers(headers: dict[str, str]) -> bytes:
    return _encode(headers)


class RedisBroker(Broker):
    scheme = "redis"
    guarantee = "at-least-once"
    redelivers = True

    def __init__(
        self,
        address: str = f"127.0.0.1:{DEFAULT_PORT}",
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        prefix: str = "",
        maxlen: int = DEFAULT_MAXLEN,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        retry_for: float = DEFAULT_RETRY_FOR,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.host, self.port = _host_port(address)
        self.db = db
        #: where the broker is, without credentials: every error and log line names this
        self.url = f"{'rediss' if tls else 'redis'}://{_netloc(self.host, self.port)}/{db}"
        if maxlen < 1:
            raise ConfigurationError(f"{self.url}: maxlen must be at least 1, not {maxlen}")
        for name, value in (("claim_idle", claim_idle), ("timeout", timeout)):
            if not value > 0:
                raise ConfigurationError(f"{self.url}: {name} must be more than 0 seconds, not {value}")
        if not retry_for >= 0:
            raise ConfigurationError(f"{self.url}: retry_for must be 0 seconds or more, not {retry_for}")
        self.prefix = prefix
        self.maxlen = maxlen
        self.claim_idle = claim_idle
        self.retry_for = retry_for
        self.timeout = timeout
        self._connection: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "db": db,
            "username": username,
            "password": password,
            "socket_connect_timeout": timeout,
            # we retry ourselves, within `retry_for`: redis-py's own retries would resend an
            # XADD whose reply was lost (a duplicate per retry) without telling us
            "retry": Retry(NoBackoff(), 0),
            "protocol": 2,  # the reply shapes this module reads
        }
        if tls:
            self._connection.update(
                connection_class=aioredis.SSLConnection,
                ssl_ca_certs=ssl_ca_certs,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
            )
        self._password = password
        self._client: Client | None = None
        self._closed = False
        self._xadds: Batcher[tuple[Any, ...], Any] | None = None
        self._consumer_names = itertools.count(1)
        #: this broker's consumers are named <this>:<n>, unique across processes and hosts
        who = (self.name or "microweave").replace(" ", "_")
        self.consumer_base = f"{who}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> RedisBroker:
        if len(url.hosts) > 1:
            raise ConfigurationError(
                f"{url.scheme}:// takes one server address (Redis Cluster and Sentinel are not supported)"
            )
        userinfo, _, address = (url.hosts[0] if url.hosts else "").rpartition("@")
        address = address or f"127.0.0.1:{DEFAULT_PORT}"
        tls = url.scheme == "rediss"
        public = f"{url.scheme}://{address}{url.path}"
        path = url.path.strip("/")
        if path and not path.isdigit():
            raise ConfigurationError(
                f"{public}: the path is the database number (redis://host/0), not {path!r}"
            )
        kwargs = typed_options(public, url.query, kwargs, _OPTIONS)
        if not tls and any(kwargs.get(name) for name in _TLS_ONLY):
            raise ConfigurationError(f"{public}: ssl_* options need a rediss:// URL (Redis over TLS)")
        if userinfo:
            user, has_password, password = userinfo.partition(":")
            kwargs.setdefault("username", unquote(user) or None)
            kwargs.setdefault("password", unquote(password) if has_password else None)
        return cls(address, db=int(path or 0), tls=tls, **kwargs)

    def __repr__(self) -> str:
        return f"RedisBroker({self.url!r})"

    # -- connection --------------------------------------------------------------------

    def new_client(self, *, max_connections: int, read_timeout: float) -> Client:
        """A client with a pool of its own, of at most `max_connections`. A caller finding them
        all busy gets MaxConnectionsError, which `call` retries like an outage (a blocking
        pool would wait instead, but costs ~15 us more per command)."""
        pool = aioredis.ConnectionPool(
            max_connections=max_connections, socket_timeout=read_timeout, **self._connection
        )
        return aioredis.Redis(connection_pool=pool)

    @property
    def client(self) -> Client:
        if self._client is None:
            raise BrokerError(f"broker {self.url}: not connected", id="microweave.broker")
        return self._client

    async def _connect(self) -> None:
        self._closed = False
        client = self.new_client(max_connections=POOL_SIZE, read_timeout=self.timeout)
        try:
            await self.call("connect", client.ping)
        except BaseException:
            await client.aclose(close_connection_pool=True)
            raise
        self._client = client
        self._xadds = Batcher(self._send_xadds)

    async def _close(self) -> None:
        self._closed = True
        if self._xadds is not None:
            self._xadds.close(BrokerError(f"broker {self.url}: closed", id="microweave.broker"))
            self._xadds = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose(close_connection_pool=True)

    async def call(self, action: str, command: Callable[[], Awaitable[T]]) -> T:
        """Run `command`, retrying while Redis is unreachable for up to `retry_for` seconds;
        then `BrokerError` naming the URL (never the credentials) and what to check."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        pause = 0.05
        while True:
            try:
                return await command()
            except _DENIED as exc:
                raise self.error(action, exc, "check the user name and password in the URL") from None
            except _TRANSIENT as exc:
                now = loop.time()
                if deadline is None:
                    deadline = now + self.retry_for
                if now + pause > deadline or self._closed:
                    where = _netloc(self.host, self.port)
                    hint = f"retried for {self.retry_for:g} s; is redis-server running at {where}?"
                    raise self.error(action, exc, hint) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
            except redis_errors.RedisError as exc:
                raise self.error(action, exc) from None

    def error(self, action: str, exc: BaseException, hint: str = "") -> BrokerError:
        why = self.scrub(str(exc) or type(exc).__name__)
        return broker_error(self.url, action, RuntimeError(f"{why}; {hint}" if hint else why))

    def scrub(self, text: str) -> str:
        """`text` without the password, in case a driver message ever quotes it."""
        return text.replace(self._password, "**********") if self._password else text

    # -- publishing --------------------------------------------------------------------

    def key(self, topic: str) -> str:
        return self.prefix + topic

    def xadd(self, topic: str, headers: dict[str, str], body: bytes) -> tuple[Any, ...]:
        """The XADD of one event: its stream trimmed to about `maxlen` entries as it grows."""
        return (
            "XADD",
            self.key(topic),
            "MAXLEN",
            "~",
            self.maxlen,
            "*",
            HEADERS,
            encode_headers(headers),
            BODY,
            body,
        )

    async def _publish(self, topic: str, body: bytes, headers: dict[str, str]) -> None:
        command = self.xadd(topic, headers, body)
        xadds = self._xadds
        if xadds is None:
            raise BrokerError(f"broker {self.url}: not connected", id="microweave.broker")
        try:
            await xadds.submit(command)
        except Exception:  # the slow path: retried while Redis is away, else a BrokerError
            await self.call(f"publish to {topic}", lambda: xadds.submit(command))

    async def _send_xadds(self, batch: list[tuple[Any, ...]]) -> list[Any]:
        if len(batch) == 1:
            return [await self.client.execute_command(*batch[0])]
        pipe = self.client.pipeline(transaction=False)
        for command in batch:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    # -- subscribing -------------------------------------------------------------------

    async def _subscribe(self, sub: Subscription) -> None:
        from ._consumer import Consumer

        name = f"{self.consumer_base}:{next(self._consumer_names)}"
        group = sub.queue if sub.queue is not None else BROADCAST_GROUP + name
        consumer = Consumer(self, sub, key=self.key(sub.topic), group=group, name=name)
        await consumer.start()
        sub.state = consumer

    async def _unsubscribe(self, sub: Subscription) -> None:
        consumer: Consumer = sub.state
        await consumer.stop_reading()

    async def _after_unsubscribe(self, sub: Subscription) -> None:
        consumer: Consumer = sub.state
        await consumer.release()


def _host_port(address: str) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{address}")
        host, port = parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigurationError(f"redis://{address}: not a host:port address") from None
    return host, port


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
