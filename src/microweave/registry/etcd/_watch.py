"""A prefix watch on etcd that survives reconnects without losing or repeating events.

etcd numbers every change with a revision. The watcher remembers the last revision it has
delivered (or that etcd reported as caught up, through progress notifications) and, when its
stream breaks, opens a new one from the next revision, so the consumer sees each change once.
If etcd has compacted that revision away meanwhile, the changes are gone: the watcher
subscribes again at the current revision and then yields RESYNC, so a consumer that re-reads
on RESYNC has no gap. The same happens when etcd comes back without its data (its revision is
below ours). A consumer that falls `buffer` events (or MAX_BACKLOG record bytes) behind also
gets RESYNC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import msgspec

from ...errors import RegistryError
from .. import Action, Event, Node, Service, Watcher, resync
from ..events import MAX_BACKLOG, EventBuffer
from ..outage import Outage
from ..untrusted import too_deep
from ._conn import Connection, rpc

__all__ = ["MAX_BACKLOG", "EtcdWatcher", "decode", "prefix_end", "record_key"]

log = logging.getLogger("microweave.registry")

_PUT, _DELETE = 0, 1  # mvccpb.Event.EventType
MAX_RECORD = 1 << 20  # a record larger than this is not a node announcement: skipped
# A watcher holds at most MAX_BACKLOG record bytes unread (events.py), besides watch_buffer
# events: 10,000 records of up to MAX_RECORD would be 10 GB.


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) every key starting with `prefix`."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else b"\0"


def decode(key: bytes, value: bytes, root: bytes) -> Service | None:
    """The record stored at `key` (`root` is `<prefix>/`), or None (logged) for one that is
    not go-micro's: not a Service JSON, too big or too deep to decode safely, or not saying
    what its key says (exactly one node, and the key is `<root><service>/<node-id>`). A
    writer can thus not add nodes to a service, or replace a node, through another's key."""
    if len(value) > MAX_RECORD:
        log.debug("skipping the etcd registry record %r: %d bytes", key, len(value))
        return None
    try:
        service = Service.from_json(value)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        log.debug("skipping the etcd registry record %r, not a service: %s", key, exc)
        return None
    if too_deep(service.endpoints):
        log.debug("skipping the etcd registry record %r: values nest too deep", key)
        return None
    if len(service.nodes) != 1 or key != record_key(root, service.name, service.nodes[0].id):
        log.debug("skipping the etcd registry record %r: not one node named by its key", key)
        return None
    return service


def record_key(root: bytes, service: str, node: str) -> bytes:
    """go-micro's key for a node: '/' in the names becomes '-'."""
    return root + f"{service.replace('/', '-')}/{node.replace('/', '-')}".encode()


class EtcdWatcher(Watcher):
    def __init__(self, conn: Connection, root: bytes, key: bytes, service: str | None, buffer: int) -> None:
        self._conn = conn
        self._root = root  # `<prefix>/`, which every record's key starts with
        self._key = key
        self.service = service
        # unread events, weighed by their record's bytes; past `buffer` of them or MAX_BACKLOG
        # bytes, RESYNC
        self.events = EventBuffer(service, buffer, max_bytes=MAX_BACKLOG)
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        #: the newest revision whose changes have all been delivered
        self.revision = 0
        #: streams opened (the first one and one per reconnect)
        self.streams = 0
        self._outage = Outage(f"{conn.public} watch")

    async def start(self) -> None:
        """Subscribe; when this returns, every later change will be delivered."""
        for attempt in (1, 2):
            try:
                await self._open(None)
                break
            except grpc.aio.AioRpcError as exc:
                self._drop_stream()
                if attempt == 1 and self._conn.stale_token(exc):
                    self._conn.forget_token()  # etcd forgot it: authenticate again, once
                    continue
                raise self._conn.error("watching", exc) from None
            except TimeoutError:
                self._drop_stream()
                raise RegistryError(
                    f"{self._conn.public}: watching timed out; is etcd running there?"
                ) from None
            except BaseException:
                self._drop_stream()
                raise
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _open(self, start: int | None) -> bool:
        """A new stream from `start` (None: now); False when `start` was compacted away."""
        self._drop_stream()
        metadata = await self._conn.metadata()
        assert self._conn.watch is not None
        call = self._call = self._conn.watch.Watch(metadata=metadata)
        self.streams += 1
        create = rpc.WatchCreateRequest(
            key=self._key, range_end=prefix_end(self._key), prev_kv=True, progress_notify=True
        )
        if start is not None:
            create.start_revision = start
        async with asyncio.timeout(self._conn.options.timeout):
            await call.write(rpc.WatchRequest(create_request=create))
            reply = await call.read()
        if reply is grpc.aio.EOF:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "watch stream ended")
        if reply.compact_revision:
            return False
        if start is not None and reply.header.revision < start - 1:
            # etcd is behind what we saw: it came back without its data (a new store whose
            # revisions start again at 1), so our position means nothing there: resync
            return False
        if reply.canceled or not reply.created:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.FAILED_PRECONDITION, None, None, reply.cancel_reason or "watch refused"
            )
        if start is None:
            self.revision = reply.header.revision
        return True

    async def _run(self) -> None:
        while not self.closed:
            try:
                await self._pump()
            except (grpc.aio.AioRpcError, TimeoutError, RegistryError) as exc:
                await self._backoff(exc)
            while not self.closed:  # reconnect from the next revision
                try:
                    if not await self._open(self.revision + 1):
                        await self._compacted()
                except (grpc.aio.AioRpcError, TimeoutError, RegistryError) as exc:
                    await self._backoff(exc)
                    continue
                self._outage.recovered()
                break

    async def _backoff(self, exc: BaseException) -> None:
        self._drop_stream()
        if isinstance(exc, grpc.aio.AioRpcError):
            if self._conn.stale_token(exc):
                self._conn.forget_token()  # etcd restarted and forgot it: authenticate again
            exc = self._conn.error("watching", exc)  # one line, no gRPC debug dump
        await asyncio.sleep(self._outage.failed(exc))

    async def _compacted(self) -> None:
        """The events since `revision` are gone (compacted, or etcd lost its data): subscribe
        at the present, then say RESYNC."""
        log.warning(
            "%s: events after revision %d were compacted away: resyncing", self._conn.public, self.revision
        )
        await self._open(None)
        self._offer(resync(self.service))

    async def _pump(self) -> None:
        """Deliver what the current stream brings until it breaks."""
        call = self._call
        if call is None:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "no watch stream")
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "watch stream ended")
            if reply.compact_revision:
                await self._compacted()
                call = self._call
                continue
            if reply.canceled:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE, None, None, reply.cancel_reason or "watch cancelled by etcd"
                )
            for event in reply.events:
                self._deliver(event)
                self.revision = max(self.revision, event.kv.mod_revision)
            if not reply.events and reply.header.revision:  # a progress notification
                self.revision = max(self.revision, reply.header.revision)

    def _deliver(self, event: Any) -> None:
        if event.type == _PUT:
            service = decode(event.kv.key, event.kv.value, self._root)
            if service is not None:
                action = Action.CREATE if event.kv.version == 1 else Action.UPDATE
                self._offer(Event(action, service), len(event.kv.value))
            return
        if not event.HasField("prev_kv"):  # compacted away: the key still names the node
            parts = bytes(event.kv.key).decode("utf-8", "replace").rsplit("/", 2)
            name, node = (parts[-2], parts[-1]) if len(parts) == 3 else ("", parts[-1])
            self._offer(Event(Action.DELETE, Service(name=name, nodes=[Node(id=node, address="")])))
            return
        service = decode(event.kv.key, event.prev_kv.value, self._root)
        if service is not None:  # else it was never announced: nothing to take back
            self._offer(Event(Action.DELETE, service), len(event.prev_kv.value))

    def _offer(self, event: Event, size: int = 0) -> None:
        self.events.offer(event, size)

    def _drop_stream(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def __anext__(self) -> Event:
        return await self.events.next()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop_stream()
        self.events.close()
