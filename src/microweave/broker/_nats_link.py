"""What the two NATS brokers share: their URL, and one nats-py connection kept up for them.

Connecting is bounded: a few attempts over every server of the URL, with backoff, within
`connect_timeout` seconds in total; then `BrokerError` naming the URL (never its credentials)
and what to check. Once connected, nats-py reconnects by itself, forever, and replays every
subscription it holds (core NATS subscriptions and the JetStream pull inboxes alike); the
brokers hear of each reconnect (`on_reconnect`) to re-check what the server may have lost.
The registry's NATS link (registry/nats/link.py) supervises reconnects itself because it must
re-announce its nodes; a broker only needs its subscriptions back, which nats-py does.

nats-py buffers what is published while it reconnects, up to `pending_size` bytes (then
publish raises), and drops messages for a subscription whose pending queue is full (a slow
consumer): the brokers bound both and log the drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from ..errors import BrokerError
from ..registry.outage import Backoff, Outage, _describe
from ..registry.url_options import typed_options
from .envelope import decode

if TYPE_CHECKING:
    from .._backends import BackendURL

__all__ = ["DEFAULT_SERVER", "NatsLink", "NatsURL", "parse_nats_url", "unwrap"]

log = logging.getLogger("microweave.broker")

DEFAULT_SERVER = "127.0.0.1:4222"
#: seconds one connect attempt may take per server
ATTEMPT_TIMEOUT = 2
#: seconds between client PINGs: a connection that silently died is noticed within ~3 of these
PING_INTERVAL = 10
#: seconds nats-py waits before trying a server again while reconnecting
RECONNECT_WAIT = 0.25
#: bytes nats-py holds for the server while reconnecting (then publish raises): bounded
PENDING_SIZE = 8 * 1024 * 1024


def unwrap(msg: Msg) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a delivered message: go-micro's envelope opened; anything else (a
    plain NATS publisher's payload, with its NATS headers if any) as it came. Any JSON object
    decodes as an envelope with neither headers nor body (its fields are optional): such a
    one is a plain payload too, since go-micro never sends an envelope without headers."""
    headers, body, envelope = decode(msg.data)
    if envelope and (body or headers):
        return headers, body
    return msg.headers or {}, msg.data


class NatsURL:
    """A NATS broker URL taken apart: servers, credentials, and the URL to show (without them)."""

    __slots__ = ("options", "password", "public", "servers", "token", "user")

    def __init__(
        self,
        scheme: str,
        hosts: list[str],
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        addresses = [h.removeprefix("nats://") for h in hosts] or [DEFAULT_SERVER]
        self.public = f"{scheme}://{','.join(addresses)}"
        self.servers = [f"nats://{a}" for a in addresses]
        self.user = user
        self.password = password
        self.token = token
        self.options = options or {}

    def __repr__(self) -> str:
        return f"NatsURL({self.public!r})"


def parse_nats_url(url: BackendURL, *, types: dict[str, type], given: dict[str, Any]) -> NatsURL:
    """Hosts and credentials (`user:password@host` or `token@host`, or `?user=&password=` /
    `?token=`) of a broker URL, and its options converted by `types` (keyword arguments in
    `given` win); an unknown option is a ConfigurationError naming the known ones."""
    query = dict(url.query)
    given = dict(given)
    hosts: list[str] = []
    for host in url.hosts:
        userinfo, at, address = host.rpartition("@")
        if at:  # nats://user:password@host:port, as the NATS tools write it
            user, colon, password = userinfo.partition(":")
            if colon:
                query.setdefault("user", unquote(user))
                query.setdefault("password", unquote(password))
            else:
                query.setdefault("token", unquote(user))
        hosts.append(address)
    public = NatsURL(url.scheme, hosts).public
    auth = {}
    for key in ("user", "password", "token"):  # a keyword argument wins over the URL
        from_url = query.pop(key, None)
        auth[key] = given.pop(key, None) or from_url
    options = typed_options(public, query, given, {**types, **dict.fromkeys(auth, str)})
    return NatsURL(url.scheme, hosts, **auth, options=options)


class NatsLink:
    """One broker's nats-py connection. `on_reconnect` callbacks run after each reconnect;
    `on_slow(subscription)` after each message nats-py dropped for a subscription that did not keep up."""

    def __init__(self, url: NatsURL, *, connect_timeout: float, name: str, hint: str = "") -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.name = name
        self.hint = hint  # what else to check when connecting fails (JetStream: `-js`)
        self.nc: Client | None = None
        self.on_reconnect: list[Callable[[], None]] = []
        self.on_slow: Callable[[NatsSubscription], None] | None = None
        self.outage = Outage(f"{url.public} (NATS broker)", logger=log)
        self._attempt_errors: list[BaseException] = []

    @property
    def up(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def client(self) -> Client:
        """The connection (it may be reconnecting: nats-py buffers a publish meanwhile)."""
        nc = self.nc
        if nc is None or nc.is_closed:
            raise BrokerError(f"broker {self.url.public} is not connected", id="microweave.broker")
        return nc

    async def open(self, check: Callable[[Client], Any] | None = None) -> Client:
        """Connect within `connect_timeout` seconds (several attempts, backoff between them);
        `check(nc)`, awaited, must pass too (JetStream: the server has it on)."""
        started = time.monotonic()
        deadline = started + self.connect_timeout
        backoff = Backoff(first=0.1, cap=1.0)
        attempts = 0
        why: BaseException | None = None
        while True:
            attempts += 1
            nc = Client()
            self._attempt_errors = []
            try:
                async with asyncio.timeout(max(0.5, deadline - time.monotonic()) + ATTEMPT_TIMEOUT):
                    await self._connect(nc)
                    if check is not None:
                        await check(nc)
            except (OSError, TimeoutError, nats.errors.Error, BrokerError) as exc:
                why = (
                    self._attempt_errors[-1]
                    if self._attempt_errors and not isinstance(exc, BrokerError)
                    else exc
                )
                with contextlib.suppress(Exception):
                    await nc.close()
            else:
                # connected: from now on nats-py reconnects by itself, forever (the initial
                # attempts were bounded so that a wrong URL fails fast)
                nc.options["max_reconnect_attempts"] = -1
                nc.options["reconnect_time_wait"] = RECONNECT_WAIT
                self.nc = nc
                return nc
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(backoff.next(), left))
        took = time.monotonic() - started
        detail = why.detail if isinstance(why, BrokerError) else _describe(why) if why else "unknown"
        raise BrokerError(
            f"broker {self.url.public}: cannot connect ({detail}) after {attempts} attempt(s) in "
            f"{took:.1f} s; is nats-server running there{self.hint}, and are the URL's credentials right?",
            id="microweave.broker",
        )

    async def _connect(self, nc: Client) -> None:
        url = self.url
        auth = {"user": url.user, "password": url.password, "token": url.token}
        # max_reconnect_attempts=1 with no wait: every server is tried twice, then nats-py gives up
        await nc.connect(
            servers=url.servers,
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=ATTEMPT_TIMEOUT,
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=2,
            pending_size=PENDING_SIZE,
            error_cb=self._error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            **{k: v for k, v in auth.items() if v},  # type: ignore[arg-type]
        )

    async def _error(self, exc: Exception) -> None:
        # called by nats-py's reading loop: keep it short, never block
        if isinstance(exc, nats.errors.SlowConsumerError):
            if self.on_slow is not None:
                self.on_slow(exc.sub)
            return
        if self.nc is None:
            self._attempt_errors.append(exc)
        log.debug("%s: %s", self.url.public, _describe(exc))

    async def _disconnected(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            self.outage.failed(ConnectionError("connection lost; nats-py is reconnecting"))

    async def _reconnected(self) -> None:
        self.outage.recovered()
        for callback in list(self.on_reconnect):
            callback()

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        if nc is None:
            return
        with contextlib.suppress(Exception):
            if nc.is_connected:
                await nc.flush(timeout=2)  # what publish() handed over goes out before we leave
        with contextlib.suppress(Exception):
            await nc.close()
