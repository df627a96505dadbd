"""`etcd://host:port[,host:port]/prefix`: settings stored as etcd keys under a prefix, watched.

    etcd://10.0.0.1:2379/config/greeter?username=&password=&tls=&ca=&cert=&key=&timeout=&optional=

`<prefix>/db/port` is the key `db.port` (a "text" item: a JSON object, array or quoted string
is decoded, anything else stays text for typed reads to convert); the key `<prefix>` itself
(or `<prefix>/`) holds a document (YAML, which reads JSON too) at the root. Keys that cannot
be a dotted key (an empty level, a '.' in a level, not UTF-8) are not settings: they are
ignored, and a read says how many. The prefix defaults to `/micro/config`.

The channel, TLS, authentication (with the token renewed when etcd forgets it) and error
wording are the etcd registry's (`registry/etcd/_conn.py`): one place to get them right.
Reads are linearizable (not serializable, as registry lookups are): a value someone has just
written is what a service starting now must see. The watch is one prefix watch from the
revision after the last read; on a broken stream or a compaction it backs off
(`registry.outage`), reads everything again and watches from there, so nothing is missed and
the config keeps its last good values meanwhile.

What a peer (anyone who can write under the prefix) can make us hold is bounded: MAX_KEYS keys
(etcd's `limit` on the read) and MAX_BYTES of keys and values (the connection's largest
message); past either, the source reports itself unavailable until the prefix is cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from ..._backends import BackendURL
from ...errors import ConfigurationError, RegistryError, Unavailable
from ...registry.etcd._conn import MAX_MESSAGE, Connection, Options, _flag, rpc
from ...registry.etcd._watch import prefix_end
from ...registry.outage import Outage
from .. import Item, Snapshot, Source

__all__ = ["DEFAULT_PREFIX", "MAX_BYTES", "MAX_KEYS", "EtcdSource"]

log = logging.getLogger("microweave.config")

DEFAULT_PREFIX: Final = "/micro/config"
MAX_KEYS: Final = 10_000
MAX_BYTES: Final = MAX_MESSAGE
KNOWN: Final = frozenset({"username", "password", "tls", "ca", "cert", "key", "timeout", "optional"})
_PUT, _DELETE = 0, 1  # mvccpb.Event.EventType


class _Broken(Exception):
    """The watch stream ended or was cancelled."""


class _Compacted(Exception):
    """The revisions the watch was to start from were compacted away."""


class EtcdSource(Source):
    scheme = "etcd"
    writable = True
    interpolates = False  # a shared engine: its writers must not read our environment

    def __init__(self, options: Options, *, optional: bool = False) -> None:
        self.options = options
        self.url = options.public
        self.optional = optional
        self._conn = Connection(options)
        self._root = options.prefix.encode()
        self._dir = self._root + b"/"
        self._end = prefix_end(self._dir)  # [root, end): the root key and everything under root/
        self._kvs: dict[bytes, bytes] = {}  # etcd key -> value, of keys that are settings
        self._bytes = 0
        #: the revision the key map is current at
        self.revision = 0
        #: watch streams opened (one, plus one per outage or compaction)
        self.streams = 0

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> EtcdSource:
        """`kwargs` (username, password, tls, ca, cert, key, timeout, optional) win over the
        URL's query; pass secrets this way to keep them out of URLs and process lists."""
        options = Options.parse(url, kwargs, default_prefix=DEFAULT_PREFIX, known=KNOWN)
        optional = kwargs.get("optional")
        if optional is None:
            optional = url.query.get("optional", False)
        return cls(options, optional=_flag(options.public, "optional", optional))

    # -- keys -------------------------------------------------------------------------------

    def _dotted(self, key: bytes) -> str | None:
        """The dotted key an etcd key stands for; None for one that is not a setting."""
        if key == self._root or key == self._dir:
            return ""
        if not key.startswith(self._dir):
            return None  # `<prefix>-other`: inside the range, not under the prefix
        try:
            parts = key[len(self._dir) :].decode().split("/")
        except UnicodeDecodeError:
            return None
        if not all(parts) or any("." in part or not part.isprintable() for part in parts):
            return None  # a control character would reach log lines and terminals as it is
        return ".".join(parts)

    def _key(self, key: str) -> bytes:
        if key == "":
            return self._root
        parts = key.split(".")
        if not all(parts) or any("/" in part for part in parts):
            raise ConfigurationError(
                f"{self.url}: {key!r} is not a dotted key of names without '/' (as in db.port)"
            )
        return self._dir + "/".join(parts).encode()

    def _snapshot(self) -> Snapshot:
        items: Snapshot = {}
        for key, value in self._kvs.items():
            dotted = self._dotted(key)
            if dotted is None:
                continue
            if dotted == "":
                if not value.strip() or (key == self._dir and "" in items):
                    continue  # an empty document (a "folder" marker) is no document
                items[""] = Item(value, "yaml")
            else:
                items[dotted] = Item(value, "text")
        return items

    def _too_much(self) -> Unavailable:
        return Unavailable(
            f"{self.url}: the prefix holds more than a config source takes ({MAX_KEYS} keys,"
            f" {MAX_BYTES >> 20} MiB); remove what does not belong there"
        )

    # -- read -------------------------------------------------------------------------------

    async def read(self) -> Snapshot:
        request = rpc.RangeRequest(key=self._root, range_end=self._end, limit=MAX_KEYS)  # linearizable
        reply = await self._call("reading the config", "Range", request)
        kvs, ignored = {}, 0
        for kv in reply.kvs:
            if self._dotted(kv.key) is None:
                ignored += 1 if bytes(kv.key).startswith(self._dir) else 0
                continue
            kvs[bytes(kv.key)] = bytes(kv.value)
        size = sum(len(k) + len(v) for k, v in kvs.items())
        if reply.more or size > MAX_BYTES:
            raise self._too_much()
        self._kvs, self._bytes, self.revision = kvs, size, int(reply.header.revision)
        if ignored:
            log.warning(
                "config %s: ignored %d key(s) under the prefix that name no setting"
                " (an empty level, a '.' in a name, a control character, not UTF-8)",
                self.url,
                ignored,
            )
        return self._snapshot()

    async def _call(self, what: str, method: str, request: Any) -> Any:
        try:
            self._conn.open()
            return await self._conn.call(what, getattr(self._conn.kv, method), request)
        except RegistryError as exc:
            raise Unavailable(exc.detail, code=exc.code) from None

    # -- write ------------------------------------------------------------------------------

    async def set(self, key: str, value: str) -> None:
        request = rpc.PutRequest(key=self._key(key), value=value.encode())
        await self._call(f"writing {key or '(document)'}", "Put", request)

    async def delete(self, key: str) -> None:
        request = rpc.DeleteRangeRequest(key=self._key(key))
        await self._call(f"deleting {key or '(document)'}", "DeleteRange", request)

    # -- watch ------------------------------------------------------------------------------

    def watch(self) -> AsyncIterator[Snapshot]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[Snapshot]:
        outage = Outage(f"config {self.url} watch", logger=log)
        reread = False
        while True:
            call = None
            try:
                if reread:
                    snapshot = await self.read()
                call = await self._open(self.revision + 1)
                outage.recovered()
                if reread:
                    reread = False
                    yield snapshot
                async for snapshot in self._follow(call):
                    yield snapshot
            except _Compacted as exc:  # etcd is there, the changes since our read are not
                log.warning("config %s", exc)
                reread = True
                await asyncio.sleep(outage.backoff.next())
            except (Unavailable, RegistryError, grpc.aio.AioRpcError, TimeoutError, _Broken) as exc:
                if isinstance(exc, grpc.aio.AioRpcError):
                    exc = self._conn.error("watching", exc)  # one line, no gRPC debug dump
                if self.options.username is not None:
                    self._conn.forget_token()  # etcd may have restarted and forgotten it
                reread = True
                await asyncio.sleep(outage.failed(exc))
            finally:
                if call is not None:
                    call.cancel()

    async def _open(self, start: int) -> Any:
        """A watch stream on the prefix from revision `start`, created."""
        metadata = await self._conn.metadata()
        call = self._conn.watch.Watch(metadata=metadata)
        self.streams += 1
        create = rpc.WatchCreateRequest(
            key=self._root, range_end=self._end, start_revision=start, progress_notify=True
        )
        try:
            async with asyncio.timeout(self.options.timeout):
                await call.write(rpc.WatchRequest(create_request=create))
                reply = await call.read()
            self._check(reply, start)
            if not reply.created:
                raise _Broken(f"{self.url}: etcd did not create the watch")
        except BaseException:
            call.cancel()
            raise
        return call

    def _check(self, reply: Any, start: int) -> None:
        if reply is grpc.aio.EOF:
            raise _Broken(f"{self.url}: the watch stream ended")
        if reply.compact_revision:
            raise _Compacted(
                f"{self.url}: changes after revision {start - 1} were compacted away; reading again"
            )
        if reply.canceled:
            reason = reply.cancel_reason or "cancelled by etcd"
            refused = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION, None, None, reason)
            raise self._conn.error("watching", refused)

    async def _follow(self, call: Any) -> AsyncIterator[Snapshot]:
        """Snapshots of the key map as the watch stream changes it, coalesced.

        A task reads the stream and applies each response's events to the key map (cheap);
        a snapshot is yielded when something changed, and not sooner after the last one than
        its consumer took to take that one in. So a prefix under churn (thousands of writes a
        second) costs the config one rebuild per round, not one per response: the event loop
        stays free at least half the time to serve calls, and the config converges on the
        last write instead of falling ever further behind. Errors of the stream end it."""
        changed = asyncio.Event()

        async def pump() -> None:
            while True:
                if await self._next(call):
                    changed.set()

        task = asyncio.get_running_loop().create_task(pump())
        took = 0.0
        try:
            while True:
                waiter = asyncio.ensure_future(changed.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if task.done():
                    task.result()  # the stream's error
                    raise _Broken(f"{self.url}: the watch stream ended")
                # let the stream catch up for as long as the consumer took with the last one
                await asyncio.sleep(took)
                if task.done():
                    task.result()
                changed.clear()
                began = time.monotonic()
                yield self._snapshot()
                took = time.monotonic() - began
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _next(self, call: Any) -> bool:
        """Apply the next watch response to the key map: whether it changed a setting."""
        reply = await call.read()
        self._check(reply, self.revision + 1)
        if not reply.events:  # a progress notification: everything up to it is here
            self.revision = max(self.revision, int(reply.header.revision))
            return False
        touched = False
        for event in reply.events:
            key = bytes(event.kv.key)
            self.revision = max(self.revision, int(event.kv.mod_revision))
            if self._dotted(key) is None:
                continue
            touched = True
            old = self._kvs.pop(key, None)
            if old is not None:
                self._bytes -= len(key) + len(old)
            if event.type == _PUT:
                self._kvs[key] = value = bytes(event.kv.value)
                self._bytes += len(key) + len(value)
        if len(self._kvs) > MAX_KEYS or self._bytes > MAX_BYTES:
            raise self._too_much()  # the outage path: read again (refused) until cleaned up
        return touched

    async def aclose(self) -> None:
        await self._conn.aclose()
