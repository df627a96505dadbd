"""mDNS registry in go-micro's layout: discovery on one LAN with no server to run.

`mdns://[?ttl=&domain=micro&interface=&max_nodes=&watch_buffer=&query_wait=]`

Each node is announced by multicast DNS as go-micro announces it (records.py: the `micro.`
domain, instance `<node-id>.<service>.micro.`, go-micro's TXT record), through python-zeroconf,
which owns the sockets (UDP 5353, IPv4 multicast 224.0.0.251), answers queries for our nodes
and sends goodbye packets. Every record heard in the domain reaches the tracker (tracker.py),
which keeps the table lookups read and watch events come from.

TTL: mDNS TTLs are whole seconds, and a responder (zeroconf included, RFC 6762 §6) multicasts
the same record at most about once a second, so a refresh cannot be counted on more often.
A registration's TTL is therefore sent rounded up to whole seconds and at least 2 s
(`wire_ttl`); readers drop a node that many seconds after it was last announced, unless a
goodbye removed it first. The heartbeat (`register()` again) re-announces the node in one
packet. Without a TTL (none given and no `?ttl=`), go-micro's 120 s applies, and readers keep
such a node by asking for it at 80 % of its TTL, which is also how go-micro's nodes, which
only answer queries, stay visible.

A lookup of a service not looked up before sends one query and waits `query_wait` (0.25 s)
for answers, as go-micro's does (100 ms), asking again halfway if the answer is missing or
incomplete (one more half if still incomplete: lost packets; longer, up to 8 x, while answers
keep arriving); after that the tracker follows the network and lookups are answered from
memory. Multicast stays on the network segment: it does not cross routers, nor container
or pod network namespaces (docs/registry/mdns.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any

from zeroconf import InterfaceChoice, IPVersion, NotRunningException, ServiceInfo, Zeroconf
from zeroconf._dns import DNSPointer
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncZeroconf

from ..._backends import BackendURL
from ...errors import ConfigurationError, RegistryError
from .. import Registry, Service, Watcher
from ..url_options import unknown_options
from .asker import Asker
from .records import node_info, wildcard_info
from .tracker import Tracker, ptr_question

__all__ = ["MdnsRegistry", "Options", "wire_ttl"]

log = logging.getLogger("microweave.registry")

DEFAULT_TTL = 120  # go-micro's record TTL, for registrations without one
MIN_TTL = 2  # seconds: see the module docstring
SWEEP = 0.25  # seconds between expiry sweeps
_TYPE_PTR, _CLASS_IN = 12, 1
_MAX_WAITS = 8  # a lookup waits at most this many query_wait while answers keep coming
_ANNOUNCE = (0.225, 0.225)  # pauses between the three announcements of a new record
_GOODBYE = (0.125, 0.125)
_FLAGS_QUERY = 0x0000


def wire_ttl(ttl: float | None) -> int:
    """The TTL, in whole seconds, that the records of a registration with `ttl` carry."""
    return max(MIN_TTL, math.ceil(ttl)) if ttl else DEFAULT_TTL


def _number(url: BackendURL, kwargs: dict[str, Any], name: str, kind: type, least: float) -> Any:
    raw = kwargs.get(name, url.query.get(name))
    if raw is None:
        return None
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={raw!r} in the mdns:// URL is not a number") from None
    if value < least:
        raise ConfigurationError(f"{name}={raw!r} in the mdns:// URL must be at least {least}")
    return value


@dataclass(frozen=True)
class Options:
    domain: str = "micro"
    ttl: float | None = None
    interfaces: tuple[str, ...] = ()  # IPv4 addresses or interface names; () = all
    max_nodes: int = 10_000
    watch_buffer: int = 10_000
    query_wait: float = 0.25

    @classmethod
    def parse(cls, url: BackendURL, kwargs: dict[str, Any]) -> Options:
        if url.hosts or url.path.strip("/"):
            raise ConfigurationError(
                f"mdns:// takes no address (it multicasts on the LAN); got {url.hosts or url.path!r}"
            )
        known = ("domain", "ttl", "interface", "max_nodes", "watch_buffer", "query_wait")
        unknown = unknown_options([*url.query, *kwargs], known)
        if unknown:
            raise ConfigurationError(
                f"unknown option {unknown} in the mdns:// URL; known: {', '.join(known)}"
            )
        domain = str(kwargs.get("domain", url.query.get("domain", "micro"))).strip(".")
        if not domain or any(not p or len(p) > 63 for p in domain.split(".")):
            raise ConfigurationError(f"domain={domain!r} in the mdns:// URL is not a DNS domain")
        interface = kwargs.get("interface", url.query.get("interface", ""))
        options = {
            name: value
            for name, kind, least in (
                ("ttl", float, 0.001),
                ("max_nodes", int, 1),
                ("watch_buffer", int, 1),
                ("query_wait", float, 0.0),
            )
            if (value := _number(url, kwargs, name, kind, least)) is not None
        }
        interfaces = tuple(i.strip() for i in str(interface).split(",") if i.strip())
        return cls(domain=domain, interfaces=interfaces, **options)

    def url(self) -> str:
        extra = "".join(
            f"&{name}={value}"
            for name, value in (("interface", ",".join(self.interfaces)), ("ttl", self.ttl))
            if value
        )
        return f"mdns://?domain={self.domain}{extra}"


def _addresses(names: tuple[str, ...], where: str) -> list[str] | InterfaceChoice:
    """IPv4 addresses for zeroconf: as given, or those of the named interfaces."""
    if not names:
        return InterfaceChoice.All
    import ifaddr  # zeroconf's own dependency

    adapters = {a.nice_name: a for a in ifaddr.get_adapters()}
    found: list[str] = []
    for name in names:
        if name.replace(".", "").isdigit():
            found.append(name)
            continue
        adapter = adapters.get(name)
        ips = [str(ip.ip) for ip in adapter.ips if ip.is_IPv4] if adapter else []
        if not ips:
            raise RegistryError(
                f"{where}: interface {name!r} has no IPv4 address here (interfaces: "
                f"{', '.join(sorted(adapters)) or 'none'}); fix interface= in the URL"
            )
        found.extend(ips)
    return found


def _all_ipv4() -> list[str]:
    """Every IPv4 address of this host's interfaces (what zeroconf's InterfaceChoice.All is)."""
    import ifaddr

    return sorted({str(ip.ip) for a in ifaddr.get_adapters() for ip in a.ips if ip.is_IPv4})


class _Mine:
    __slots__ = ("info", "record", "seconds")

    def __init__(self, record: Service, seconds: int, info: ServiceInfo) -> None:
        self.record = record
        self.seconds = seconds
        self.info = info


class MdnsRegistry(Registry):
    scheme = "mdns"

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Options()
        self._where = repr(self)
        self._tracker = Tracker(
            self.options.domain,
            where=self._where,
            max_nodes=self.options.max_nodes,
            watch_buffer=self.options.watch_buffer,
        )
        self._aiozc: AsyncZeroconf | None = None
        self._asker: Asker | None = None
        self._started: asyncio.Task[None] | None = None
        self._mine: dict[str, _Mine] = {}  # instance key -> our node
        self._wildcards: dict[str, ServiceInfo] = {}  # service name -> its `_services` entry
        self._asked: dict[str, asyncio.Event] = {}  # names queried once (set when answered)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> MdnsRegistry:
        return cls(Options.parse(url, kwargs))

    def __repr__(self) -> str:
        return f"<MdnsRegistry {self.options.url()}>"

    # -- sockets ---------------------------------------------------------------------------

    def open(self) -> None:
        """Bind the mDNS sockets now, on the running event loop; every method calls it.

        Sockets belong to the network namespace of the thread that creates them, so whoever
        needs them in another namespace (the tests) opens the registry from inside it.
        """
        if self._aiozc is not None:
            return
        if self._closed:
            raise RegistryError(f"{self._where} is closed")
        loop = asyncio.get_running_loop()
        interfaces = _addresses(self.options.interfaces, self._where)
        try:
            # on every interface zeroconf listens on: without IP_MULTICAST_IF the kernel sends
            # where it routes 224.0.0.251, one interface, or none without a default route
            asker = Asker(_all_ipv4() if isinstance(interfaces, InterfaceChoice) else list(interfaces))
            try:
                aiozc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            except BaseException:
                asker.close()
                raise
        except (OSError, RuntimeError) as exc:
            raise RegistryError(
                f"{self._where}: cannot open the mDNS sockets (UDP 5353, multicast 224.0.0.251): "
                f"{exc}; check interface= and that the interface has multicast"
            ) from None
        aiozc.zeroconf.async_add_listener(self._tracker, None)
        self._aiozc, self._asker = aiozc, asker
        self._started = loop.create_task(self._start(aiozc.zeroconf, asker))
        self._sweeper = loop.create_task(self._sweep())

    @staticmethod
    async def _start(zc: Zeroconf, asker: Asker) -> None:
        await zc.async_wait_for_start()
        await asker.start(zc)

    async def _zc(self) -> Zeroconf:
        self.open()
        assert self._aiozc is not None and self._started is not None
        try:
            await asyncio.shield(self._started)
        except (NotRunningException, TimeoutError, OSError) as exc:
            raise RegistryError(f"{self._where}: the mDNS sockets did not start: {exc!r}") from None
        return self._aiozc.zeroconf

    def _query(self, questions: list[Any]) -> None:
        """Ask (from our own port: asker.py), in as many packets as it takes.

        A random id, as legacy unicast resolvers (go-micro's) send: zeroconf ignores a packet
        identical to one it saw in the last 800 ms, from whomever, so two registries asking
        the same question at once must not send the same bytes.
        """
        if self._asker is not None and questions:
            out = DNSOutgoing(_FLAGS_QUERY, False, random.randrange(1, 65536))  # False: keep the id
            for question in questions:
                out.add_question(question)
            self._asker.ask(out)

    def _spawn(self, *steps: tuple[float, DNSOutgoing]) -> None:
        """Send the packets later, each after its pause, unless the registry closes first."""

        async def send() -> None:
            for pause, out in steps:
                await asyncio.sleep(pause)
                if self._aiozc is not None:
                    self._aiozc.zeroconf.async_send(out)

        task = asyncio.get_running_loop().create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _announce(self, zc: Zeroconf, info: ServiceInfo, ttl: int | None, pauses: tuple[float, ...]) -> None:
        out = zc.generate_service_broadcast(info, ttl)
        zc.async_send(out)
        self._spawn(*((pause, out) for pause in pauses))

    # -- register --------------------------------------------------------------------------

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        zc = await self._zc()
        seconds = wire_ttl(ttl or self.options.ttl)
        expires = time.monotonic() + seconds
        for node in service.nodes:
            record = service.with_nodes([node])
            info = node_info(service, node, self.options.domain, seconds, self._where)
            mine = self._mine.get(info.key)
            self._tracker.set_local(info.name, record, expires)
            if mine is not None and (mine.record, mine.seconds) == (record, seconds):
                self._announce(zc, mine.info, None, ())  # the heartbeat: one packet
                continue
            zc.registry.async_update(info)  # answers queries from now on
            self._mine[info.key] = _Mine(record, seconds, info)
            self._announce(zc, info, None, _ANNOUNCE)
        if service.nodes and service.name not in self._wildcards:
            wildcard = self._wildcards[service.name] = wildcard_info(
                service.name, self.options.domain, DEFAULT_TTL
            )
            zc.registry.async_update(wildcard)
            self._announce(zc, wildcard, None, _ANNOUNCE)

    async def deregister(self, service: Service) -> None:
        zc = await self._zc()
        for node in service.nodes:
            self._release(zc, f"{node.id}.{service.name}.{self.options.domain}.".lower(), goodbye=True)
        self._drop_wildcard(zc, service.name)

    def _release(self, zc: Zeroconf, key: str, *, goodbye: bool) -> None:
        mine = self._mine.pop(key, None)
        if mine is None:
            return
        self._tracker.remove_local(mine.info.name, quiet_for=mine.seconds)
        zc.registry.async_remove(mine.info)
        if goodbye:
            self._announce(zc, mine.info, 0, _GOODBYE)

    def _drop_wildcard(self, zc: Zeroconf, name: str) -> None:
        if any(m.record.name == name for m in self._mine.values()):
            return
        wildcard = self._wildcards.pop(name, None)
        if wildcard is not None:
            zc.registry.async_remove(wildcard)
            self._announce(zc, wildcard, 0, _GOODBYE)

    def _expired(self, key: str) -> None:
        """Our own node ran out (nobody re-registered it): stop answering for it."""
        if self._aiozc is not None and (mine := self._mine.get(key)) is not None:
            zc = self._aiozc.zeroconf
            self._release(zc, key, goodbye=False)
            self._drop_wildcard(zc, mine.record.name)

    # -- look up ---------------------------------------------------------------------------

    async def _ask(self, zc: Zeroconf, names: list[str]) -> None:
        """Query the PTRs of `names` not asked before and wait for answers (once per name)."""
        fresh = [n for n in names if n not in self._asked]
        if len(self._asked) + len(fresh) > self.options.max_nodes:
            self._asked = {n: e for n, e in self._asked.items() if not e.is_set()}
        if fresh:
            answered = asyncio.Event()
            for name in fresh:
                self._asked[name] = answered
            self._query([ptr_question(name) for name in fresh])
            try:
                await self._wait_for_answers(zc, fresh)
            finally:
                answered.set()
        for name in names:
            waiting = self._asked.get(name)
            if waiting is not None:
                await waiting.wait()

    async def _wait_for_answers(self, zc: Zeroconf, asked: list[str]) -> None:
        """Wait `query_wait`, asking again (RFC 6762 §5.2) the names whose answers are missing
        or incomplete halfway through; a name answered incompletely gets one more half.

        Under a burst of lookups whole runs of queries went unanswered, and a responder's
        answer spans packets that may not all arrive: asked once, a lookup came back short.
        """
        half = self.options.query_wait / 2
        until = time.monotonic() + _MAX_WAITS * self.options.query_wait
        await asyncio.sleep(half)
        missing = [n for n in asked if not self._complete(zc, n)]
        self._query([ptr_question(name) for name in missing])
        await asyncio.sleep(half)
        partial = [n for n in missing if self._heard_of(zc, n) and not self._complete(zc, n)]
        if partial:
            self._query([ptr_question(name) for name in partial])
            await asyncio.sleep(half)
        # answers still arriving (a responder busy with a burst of lookups, or a loaded CPU):
        # wait while they flow, up to _MAX_WAITS x query_wait, rather than return short
        while (  # noqa: ASYNC110 - polls the clock and the tracker, no event to wait on
            self._asker is not None
            and time.monotonic() - self._asker.last_answer < half
            and time.monotonic() < until
            and any(not self._complete(zc, n) for n in asked)
        ):
            await asyncio.sleep(half / 2)

    def _heard_of(self, zc: Zeroconf, question: str) -> bool:
        """Whether anyone answered the PTR `question` (zeroconf's cache holds the PTRs)."""
        if question == f"_services.{self.options.domain}.":
            return bool(self._tracker.names)
        return bool(zc.cache.async_all_by_details(question, _TYPE_PTR, _CLASS_IN))

    def _complete(self, zc: Zeroconf, question: str) -> bool:
        """Whether every node a PTR answered `question` with is seen whole (SRV, TXT, address)."""
        if question == f"_services.{self.options.domain}.":
            return bool(self._tracker.names)
        pointers = zc.cache.async_all_by_details(question, _TYPE_PTR, _CLASS_IN)
        return bool(pointers) and all(
            isinstance(p, DNSPointer) and self._tracker.shows(p.alias_key) for p in pointers
        )

    async def get_service(self, name: str) -> list[Service]:
        zc = await self._zc()
        await self._ask(zc, [f"{name}.{self.options.domain}."])
        return self._tracker.services(name)

    async def list_services(self) -> list[Service]:
        zc = await self._zc()
        await self._ask(zc, [f"_services.{self.options.domain}."])
        await self._ask(zc, [f"{n}.{self.options.domain}." for n in self._tracker.names])
        return self._tracker.services(None)

    async def watch(self, service: str | None = None) -> Watcher:
        await self._zc()
        return self._tracker.watch(service)

    # -- time and shutdown -----------------------------------------------------------------

    async def _sweep(self) -> None:
        warned = False
        while True:
            await asyncio.sleep(SWEEP)
            try:
                self._query(self._tracker.sweep(self._expired))
            except Exception as exc:  # a bug here must not stop expiry for good
                if not warned:
                    warned = True
                    log.warning("%s: expiry sweep failed: %r", self._where, exc)

    async def aclose(self) -> None:
        """Stop answering and close the sockets; nodes not deregistered expire at their TTL.

        No goodbyes here: like the other backends, closing is not deregistering (a service
        deregisters on shutdown; a registry closed without that looks like a crash).
        """
        if self._closed:
            return
        self._closed = True
        aiozc, self._aiozc = self._aiozc, None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        pending = [*self._tasks, *([self._started] if self._started else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._asker is not None:
            self._asker.close()
        self._tracker.close()
        if aiozc is not None:
            registered = [m.info for m in self._mine.values()] + list(self._wildcards.values())
            aiozc.zeroconf.registry.async_remove(registered)  # else zeroconf says goodbye
            await aiozc.async_close()
