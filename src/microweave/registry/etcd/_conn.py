"""One gRPC channel to an etcd cluster: options from the URL, TLS, auth token, bounded calls.

The messages and stubs are aetcd's (`aetcd.rpc`, generated from etcd's API); the channel,
authentication and error handling are ours, because aetcd's `Client` opens only plaintext
channels to one host, fetches its auth token once (etcd forgets simple tokens when it
restarts), and opens a new keep-alive stream per lease refresh. See docs/registry/etcd.md.

Every failure a caller sees is a `RegistryError` naming the registry by its URL without
credentials, and saying what to check. Calls log nothing: their caller (the heartbeat, the
cache) logs its own state changes, once each; only background loops (watches) keep an `Outage`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import grpc
from aetcd import rpc  # type: ignore[import-untyped]

from ..._backends import BackendURL
from ...errors import ConfigurationError, RegistryError
from ..memory import WATCH_BUFFER
from ..url_options import unknown_options

__all__ = ["REGISTRY_OPTIONS", "Connection", "Options", "rpc"]

T = TypeVar("T")

DEFAULT_PREFIX = "/micro/registry"
DEFAULT_PORT = 2379
CALL_TIMEOUT = 5.0  # seconds one unary call may take before the registry counts as unreachable
MAX_MESSAGE = 64 << 20  # largest response accepted (a lookup of thousands of nodes fits)
#: the options a registry URL takes (a config source takes others: see `Options.parse`)
REGISTRY_OPTIONS = frozenset(
    {"ttl", "username", "password", "tls", "ca", "cert", "key", "timeout", "watch_buffer"}
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Options:
    """What the URL (and keyword arguments, which win) say; `public` is safe to show."""

    hosts: tuple[str, ...]
    prefix: str
    ttl: float | None
    username: str | None
    password: str | None = field(repr=False)  # never in a repr, a traceback's locals, a log
    tls: bool
    ca: str | None
    cert: str | None
    key: str | None
    timeout: float
    watch_buffer: int

    @property
    def public(self) -> str:
        return f"etcd://{','.join(self.hosts)}{self.prefix}"

    @classmethod
    def parse(
        cls,
        url: BackendURL,
        kwargs: dict[str, Any],
        *,
        default_prefix: str = DEFAULT_PREFIX,
        known: frozenset[str] = REGISTRY_OPTIONS,
    ) -> Options:
        """The options of a URL. `default_prefix` and `known` (the option names accepted;
        others are refused) let another user of the connection, the etcd config source, take
        its own; options it knows that are not fields here stay in the URL for it to read."""
        # `user:password@host` works as username= and password= (which win); it is never shown
        userinfo = {h.rpartition("@")[0] for h in url.hosts if "@" in h}
        bare = [h.rpartition("@")[2] for h in url.hosts]
        hosts = tuple(_host(h) for h in bare) or (f"127.0.0.1:{DEFAULT_PORT}",)
        prefix = "/" + url.path.strip("/") if url.path.strip("/") else default_prefix
        public = f"etcd://{','.join(hosts)}{prefix}"
        credentials = _credentials(public, userinfo)
        query = {**credentials, **url.query, **{k: v for k, v in kwargs.items() if v is not None}}
        unknown = unknown_options(query, known)
        for host in hosts:
            _check_port(public, host)
        _target(hosts)  # several endpoints must be addresses gRPC can take as one list
        if unknown:
            raise ConfigurationError(
                f"{public}: unknown option(s) {unknown}; known: {', '.join(sorted(known))}"
            )
        username, password = query.get("username"), query.get("password")
        if bool(username) != bool(password):
            raise ConfigurationError(f"{public}: give both username and password, or neither")
        ca, cert, key = (str(query[k]) if query.get(k) else None for k in ("ca", "cert", "key"))
        if bool(cert) != bool(key):
            raise ConfigurationError(f"{public}: a client certificate needs both cert= and key=")
        tls = _flag(public, "tls", query.get("tls", "")) or bool(ca or cert)
        return cls(
            hosts=hosts,
            prefix=prefix,
            ttl=_number(public, "ttl", query.get("ttl"), None),
            username=str(username) if username else None,
            password=str(password) if password else None,
            tls=tls,
            ca=ca,
            cert=cert,
            key=key,
            timeout=_number(public, "timeout", query.get("timeout"), CALL_TIMEOUT) or CALL_TIMEOUT,
            watch_buffer=max(
                1, int(_number(public, "watch_buffer", query.get("watch_buffer"), WATCH_BUFFER) or 1)
            ),
        )


def _host(host: str) -> str:
    if host.startswith("["):  # [::1]:2379 or [::1]
        return host if "]:" in host else f"{host}:{DEFAULT_PORT}"
    return host if ":" in host else f"{host}:{DEFAULT_PORT}"


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _credentials(public: str, userinfo: set[str]) -> dict[str, str]:
    """username and password from the URL's `user:password@`, percent-decoded."""
    if not userinfo:
        return {}
    if len(userinfo) > 1:
        raise ConfigurationError(f"{public}: the endpoints name different users; give one")
    user, sep, password = next(iter(userinfo)).partition(":")
    if not sep:
        raise ConfigurationError(f"{public}: give both username and password, or neither")
    return {"username": unquote(user), "password": unquote(password)}


def _check_port(public: str, host: str) -> None:
    name, _, port = host.rpartition(":")
    if not name.strip("[]") or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigurationError(
            f"{public}: {host!r} is not host:port with a port from 1 to 65535"
            f" (etcd's client port is {DEFAULT_PORT})"
        )


def _flag(public: str, name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigurationError(f"{public}: {name}={value!r} is not true or false")


def _number(public: str, name: str, value: object, default: float | None) -> float | None:
    if value is None or value == "":
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{public}: {name}={value!r} is not a positive number")
    return number


def _target(hosts: tuple[str, ...]) -> str:
    """The gRPC target: several IP endpoints become one address list gRPC fails over across."""
    if len(hosts) == 1:
        return hosts[0]
    names = [h.rsplit(":", 1)[0].strip("[]") for h in hosts]
    try:
        families = {ipaddress.ip_address(n).version for n in names}
    except ValueError:  # gRPC resolves one host name per target, not a list of them
        raise ConfigurationError(
            f"etcd://{','.join(hosts)}: several endpoints must be IP addresses (or give one host name)"
        ) from None
    return f"{'ipv4' if families == {4} else 'ipv6'}:{','.join(hosts)}"


class Connection:
    """The channel, the auth token and the call wrapper shared by everything of one registry."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.public = options.public
        self._channel: grpc.aio.Channel | None = None
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        self.kv: Any = None
        self.lease: Any = None
        self.watch: Any = None
        self.closed = False

    def open(self) -> grpc.aio.Channel:
        """The channel, created on first use (gRPC connects, and reconnects, by itself); after
        aclose() an error, not a new channel nobody would close."""
        if self.closed:
            raise RegistryError(f"{self.public} is closed; open a new registry")
        if self._channel is None:
            o = self.options
            target = _target(o.hosts)
            channel_options: list[tuple[str, Any]] = [
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                # come back quickly when etcd does (gRPC's default backoff grows to 2 minutes)
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                # what gRPC calls the minimum backoff is how long one connection attempt may
                # take (TCP, TLS, HTTP/2 settings): several round trips to a far etcd
                ("grpc.min_reconnect_backoff_ms", int(o.timeout * 1000)),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
            if o.tls:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=self._read("ca", o.ca),
                    private_key=self._read("key", o.key),
                    certificate_chain=self._read("cert", o.cert),
                )
                self._channel = grpc.aio.secure_channel(target, credentials, options=channel_options)
            else:
                self._channel = grpc.aio.insecure_channel(target, options=channel_options)
            self.kv = rpc.KVStub(self._channel)
            self.lease = rpc.LeaseStub(self._channel)
            self.watch = rpc.WatchStub(self._channel)
        return self._channel

    def _read(self, what: str, path: str | None) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"{self.public}: cannot read the TLS {what} file {path}: {exc.strerror}"
            ) from None

    async def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The call metadata: the auth token, fetched once and again after etcd forgot it."""
        self.open()
        if self.options.username is None:
            return None
        if self._token is None:
            async with self._auth_lock:
                if self._token is None:
                    self._token = await self._authenticate()
        return (("token", self._token),)

    async def _authenticate(self) -> str:
        assert self._channel is not None
        request = rpc.AuthenticateRequest(name=self.options.username, password=self.options.password)
        try:
            reply = await rpc.AuthStub(self._channel).Authenticate(request, timeout=self.options.timeout)
        except grpc.aio.AioRpcError as exc:
            raise self.error("authenticating", exc) from None
        return str(reply.token)

    def forget_token(self) -> None:
        self._token = None

    async def call(self, what: str, method: Callable[..., Awaitable[T]], request: Any) -> T:
        """One unary call with a deadline; a stale token is renewed once; errors named."""
        for attempt in (1, 2):
            metadata = await self.metadata()
            try:
                reply = await method(request, timeout=self.options.timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if attempt == 1 and self.stale_token(exc):
                    self.forget_token()
                    continue
                # no log line here: the caller gets the error and logs its state changes
                raise self.error(what, exc) from None
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def stale_token(self, exc: grpc.aio.AioRpcError) -> bool:
        """etcd rejected the token (it restarted, or the token timed out): authenticate again."""
        return self.options.username is not None and exc.code() == grpc.StatusCode.UNAUTHENTICATED

    def error(self, what: str, exc: grpc.aio.AioRpcError) -> RegistryError:
        """The error to raise, coded so callers can tell waiting (503) from fixing (401, 403).

        A refused watch reaches us as its cancel reason (etcd's own status inside the text),
        so the text decides as much as the code."""
        code, detail = exc.code(), (exc.details() or "").strip()
        text = detail.lower()
        status = 503
        if "user name is empty" in text:
            hint, status = "etcd requires authentication: give username and password", 401
        elif "authentication failed" in text or "invalid user" in text or "auth token" in text:
            hint, status = "check the username and password given for it", 401
        elif code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in text:
            status = 403
            hint = f"the etcd user needs read/write permission on the prefix {self.options.prefix}"
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in text:
            # kept 503: a cache keeps serving what it has while someone cleans the prefix up
            hint = (
                f"the answer is larger than an etcd response may be ({_size(MAX_MESSAGE)}): "
                f"the prefix {self.options.prefix} holds more, or bigger, values than belong "
                "there (records of nodes, or settings); remove what does not belong there"
            )
        elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            hint = "is etcd running there and reachable? (with TLS: tls=true and the right CA)"
        else:
            hint = "see etcd's log"
        return RegistryError(
            f"{self.public}: {what} failed ({code.name}: {detail[:200]}); {hint}", code=status
        )

    async def aclose(self) -> None:
        self.closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    def __repr__(self) -> str:
        return f"<etcd connection {self.public}>"
