"""`nats://host:port[,host:port]?ttl=&user=&password=&token=&query_timeout=&peer_ttl=`:
go-micro's NATS registry, with TTL expiry for watchers and the NATS micro services protocol on top.

NATS stores nothing. A node is registered as long as the process that registered it answers
`micro.nats.query` for it; a lookup asks everyone and gathers replies for `query_timeout`
seconds (go-micro waits 100 ms); the nodes registered through the registry that looks up count
without waiting for their reply. Registering announces on `micro.nats.watch`; each heartbeat
re-announces, and watchers count a node dead when it stays silent past its TTL (see watch.py).
The registering side stops answering for a record whose TTL ran out without a heartbeat, so
lookups and watchers agree on what "expired" means. A process that dies takes its connection,
and so its answers, with it: lookups no longer see its nodes at once.

`ttl` in the URL is the TTL of a registration made without one (as on every backend; default
none). `peer_ttl` (default 90 s, go-micro's DefaultRegisterTTL) is how long a watcher keeps a
node whose announces carry no TTL of their own: a go-micro peer's. Ours always carry theirs.
Each registered node also answers `$SRV.PING|INFO|STATS` (srv.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..._backends import BackendURL
from ...errors import ConfigurationError, RegistryError
from .. import Registry, Service, Watcher, merge_nodes
from . import srv
from .link import Link
from .watch import NatsWatcher
from .wire import (
    MAX_MESSAGE,
    QUERY,
    WATCH,
    decode_announce,
    decode_query,
    decode_service,
    encode_announce,
    encode_query,
    encode_service,
)

__all__ = ["NatsRegistry"]

DEFAULT_SERVER = "127.0.0.1:4222"
PEER_TTL = 90.0  # go-micro's DefaultRegisterTTL: for announces that carry no TTL
QUERY_TIMEOUT = 0.25  # seconds a lookup gathers replies at most
QUIET = 0.02  # the shortest pause without a new reply that ends a lookup early, in seconds
WATCH_BUFFER = 10_000  # unread events one watcher holds before it is told to resync
MAX_REPLIES = 50_000  # replies one lookup keeps; the rest are dropped
SWEEP = 0.1  # seconds between watchers' expiry checks
_NUMBERS: dict[str, type] = {"ttl": float, "peer_ttl": float, "query_timeout": float, "watch_buffer": int}
_REPLIES = "replies"  # key of the lookups' inbox subscription
_PENDING = {"pending_msgs_limit": 65_536, "pending_bytes_limit": 64 * MAX_MESSAGE}


class _Registration:
    __slots__ = ("expires", "record", "reply", "started", "ttl")

    def __init__(self, record: Service, ttl: float | None, now: float, started: datetime) -> None:
        self.record = record
        self.ttl = ttl
        self.expires = now + ttl if ttl else None
        self.reply = encode_service(record, ttl)  # what a query is answered with, encoded once
        self.started = started

    def live(self, now: float) -> bool:
        return self.expires is None or now < self.expires


class NatsRegistry(Registry):
    scheme = "nats"
    #: services registered here count their calls per endpoint, for `$SRV.STATS`
    counts_calls = True

    def __init__(
        self,
        servers: list[str] | None = None,
        *,
        ttl: float | None = None,
        peer_ttl: float = PEER_TTL,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        query_timeout: float = QUERY_TIMEOUT,
        watch_buffer: int = WATCH_BUFFER,
        counts: Callable[[str], srv.EndpointCounts | None] | None = None,
    ) -> None:
        """`counts` gives a node's per-endpoint call counts for `$SRV.STATS` (default: what
        the node's server recorded in `microweave.server.stats`)."""
        if (ttl is not None and ttl <= 0) or peer_ttl <= 0 or query_timeout <= 0 or watch_buffer < 1:
            raise ConfigurationError(
                f"NATS registry: ttl ({ttl}), peer_ttl ({peer_ttl}) and query_timeout ({query_timeout}) "
                f"must be positive and watch_buffer ({watch_buffer}) at least 1"
            )
        hosts = servers or [DEFAULT_SERVER]
        self.url = "nats://" + ",".join(h.removeprefix("nats://") for h in hosts)
        self.ttl = ttl
        self.peer_ttl = peer_ttl
        self.query_timeout = query_timeout
        self.watch_buffer = watch_buffer
        if counts is None:
            from ...server.stats import counts as server_counts

            counts = server_counts
        self._counts = counts
        self.link = Link(
            self.url,
            [h if h.startswith("nats://") else f"nats://{h}" for h in hosts],
            on_connect=self._connected,
            user=user,
            password=password,
            token=token,
        )
        # service name -> node id -> what we answer for it: a query reads one service's nodes
        self._registrations: dict[str, dict[str, _Registration]] = {}
        # lookups in flight: reply token -> (replies, "a reply arrived"), all on one inbox
        self._pending: dict[str, tuple[list[bytes], asyncio.Event]] = {}
        self._inbox = ""
        self._tokens = itertools.count()
        self._watchers: set[NatsWatcher] = set()
        self._subs: dict[str, Subscription] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> NatsRegistry:
        query = dict(url.query)
        hosts = []
        for host in url.hosts:
            userinfo, at, address = host.rpartition("@")
            if at:  # nats://user:password@host:port, as the NATS tools write it
                user, _, password = userinfo.partition(":")
                query.setdefault("user", user) if password else query.setdefault("token", user)
                if password:
                    query.setdefault("password", password)
            hosts.append(address)
        for key in ("user", "password", "token"):
            if key in query:
                kwargs.setdefault(key, query.pop(key))
        for key, kind in _NUMBERS.items():
            if key not in query:
                continue
            text = query.pop(key)
            if key not in kwargs:  # a keyword argument wins over the URL
                try:
                    kwargs[key] = kind(text)
                except ValueError:
                    raise ConfigurationError(
                        f"{key}={text!r} in the NATS registry URL is not a number"
                    ) from None
        if query:
            known = ", ".join(f"{k}=" for k in ("user", "password", "token", *_NUMBERS))
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(query))} in the NATS registry URL; known: {known}"
            )
        return cls(hosts or None, **kwargs)

    def __repr__(self) -> str:
        return f"<NatsRegistry {self.url}>"

    # -- register --------------------------------------------------------------------------------

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        ttl = self.ttl if ttl is None else ttl
        nc = await self._client_unless_reconnecting()
        now, started = time.monotonic(), datetime.now(UTC)
        announces = []
        for node in service.nodes:
            one = service.with_nodes([node])
            nodes = self._registrations.setdefault(service.name, {})
            previous = nodes.get(node.id)
            fresh = previous is None or not previous.live(now)
            registration = _Registration(one, ttl, now, started if fresh else previous.started)  # type: ignore[union-attr]
            nodes[node.id] = registration
            action = "create" if fresh or previous.record == one else "update"  # type: ignore[union-attr]
            announces.append(encode_announce(action, one, ttl))
        if nc is None:  # NATS is away: answered and announced again once it is back
            return
        try:
            if await self._answering(nc):
                await nc.flush()  # a lookup made right after this returns must reach us
            for announce in announces:
                await nc.publish(WATCH, announce)
        except Exception as exc:
            raise self._error("register", service.name, exc) from None

    async def deregister(self, service: Service) -> None:
        gone = []
        for node in service.nodes:
            nodes = self._registrations.get(service.name, {})
            registration = nodes.pop(node.id, None)
            if not nodes:
                self._registrations.pop(service.name, None)
            gone.append(registration.record if registration else service.with_nodes([node]))
        nc = self.link.nc if self.link.up else None
        if nc is None:
            return  # nobody can ask us meanwhile; watchers drop the node after its TTL
        try:
            for record in gone:
                await nc.publish(WATCH, encode_announce("delete", record, None))
            if not self._registrations:
                await self._unsubscribe(QUERY)
                await self._unsubscribe(srv.SUBJECT)
            await nc.flush()  # a lookup made right after this returns must not see the node
        except Exception as exc:
            raise self._error("deregister", service.name, exc) from None

    async def _client_unless_reconnecting(self) -> Client | None:
        """The connection; None while a lost one is being re-made (registrations made then are
        announced on reconnect); RegistryError when NATS was never reached."""
        if self.link.up:
            return self.link.nc
        if self.link.connects:
            return None
        return await self.link.client()

    async def _answering(self, nc: Client) -> bool:
        """Subscribe to queries and control requests if not yet; True if it subscribed."""
        new = False
        if QUERY not in self._subs:
            self._subs[QUERY] = await nc.subscribe(QUERY, cb=self._on_query, **_PENDING)  # type: ignore[arg-type]
            new = True
        if srv.SUBJECT not in self._subs:
            self._subs[srv.SUBJECT] = await nc.subscribe(srv.SUBJECT, cb=self._on_control, **_PENDING)  # type: ignore[arg-type]
            new = True
        return new

    async def _on_query(self, msg: Msg) -> None:
        query = decode_query(msg.data)
        if query is None or not msg.reply:
            return
        action, name = query
        nc = msg._client
        for registration in self._live(None if action == "list" else name, time.monotonic()):
            await nc.publish(msg.reply, registration.reply)

    def _live(self, name: str | None, now: float) -> list[_Registration]:
        """The live registrations made here: of `name`, or all of them."""
        nodes = self._registrations.values() if name is None else [self._registrations.get(name, {})]
        return [r for by_id in nodes for r in by_id.values() if r.live(now)]

    async def _on_control(self, msg: Msg) -> None:
        if not msg.reply:
            return
        now = time.monotonic()
        listings = [srv.Listing(r.record, r.started) for r in self._live(None, now)]
        for reply in srv.answer(msg.subject, listings, self._counts):
            await msg._client.publish(msg.reply, reply)

    # -- look up ---------------------------------------------------------------------------------

    async def get_service(self, name: str) -> list[Service]:
        return merge_nodes(await self._query(name))

    async def list_services(self) -> list[Service]:
        by_name: dict[str, list[Service]] = {}
        for record in await self._query(None):
            by_name.setdefault(record.name, []).append(record)
        return [service for records in by_name.values() for service in merge_nodes(records)]

    async def _query(self, name: str | None) -> list[Service]:
        nc = await self.link.client()
        token = str(next(self._tokens))
        replies: list[bytes] = []
        arrived = asyncio.Event()
        self._pending[token] = (replies, arrived)
        try:
            inbox = await self._reply_inbox(nc)
            await nc.publish(QUERY, encode_query(name), reply=f"{inbox}.{token}")
            await self._gather(replies, arrived)
        except Exception as exc:
            raise self._error("look up", name or "all services", exc) from None
        finally:
            del self._pending[token]
        if not nc.is_connected:  # the window may have been cut short: do not pass it off as whole
            raise RegistryError(f"lost NATS at {self.url} during a lookup of {name or 'all services'}")
        now = time.monotonic()
        # this process's own nodes count even when its reply to itself missed the window (a busy
        # loop answers late); they come first, so their own record wins over the echo
        found = [(r.record, r.ttl) for r in self._live(name, now)]
        for data in replies:
            decoded = decode_service(data)
            if decoded is not None and (name is None or decoded[0].name == name):
                found.append(decoded)
        for record, ttl in found:
            for watcher in self._watchers:
                watcher.seed(record, ttl, now)
        return [record for record, _ in found]

    async def _reply_inbox(self, nc: Client) -> str:
        """One inbox for every lookup's replies (`<inbox>.<token>`): no subscription per lookup."""
        if _REPLIES not in self._subs:
            self._inbox = nc.new_inbox()
            self._subs[_REPLIES] = await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply, **_PENDING)  # type: ignore[arg-type]
        return self._inbox

    async def _on_reply(self, msg: Msg) -> None:
        pending = self._pending.get(msg.subject.rpartition(".")[2])
        if pending is not None and len(pending[0]) < MAX_REPLIES:  # late replies are dropped
            pending[0].append(msg.data)
            pending[1].set()

    async def _gather(self, replies: list[bytes], arrived: asyncio.Event) -> None:
        """Wait for replies: until `query_timeout`, or until a pause once some came. Every
        process gets the query at once and answers at once, so the pause that ends a lookup is
        three times what the first reply took (the machine's current pace), at least QUIET."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + self.query_timeout
        quiet = 0.0
        while (left := end - loop.time()) > 0:
            arrived.clear()
            try:
                async with asyncio.timeout(min(left, quiet) if quiet else left):
                    await arrived.wait()
            except TimeoutError:
                return
            if not quiet:
                quiet = max(QUIET, 3 * (loop.time() - start))

    # -- watch -----------------------------------------------------------------------------------

    async def watch(self, service: str | None = None) -> Watcher:
        nc = await self.link.client()
        watcher = NatsWatcher(
            service, buffer=self.watch_buffer, default_ttl=self.peer_ttl, on_close=self._unwatch
        )
        self._watchers.add(watcher)
        try:
            if WATCH not in self._subs:
                self._subs[WATCH] = await nc.subscribe(WATCH, cb=self._on_announce, **_PENDING)  # type: ignore[arg-type]
            await nc.flush()  # subscribed on the server before this returns
        except Exception as exc:
            self._watchers.discard(watcher)
            raise self._error("watch", service or "all services", exc) from None
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return watcher

    async def _on_announce(self, msg: Msg) -> None:
        announce = decode_announce(msg.data)
        if announce is None:
            return
        now = time.monotonic()
        for watcher in list(self._watchers):
            watcher.announce(announce, now, len(msg.data))

    async def _sweep(self) -> None:
        while self._watchers:
            await asyncio.sleep(SWEEP)
            if self.link.up:  # while NATS is away nothing is heard, so nothing expires
                now = time.monotonic()
                for watcher in list(self._watchers):
                    watcher.expire(now)

    async def _unwatch(self, watcher: NatsWatcher) -> None:
        self._watchers.discard(watcher)
        if not self._watchers and not self._closed:
            await self._unsubscribe(WATCH)

    # -- connection ------------------------------------------------------------------------------

    async def _connected(self, nc: Client, again: bool) -> None:
        """A new connection: re-create what the last one had, and say what we hold."""
        self._subs = {}
        if self._registrations:
            await self._answering(nc)
        if self._watchers:
            self._subs[WATCH] = await nc.subscribe(WATCH, cb=self._on_announce, **_PENDING)  # type: ignore[arg-type]
        await nc.flush()
        if again:
            for registration in [r for nodes in self._registrations.values() for r in nodes.values()]:
                await nc.publish(WATCH, encode_announce("create", registration.record, registration.ttl))
            now = time.monotonic()
            for watcher in list(self._watchers):
                watcher.reconnected(now)

    async def _unsubscribe(self, subject: str) -> None:
        sub = self._subs.pop(subject, None)
        if sub is not None and self.link.up:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _error(self, doing: str, what: str, exc: BaseException) -> RegistryError:
        if isinstance(exc, RegistryError):
            return exc
        return RegistryError(f"cannot {doing} {what} on NATS at {self.url}: {type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watcher in list(self._watchers):
            await watcher.aclose()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        self._subs = {}
        await self.link.aclose()
