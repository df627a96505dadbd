"""`consul://host:port/prefix`: settings stored as Consul KV keys under a prefix, watched.

    consul://127.0.0.1:8500/micro/config?token=&timeout=5&wait=30&max_response=&optional=

`<prefix>/db/port` is the key `db.port` (a "text" item: a JSON object, array or quoted string
is decoded, anything else stays text for typed reads to convert); the key `<prefix>` itself
(or `<prefix>/`) holds a document (YAML, which reads JSON too) at the root. "Folder" keys (a
name ending in '/', as Consul's UI makes them) with no value are no settings; other keys that
cannot be a dotted key (an empty level, a '.' in a level) are ignored, and a read says how
many. The prefix defaults to `micro/config`.

The HTTP client is the Consul registry's (`registry/consul/agent.py`): bounded connection
pools, retries of an unreachable agent, the ACL token only in the `X-Consul-Token` header
(never in a URL, message or repr), every answer read up to `max_response` bytes. The token is
`token=` (a keyword argument wins over the URL), else `CONSUL_HTTP_TOKEN`.

A read is `GET /v1/kv/<prefix>?recurse` (404: nothing there yet) and remembers the answer's
`X-Consul-Index`. The watch is a blocking query from that index: Consul answers when the
prefix changes (or after `wait`), with everything under it, which becomes the next snapshot.
As Consul's documentation asks, an index that goes backwards (the agent lost its state) is
reset to 0, which reads without blocking, and queries that come back without the index
moving are spaced out, so a misbehaving agent cannot make a busy loop. While the agent is
away the watch backs off (`registry.outage`: one warning, one line when it is back) and keeps
the last values; back, it reads again and yields a fresh snapshot.

What a peer (anyone who can write under the prefix) can make us hold is bounded: an answer of
at most `max_response` bytes (default 16 MiB) and MAX_KEYS keys; past either, the source
reports itself unavailable until the prefix is cleaned up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import quote

import msgspec

from ..._backends import BackendURL, environ
from ...errors import ConfigurationError, RegistryError, Unavailable
from ...registry.consul.agent import Agent
from ...registry.outage import Backoff, Outage
from ...registry.url_options import typed_options
from .. import Item, Snapshot, Source

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "MAX_KEYS", "ConsulSource"]

log = logging.getLogger("microweave.config")

DEFAULT_PORT: Final = 8500
DEFAULT_PREFIX: Final = "micro/config"
MAX_KEYS: Final = 10_000
#: blocking queries that come back sooner than this without the index moving are spaced out
MIN_QUERY_INTERVAL: Final = 0.05
_OPTIONS: Final[dict[str, type]] = {"timeout": float, "wait": float, "max_response": int, "retries": int}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class _Entry(msgspec.Struct):
    Key: str
    Value: str | None = None


_entries = msgspec.json.Decoder(list[_Entry])


class ConsulSource(Source):
    scheme = "consul"
    writable = True
    interpolates = False  # a shared engine: its writers must not read our environment

    def __init__(
        self,
        address: str = f"127.0.0.1:{DEFAULT_PORT}",
        prefix: str = DEFAULT_PREFIX,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        wait: float = 30.0,
        max_response: int = 16 << 20,
        retries: int = 2,
        optional: bool = False,
    ) -> None:
        _, at, address = address.rpartition("@")
        host, sep, port = address.rpartition(":")
        if not sep:
            host, port = address, str(DEFAULT_PORT)
        prefix = prefix.strip("/") or DEFAULT_PREFIX
        self.url = f"consul://{host}:{port}/{prefix}"  # never the token
        if at:
            raise ConfigurationError(
                f"{self.url}: credentials in the address are not read; give the ACL token as"
                " ?token= or CONSUL_HTTP_TOKEN"
            )
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"{self.url}: the address must be host:port (a port from 1 to 65535)")
        if any(not part or part in (".", "..") for part in prefix.split("/")):
            raise ConfigurationError(f"{self.url}: the prefix has an empty, '.' or '..' level")
        for name, value, low, high in (
            ("timeout", timeout, 0.001, 3600.0),
            ("wait", wait, 0.001, 600.0),  # Consul caps a blocking query's wait at 10 minutes
            ("max_response", max_response, 1024, 1 << 30),
            ("retries", retries, 0, 100),
        ):
            if not low <= value <= high:
                raise ConfigurationError(f"{self.url}: {name}={value} is outside [{low}, {high}]")
        self.prefix = prefix
        self.wait = wait
        self.optional = optional
        if token is None:
            token = environ().get("CONSUL_HTTP_TOKEN") or None
        self._agent = Agent(
            self.url,
            f"http://{host}:{port}",
            token=token or None,
            timeout=timeout,
            retries=retries,
            max_response=max_response,
            max_watch_connections=2,
            outage=Outage(f"config {self.url} (Consul agent)", logger=log),
        )
        #: the X-Consul-Index the last snapshot is current at (0: none yet)
        self.index = 0
        #: blocking queries sent (a test counts them: no busy loop)
        self.queries = 0
        self._warned = False  # an empty prefix the token may not read: said once
        self._last_query = 0.0  # when the last blocking query began (monotonic)
        self._resetting = False  # the last query reset the index
        self._resets = Backoff(MIN_QUERY_INTERVAL, 5.0)

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> ConsulSource:
        """`kwargs` (token, timeout, wait, max_response, retries, optional) win over the URL's
        query; pass a token this way to keep it out of URLs and process lists."""
        address = url.hosts[0] if url.hosts else f"127.0.0.1:{DEFAULT_PORT}"
        public = f"consul://{address.rpartition('@')[2]}{url.path}"
        if len(url.hosts) > 1:
            raise ConfigurationError(f"{public}: consul:// takes one agent address, not a list")
        kwargs = typed_options(public, url.query, kwargs, {**_OPTIONS, "token": str, "optional": str})
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs["optional"] = _flag(public, kwargs.get("optional", False))
        return cls(address, url.path or DEFAULT_PREFIX, **kwargs)

    # -- keys -------------------------------------------------------------------------------

    def _dotted(self, key: str) -> str | None:
        """The dotted key a Consul key stands for; None for one that is not a setting."""
        if key == self.prefix or key == self.prefix + "/":
            return ""
        if not key.startswith(self.prefix + "/"):
            return None
        parts = key[len(self.prefix) + 1 :].split("/")
        if not all(parts) or any("." in part or not part.isprintable() for part in parts):
            return None  # a control character would reach log lines and terminals as it is
        return ".".join(parts)

    def _path(self, key: str) -> str:
        if key == "":
            name = self.prefix
        else:
            parts = key.split(".")
            if not all(parts) or any("/" in part for part in parts):
                raise ConfigurationError(
                    f"{self.url}: {key!r} is not a dotted key of names without '/' (as in db.port)"
                )
            name = f"{self.prefix}/{'/'.join(parts)}"
        return "/v1/kv/" + quote(name, safe="/")

    def _snapshot(self, body: bytes) -> Snapshot:
        try:
            entries = _entries.decode(body) if body.strip() else []
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Unavailable(f"{self.url}: unexpected answer reading the prefix: {exc}") from None
        if len(entries) > MAX_KEYS:
            raise Unavailable(
                f"{self.url}: the prefix holds more than a config source takes ({MAX_KEYS} keys);"
                " remove what does not belong there"
            )
        items: Snapshot = {}
        ignored = 0
        for entry in entries:
            try:
                value = base64.b64decode(entry.Value, validate=True) if entry.Value else b""
            except (binascii.Error, ValueError):
                raise Unavailable(f"{self.url}: {entry.Key[:200]!r} came back not base64-encoded") from None
            dotted = self._dotted(entry.Key)
            if dotted is None:
                folder = entry.Key.endswith("/") and not value
                if entry.Key.startswith(self.prefix + "/") and not folder:
                    ignored += 1
            elif dotted == "":
                # the exact prefix key wins over `<prefix>/`; an empty one is a folder marker
                if value.strip() and (entry.Key == self.prefix or "" not in items):
                    items[""] = Item(value, "yaml")
            else:
                items[dotted] = Item(value, "text")
        if ignored:
            log.warning(
                "config %s: ignored %d key(s) under the prefix that name no setting"
                " (an empty level, a '.' in a name, a control character)",
                self.url,
                ignored,
            )
        return items

    # -- read -------------------------------------------------------------------------------

    async def read(self) -> Snapshot:
        reply = await self._call(
            "GET", self._path(""), "read the config", params={"recurse": ""}, ok={200, 404}
        )
        snapshot = self._snapshot(reply.body if reply.status == 200 else b"")
        self.index = max(reply.index, 1)  # Consul's docs: an index of 0 must not be reused
        if reply.status == 404 and not self._warned:
            await self._check_access()
        return snapshot

    async def _check_access(self) -> None:
        """Consul drops keys a token may not read from a listing without a word, so a
        forgotten or too weak token reads as an empty prefix: when the prefix looks empty,
        ask for its own key, which says 403 instead (logged once: not an error, as a policy
        may grant `<prefix>/` alone and the prefix may be empty indeed)."""
        try:
            await self._call("GET", self._path(""), "read the prefix key", ok={200, 404})
        except Unavailable as exc:
            if exc.code not in (401, 403):
                raise
            self._warned = True
            log.warning(
                "config %s: nothing under the prefix that this ACL token may read (the agent"
                " refuses it the prefix key: %s); check the token (?token= or CONSUL_HTTP_TOKEN)",
                self.url,
                exc.code,
            )

    async def _call(
        self,
        method: str,
        api: str,
        what: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        ok: set[int] | None = None,
        wait: float | None = None,
    ) -> Any:
        try:
            return await self._agent.call(
                method,
                api,
                what=what,
                params=params,
                body=body,
                ok=frozenset(ok or {200}),
                wait=wait,
                retries=0 if wait else None,
            )
        except RegistryError as exc:
            raise Unavailable(exc.detail, code=exc.code) from None

    # -- write ------------------------------------------------------------------------------

    async def set(self, key: str, value: str) -> None:
        reply = await self._call("PUT", self._path(key), f"write {key or '(document)'}", body=value.encode())
        if reply.body.strip() != b"true":
            raise Unavailable(f"{self.url}: Consul did not store {key or '(document)'}")

    async def delete(self, key: str) -> None:
        await self._call("DELETE", self._path(key), f"delete {key or '(document)'}")

    # -- watch ------------------------------------------------------------------------------

    def watch(self) -> AsyncIterator[Snapshot]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[Snapshot]:
        agent = self._agent.outage  # unreachable: the agent's own Outage has said so
        refused = Outage(f"config {self.url} watch", logger=log)  # reachable, but no snapshot
        reread = False
        while True:
            try:
                if reread:
                    snapshot = await self.read()
                    reread = False
                    refused.recovered()
                    yield snapshot
                snapshot = await self._next()
                refused.recovered()
                yield snapshot
            except Unavailable as exc:
                reread = True
                await asyncio.sleep(agent.backoff.next() if agent.down else refused.failed(exc))

    async def _next(self) -> Snapshot:
        """The snapshot after the next blocking query that moves the index.

        Queries begin at least MIN_QUERY_INTERVAL apart whatever comes back: an agent that
        answers at once (no index, an index moving for nothing) cannot drive a busy loop, and
        a prefix under churn is read at most that often, each answer holding all the changes
        since the last. An index that goes backwards again right after a reset (a broken agent,
        not one that came back empty) is reset with a growing delay."""
        while True:
            gap = self._last_query + MIN_QUERY_INTERVAL - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            index = self.index
            self._last_query = time.monotonic()
            self.queries += 1
            params = {"recurse": "", "index": str(index), "wait": f"{round(self.wait * 1000)}ms"}
            reply = await self._call(
                "GET", self._path(""), "watch the config", params=params, ok={200, 404}, wait=self.wait
            )
            snapshot = self._snapshot(reply.body if reply.status == 200 else b"")
            if reply.index < index:
                # the agent lost its state (or another server answered): read from scratch
                self.index = 0
                if self._resetting:
                    await asyncio.sleep(self._resets.next())
                self._resetting = True
                return await self.read()
            self._resetting = False
            self._resets.reset()
            if reply.index > index:
                self.index = reply.index
                return snapshot

    async def aclose(self) -> None:
        await self._agent.aclose()


def _flag(public: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigurationError(f"{public}: optional={value!r} is not true or false")
