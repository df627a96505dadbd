"""etcd registry in go-micro's layout, so go-micro services and microweave services share it.

`etcd://host:port[,host:port...][/prefix]?ttl=&username=&password=&tls=&ca=&cert=&key=`

Each node is one key, `<prefix>/<service>/<node-id>` ('/' in names becomes '-', as go-micro
does; the prefix defaults to `/micro/registry`), holding a Service JSON with that one node, on
a lease of the registration's TTL. Leases are shared per TTL and refreshed by the heartbeat
over one keep-alive stream (see _lease.py); an unchanged record is never written again.
Lookups are serializable prefix reads; watches are prefix watches with the previous value, so
a DELETE names the node it removed (see _watch.py). Options, guarantees and outage behaviour:
docs/registry/etcd.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from ..._backends import BackendURL
from ...errors import RegistryError
from .. import Registry, Service, Watcher, merge_nodes
from ._conn import Connection, Options, rpc
from ._lease import KeepAlive, lease_seconds
from ._watch import EtcdWatcher, decode, prefix_end, record_key

__all__ = ["EtcdRegistry"]

log = logging.getLogger("microweave.registry")


class _Record:
    __slots__ = ("lease", "revision", "ttl", "value")

    def __init__(self, value: bytes, ttl: int | None, lease: int, revision: int) -> None:
        self.value = value
        self.ttl = ttl
        self.lease = lease
        self.revision = revision  # of our last write: any other write since is not ours


class EtcdRegistry(Registry):
    scheme = "etcd"

    def __init__(self, options: Options) -> None:
        self.options = options
        self._conn = Connection(options)
        self._keepalive = KeepAlive(self._conn)
        self._lock = asyncio.Lock()  # one change of leases and keys at a time
        self._leases: dict[int, int] = {}  # TTL seconds -> lease id
        self._records: dict[bytes, _Record] = {}  # keys this instance registered
        self._warned: set[bytes] = set()  # of those, keys found overwritten (said once each)
        self._watchers: set[EtcdWatcher] = set()
        #: leases granted so far (one per TTL while etcd keeps them)
        self.leases_granted = 0

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> EtcdRegistry:
        """`kwargs` (username, password, tls, ca, cert, key, ttl, timeout, watch_buffer) win
        over the URL's query; pass secrets this way to keep them out of URLs and process lists."""
        return cls(Options.parse(url, kwargs))

    # -- keys -------------------------------------------------------------------------------

    def _service_prefix(self, name: str | None) -> bytes:
        if name is None:
            return f"{self.options.prefix}/".encode()
        return f"{self.options.prefix}/{name.replace('/', '-')}/".encode()

    def _key(self, service: str, node: str) -> bytes:
        return record_key(self._service_prefix(None), service, node)

    # -- register ---------------------------------------------------------------------------

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        ttl = ttl or self.options.ttl
        seconds = lease_seconds(ttl) if ttl else None
        async with self._lock:
            lease, fresh = (await self._lease(seconds)) if seconds else (0, True)
            if seconds and not fresh and await self._keepalive.refresh(lease) <= 0:
                # etcd lost the lease (it expired while we were away, or etcd lost its data):
                # a new one, every key of ours on it put again (not "changed by someone else")
                lease = await self._regrant(seconds)
            for node in service.nodes:
                key, value = self._key(service.name, node.id), service.with_nodes([node]).to_json()
                known = self._records.get(key)
                if known is not None and (known.value, known.lease) == (value, lease):
                    if await self._intact(key, known):
                        continue  # the heartbeat: nothing to write
                    self._overwritten(key)
                revision = await self._put(key, value, lease)
                if revision is None:  # etcd lost the lease since (only leased puts can fail so)
                    lease = await self._regrant(seconds or 0)
                    revision = await self._put(key, value, lease) or 0
                self._records[key] = _Record(value, seconds, lease, revision)

    async def _lease(self, seconds: int) -> tuple[int, bool]:
        """The lease for this TTL, and whether it was granted just now."""
        lease = self._leases.get(seconds)
        if lease is not None:
            return lease, False
        return await self._grant(seconds), True

    async def _grant(self, seconds: int) -> int:
        reply = await self._conn.call(
            "granting a lease", self._stub().LeaseGrant, rpc.LeaseGrantRequest(TTL=seconds)
        )
        if reply.error:
            raise RegistryError(f"{self.options.public}: granting a lease failed: {reply.error[:200]}")
        self._leases[seconds] = int(reply.ID)
        self.leases_granted += 1
        return int(reply.ID)

    async def _regrant(self, seconds: int) -> int:
        """A new lease for a TTL whose lease etcd lost, and every key of ours on it put again."""
        self._leases.pop(seconds, None)
        lease = await self._grant(seconds)
        for key, record in self._records.items():
            if record.ttl == seconds:
                record.revision = await self._put(key, record.value, lease) or 0
                record.lease = lease
        return lease

    async def _put(self, key: bytes, value: bytes, lease: int) -> int | None:
        """Write the key; its new revision, or None when etcd does not know the lease (it
        expired meanwhile)."""
        try:
            reply = await self._conn.call(
                "registering", self._conn_kv().Put, rpc.PutRequest(key=key, value=value, lease=lease)
            )
        except RegistryError as exc:
            if lease and "lease not found" in str(exc):
                return None
            raise
        return int(reply.header.revision)

    def _overwritten(self, key: bytes) -> None:
        """Say once per key that someone else deleted or changed it: repeated, it means two
        nodes share an id (their heartbeats now take turns putting it) or a writer fights us."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(
                "%s: %s was deleted or changed by someone else; registering it again"
                " (if this repeats, two nodes may share this id)",
                self.options.public,
                key.decode("utf-8", "replace"),
            )

    async def _intact(self, key: bytes, record: _Record) -> bool:
        """Whether the key is still our last write, on our lease: one read of the key alone,
        without its value, from the member we talk to. Someone else's delete or put (an
        operator's `etcdctl del --prefix`, another writer) is repaired by the next heartbeat."""
        request = rpc.RangeRequest(key=key, keys_only=True, serializable=True)
        reply = await self._conn.call("checking a registration", self._conn_kv().Range, request)
        return any(kv.mod_revision == record.revision and kv.lease == record.lease for kv in reply.kvs)

    async def deregister(self, service: Service) -> None:
        async with self._lock:
            for node in service.nodes:
                key = self._key(service.name, node.id)
                await self._conn.call(
                    "deregistering", self._conn_kv().DeleteRange, rpc.DeleteRangeRequest(key=key)
                )
                self._records.pop(key, None)
                self._warned.discard(key)

    # -- look up ----------------------------------------------------------------------------

    async def _range(self, prefix: bytes) -> Iterable[Service]:
        request = rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), serializable=True)
        reply = await self._conn.call("looking up services", self._conn_kv().Range, request)
        root = self._service_prefix(None)
        return (s for s in (decode(kv.key, kv.value, root) for kv in reply.kvs) if s is not None)

    async def get_service(self, name: str) -> list[Service]:
        return merge_nodes([s for s in await self._range(self._service_prefix(name)) if s.name == name])

    async def list_services(self) -> list[Service]:
        by_name: dict[str, list[Service]] = {}
        for record in await self._range(self._service_prefix(None)):
            by_name.setdefault(record.name, []).append(record)
        return [service for records in by_name.values() for service in merge_nodes(records)]

    async def watch(self, service: str | None = None) -> Watcher:
        self._conn.open()
        self._watchers = {w for w in self._watchers if not w.closed}
        watcher = EtcdWatcher(
            self._conn,
            self._service_prefix(None),
            self._service_prefix(service),
            service,
            self.options.watch_buffer,
        )
        await watcher.start()
        self._watchers.add(watcher)
        return watcher

    # -- plumbing ---------------------------------------------------------------------------

    def _conn_kv(self) -> Any:
        self._conn.open()
        return self._conn.kv

    def _stub(self) -> Any:
        self._conn.open()
        return self._conn.lease

    @property
    def keepalive_streams(self) -> int:
        """Keep-alive streams opened so far (stays 1 over any number of heartbeats)."""
        return self._keepalive.streams

    async def aclose(self) -> None:
        for watcher in list(self._watchers):
            await watcher.aclose()
        self._watchers.clear()
        self._keepalive.close()
        await self._conn.aclose()

    def __repr__(self) -> str:
        return f"<EtcdRegistry {self.options.public}>"
