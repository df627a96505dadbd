"""What one mDNS registry knows: its own nodes and the nodes heard on the network, as events.

The tracker is a zeroconf record listener: every record zeroconf receives in our domain (our
own announcements loop back too) lands in `async_update_records`. It assembles a node from
its SRV (port, host), TXT (go-micro's record) and the host's A/AAAA record, and keeps one
table of visible nodes, local and heard, from which lookups read and watch events come.

Expiry is ours, not zeroconf's: zeroconf sweeps its cache every 10 s, far coarser than a
registry TTL. A heard node lives until its SRV or TXT record's TTL runs out since it was last
announced (goodbye packets, TTL 0, remove it at once); at 80 % of that TTL the registry asks
for it again (RFC 6762 §5.2), which is how nodes that only answer queries (go-micro's) stay.

Bounded: at most `max_nodes` heard instances, as many hosts, 8 addresses per host, TXT JSON of
at most MAX_TXT_JSON each, and service names from `_services` up to `max_nodes`; past that,
new ones are ignored (one warning per registry) until some expire. A watcher holds at most
`watch_buffer` unread events and MAX_BACKLOG bytes of their TXT JSON, then gets RESYNC.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
from zeroconf import RecordUpdate, RecordUpdateListener
from zeroconf._dns import DNSAddress, DNSPointer, DNSQuestion, DNSService, DNSText

from .. import Action, Event, Service, Watcher, merge_nodes
from ..events import MAX_BACKLOG, EventBuffer
from .records import Txt, decode_txt, instance_node_id, service_from_txt, split_txt

__all__ = ["Tracker"]

log = logging.getLogger("microweave.registry")

_ADDRESSES_PER_HOST = 8
# A watcher holds at most MAX_BACKLOG bytes of TXT JSON unread (events.py), besides
# `watch_buffer` events: a TXT may inflate to 256 KiB, so the count alone could be gigabytes.
_REFRESH_AT = 0.8  # ask again for a heard node at this fraction of its TTL
_TYPE_PTR, _TYPE_SRV, _TYPE_TXT, _CLASS_IN = 12, 33, 16, 1
_TYPE_A, _TYPE_AAAA = 1, 28


class _Heard:
    """A node as the network describes it; visible once SRV, TXT and an address are known."""

    __slots__ = ("asked", "expires", "host", "instance", "port", "refresh", "size", "text", "txt")

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.port = 0
        self.host = ""
        self.text: bytes | None = None
        self.txt: Txt | None = None
        self.size = 0  # bytes of the TXT's JSON: what an event of this node weighs
        self.expires = [0.0, 0.0]  # SRV, TXT
        self.refresh = 0.0  # when to ask again
        self.asked = False


class _Local:
    __slots__ = ("expires", "record")

    def __init__(self, record: Service, expires: float) -> None:
        self.record = record
        self.expires = expires


class TrackerWatcher(Watcher):
    def __init__(self, tracker: Tracker, service: str | None, buffer: int) -> None:
        self._tracker = tracker
        self.service = service
        # unread events weighed by their TXT JSON; past `buffer` of them or MAX_BACKLOG bytes, RESYNC
        self.events = EventBuffer(service, buffer, max_bytes=MAX_BACKLOG)

    def offer(self, event: Event, size: int = 0) -> None:
        if self.service in (None, event.service.name):
            self.events.offer(event, size)

    async def __anext__(self) -> Event:
        return await self.events.next()

    def end(self) -> None:
        if not self.events.closed:
            self._tracker.watchers.discard(self)
            self.events.close()

    async def aclose(self) -> None:
        self.end()


class Tracker(RecordUpdateListener):
    def __init__(self, domain: str, *, where: str, max_nodes: int, watch_buffer: int) -> None:
        super().__init__()
        self.domain = domain
        self.where = where
        self.max_nodes = max_nodes
        self.watch_buffer = watch_buffer
        self._suffix = f".{domain}.".lower()
        self._list_name = f"_services.{domain}.".lower()
        self._wildcard = f"._services.{domain}.".lower()  # go-micro's per-service entries
        self.local: dict[str, _Local] = {}  # instance key -> our own node
        self.heard: dict[str, _Heard] = {}  # instance key -> a node from the network
        self._hosts: dict[str, dict[str, float]] = {}  # host key -> address -> expires
        self._host_nodes: dict[str, set[str]] = {}  # host key -> heard nodes living there
        self._gone: dict[str, float] = {}  # instance key -> until: ours, deregistered
        self.names: dict[str, float] = {}  # service names from `_services` -> expires
        self._visible: dict[str, Service] = {}  # instance key -> one-node record
        self._sizes: dict[str, int] = {}  # instance key -> bytes of its visible record's TXT
        self._touched: set[str] = set()
        self.watchers: set[TrackerWatcher] = set()
        self._warned = False

    # -- reads -----------------------------------------------------------------------------

    def services(self, name: str | None) -> list[Service]:
        records = [r for r in self._visible.values() if name is None or r.name == name]
        if name is not None:
            return merge_nodes(records)
        by_name: dict[str, list[Service]] = {}
        for record in records:
            by_name.setdefault(record.name, []).append(record)
        return [s for group in by_name.values() for s in merge_nodes(group)]

    def shows(self, key: str) -> bool:
        """Whether the node of instance `key` (lower case) is seen whole, or is ours."""
        return key in self._visible

    def watch(self, service: str | None) -> TrackerWatcher:
        watcher = TrackerWatcher(self, service, self.watch_buffer)
        self.watchers.add(watcher)
        return watcher

    # -- our own nodes ---------------------------------------------------------------------

    def set_local(self, instance: str, record: Service, expires: float) -> None:
        key = instance.lower()
        self._gone.pop(key, None)
        self._drop_heard(key)  # ours is authoritative
        self.local[key] = _Local(record, expires)
        self._show(key, record)

    def remove_local(self, instance: str, quiet_for: float) -> None:
        """Forget our node; echoes of its announcements heard within `quiet_for` are ignored."""
        key = instance.lower()
        if self.local.pop(key, None) is not None:
            self._gone[key] = time.monotonic() + quiet_for
            self._show(key, None)

    # -- the network -----------------------------------------------------------------------

    def async_update_records(self, zc: Any, now: float, records: list[RecordUpdate]) -> None:
        addresses: list[DNSAddress] = []
        for update in records:
            record = update.new
            if isinstance(record, DNSAddress):
                addresses.append(record)  # after the SRVs, which say which hosts matter
            elif record.key.endswith(self._suffix) and not record.key.endswith(self._wildcard):
                if isinstance(record, DNSService):
                    if self._on_srv(record):
                        addresses.extend(_cached_addresses(zc, record.server_key, now))
                elif isinstance(record, DNSText):
                    self._on_txt(record)
                elif isinstance(record, DNSPointer):
                    self._on_ptr(record)
        for record in addresses:
            self._on_address(record)

    def async_update_records_complete(self) -> None:
        touched, self._touched = self._touched, set()
        for key in touched:
            if key not in self.local:
                heard = self.heard.get(key)
                if heard is None:
                    self._show(key, None)
                else:
                    self._show(key, self._view(heard), heard.size)

    def _heard_node(self, record: DNSService | DNSText, which: int) -> _Heard | None:
        """The node an SRV (which=0) or TXT (1) record refreshes; None when it is a goodbye,
        ours, or one node too many."""
        key = record.key
        if record.ttl == 0:
            self._drop_heard(key)
            return None
        if key in self.local or key in self._gone:
            return None  # our own node (or its echo after we let it go)
        heard = self.heard.get(key)
        if heard is None:
            if len(self.heard) >= self.max_nodes:
                self._over_cap("nodes")
                return None
            # the name as sent: DNS matches without case (the key), node ids keep theirs
            heard = self.heard[key] = _Heard(record.name)
        self._refreshed(heard, which, record.ttl)
        self._touched.add(key)
        return heard

    def _on_srv(self, record: DNSService) -> bool:
        """Track the node's host and port; True when the host is new to the node (its address
        may have come in an earlier packet, before any SRV said the host mattered)."""
        heard = self._heard_node(record, 0)
        if heard is None:
            return False
        host = record.server_key
        heard.port = record.port
        if host == heard.host:
            return False
        self._unref_host(heard.host, record.key)
        self._host_nodes.setdefault(host, set()).add(record.key)
        heard.host = host
        return True

    def _on_txt(self, record: DNSText) -> None:
        heard = self._heard_node(record, 1)
        if heard is None:
            return
        if record.text != heard.text:
            heard.text = record.text
            try:
                heard.txt = decode_txt(split_txt(record.text))
                heard.size = len(msgspec.json.encode(heard.txt))  # once per new TXT
            except ValueError as exc:
                log.debug("%s: ignoring the TXT of %s: %s", self.where, record.name, exc)
                heard.txt, heard.size = None, 0

    def _on_ptr(self, record: DNSPointer) -> None:
        if record.key == self._list_name:
            name = record.alias[: -len(self._wildcard)]
            if not record.alias_key.endswith(self._wildcard) or not name:
                return
            if record.ttl == 0:
                self.names.pop(name, None)
            elif name in self.names or len(self.names) < self.max_nodes:
                self.names[name] = time.monotonic() + record.ttl
        elif record.ttl == 0:
            self._drop_heard(record.alias_key)

    def _on_address(self, record: DNSAddress) -> None:
        host = record.key
        residents = self._host_nodes.get(host)
        if residents is None:
            return  # nobody we track lives there
        family = socket.AF_INET if len(record.address) == 4 else socket.AF_INET6
        address = socket.inet_ntop(family, record.address)
        known = self._hosts.setdefault(host, {})
        if record.ttl == 0:
            known.pop(address, None)
        elif address in known or len(known) < _ADDRESSES_PER_HOST:
            known[address] = time.monotonic() + record.ttl
        self._touched.update(residents)

    def _refreshed(self, heard: _Heard, which: int, ttl: int) -> None:
        now = time.monotonic()
        heard.expires[which] = now + ttl
        heard.refresh = now + _REFRESH_AT * ttl
        heard.asked = False

    def _view(self, heard: _Heard) -> Service | None:
        txt = heard.txt
        if txt is None or not heard.port or not txt.Service:
            return None
        node_id = instance_node_id(heard.instance, txt.Service, self.domain)
        addresses = self._hosts.get(heard.host)
        if node_id is None or not addresses:
            return None
        # go-micro prefers IPv4
        address = min(addresses, key=lambda a: (":" in a, a))
        host = f"[{address}]" if ":" in address else address
        return service_from_txt(txt, node_id, f"{host}:{heard.port}")

    def _drop_heard(self, key: str) -> None:
        heard = self.heard.pop(key, None)
        if heard is not None:
            self._unref_host(heard.host, key)
            self._touched.discard(key)
            if key not in self.local:
                self._show(key, None)

    def _unref_host(self, host: str, key: str) -> None:
        residents = self._host_nodes.get(host)
        if residents is not None:
            residents.discard(key)
            if not residents:
                del self._host_nodes[host]
                self._hosts.pop(host, None)

    def _over_cap(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "%s: over %d %s announced on the network; ignoring new ones until some expire",
                self.where,
                self.max_nodes,
                what,
            )

    # -- time ------------------------------------------------------------------------------

    def sweep(self, expire_local: Callable[[str], None]) -> list[DNSQuestion]:
        """Expire what ran out; the questions to ask for heard nodes near their end."""
        now = time.monotonic()
        for key, local in list(self.local.items()):
            if local.expires <= now:
                del self.local[key]
                self._show(key, None)
                expire_local(key)
        questions: list[DNSQuestion] = []
        for key, heard in list(self.heard.items()):
            if min(heard.expires) <= now:
                self._drop_heard(key)
            elif heard.refresh <= now and not heard.asked and len(questions) < 64:
                heard.asked = True
                questions.append(DNSQuestion(heard.instance, _TYPE_SRV, _CLASS_IN))
                questions.append(DNSQuestion(heard.instance, _TYPE_TXT, _CLASS_IN))
        for table in (self._gone, self.names):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
        for host, addresses in self._hosts.items():
            expired = [a for a, until in addresses.items() if until <= now]
            for address in expired:
                del addresses[address]
            if expired:
                self._touched.update(self._host_nodes.get(host, ()))
        self.async_update_records_complete()
        return questions

    # -- events ----------------------------------------------------------------------------

    def _show(self, key: str, record: Service | None, size: int = 0) -> None:
        """Make `record` (of `size` TXT bytes) what `key` shows; the events that says."""
        old = self._visible.get(key)
        if record == old:
            return
        old_size = self._sizes.pop(key, 0)
        if record is None:
            del self._visible[key]
        else:
            self._visible[key] = record
            self._sizes[key] = size
        if old is not None and (record is None or record.name != old.name):
            self._notify(Event(Action.DELETE, old), old_size)
            old = None
        if record is not None:
            self._notify(Event(Action.CREATE if old is None else Action.UPDATE, record), size)

    def _notify(self, event: Event, size: int) -> None:
        for watcher in list(self.watchers):
            watcher.offer(event, size)

    def close(self) -> None:
        for watcher in list(self.watchers):
            watcher.end()


def _cached_addresses(zc: Any, host: str, now: float) -> list[DNSAddress]:
    """The live A/AAAA records of `host` in zeroconf's cache.

    A responder splits a big answer over several packets, and an address may come in the
    packet before the SRV naming its host (a legacy unicast answer to 64 lookups at once did,
    for 1 node in 30): ignored then, it must be taken from the cache once the SRV arrives, or
    the node stays invisible until the address is announced again.
    """
    cache = getattr(zc, "cache", None)
    if cache is None:
        return []
    found: list[DNSAddress] = []
    for kind in (_TYPE_A, _TYPE_AAAA):
        for entry in cache.async_all_by_details(host, kind, _CLASS_IN):
            if isinstance(entry, DNSAddress) and not entry.is_expired(now):
                found.append(entry)
    return found


def ptr_question(name: str) -> DNSQuestion:
    return DNSQuestion(name, _TYPE_PTR, _CLASS_IN)
