"""mdns:// across processes and on the wire, in a private network namespace per test.

A service process registers over mDNS and a second process (the CLI) discovers and calls it;
SIGKILLed, its node leaves within TTL + 1 s. The records on the wire are go-micro's (read here
with raw zeroconf, decoded the way go-micro's decode() does), a go-micro node is read, a node
registered before a reader started is found by query, and a LAN host announcing thousands of
nodes cannot make a registry track more than `max_nodes`. Also: the namespace really isolates
(a registry in another namespace sees nothing), which is what the docs say of containers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engines.mdns import Netns, fresh_domain, go_micro_instance, go_micro_txt, open_mdns
from helpers import REPO, SERVICES, LoggedProcess, async_wait_until
from zeroconf import IPVersion, RecordUpdate, RecordUpdateListener, Zeroconf
from zeroconf._dns import DNSPointer, DNSRecord, DNSService, DNSText
from zeroconf.asyncio import AsyncZeroconf

from microweave.registry import Action, Endpoint, Node, Service, Watcher
from microweave.registry.mdns import MdnsRegistry, wire_ttl
from microweave.testing import capture_logs

TTL = 2.0
WAIT = 15.0


def url(domain: str, **extra: Any) -> str:
    return f"mdns://?domain={domain}&interface=lo" + "".join(f"&{k}={v}" for k, v in extra.items())


def record(node: str = "n1", *, name: str = "greeter", address: str = "127.0.0.1:8080") -> Service:
    return Service(
        name=name,
        version="1.2.3",
        metadata={"owner": "tests"},
        endpoints=[Endpoint(name="Greeter.SayHello", metadata={"stream": "unary"})],
        nodes=[Node(id=node, address=address, metadata={"protocol": "grpc", "registry": "mdns"})],
    )


async def next_event(watcher: Watcher, timeout: float = WAIT) -> Any:
    return await asyncio.wait_for(anext(watcher), timeout)


# -- two processes ---------------------------------------------------------------------------


@pytest.fixture
def greeter(mdns_netns: Netns, tmp_path: Path) -> Iterator[tuple[LoggedProcess, str]]:
    """A greeter process registered over mDNS in the test's namespace (TTL 2 s)."""
    domain = fresh_domain()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_")}
    env.update(MICRO_REGISTRY=url(domain), PYTHONUNBUFFERED="1")
    argv = mdns_netns.argv(sys.executable, str(SERVICES / "greeter.py"), "--ttl", str(TTL))
    process = LoggedProcess(argv, env=env, log_path=tmp_path / "greeter.log")
    try:
        yield process, domain
    finally:
        process.stop()


def call(netns: Netns, registry_url: str, name: str) -> subprocess.CompletedProcess[str]:
    """`microweave call` in a process of its own, inside the namespace."""
    argv = netns.argv(
        sys.executable, "-m", "microweave.cli", "call", "--registry", registry_url, "--timeout", "10",
        "greeter", "Greeter.SayHello", json.dumps({"name": name}),
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_")}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


async def test_a_client_process_calls_a_service_process_found_over_mdns_and_a_sigkill_leaves_within_ttl(
    mdns_netns: Netns, greeter: tuple[LoggedProcess, str]
) -> None:
    process, domain = greeter
    async with open_mdns(mdns_netns, url(domain)) as watcher_side:
        async with await watcher_side.watch("greeter") as watcher:
            event = await next_event(watcher, 60)  # the process starting and registering
            assert event.action is Action.CREATE, process.output()
            [node] = event.service.nodes
            assert node.address.startswith("127.0.0.1:")

            done = await asyncio.to_thread(call, mdns_netns, url(domain), "mdns")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["message"] == "Hello mdns"
            assert json.loads(done.stdout)["node"] == node.id

            process.signal(signal.SIGKILL)  # no goodbye: only the TTL can remove it
            killed = time.monotonic()
            while (event := await next_event(watcher)).action is not Action.DELETE:
                assert event.action is Action.UPDATE  # a heartbeat in flight is harmless
            gone_after = time.monotonic() - killed
        assert {n.id for n in event.service.nodes} == {node.id}
        assert gone_after <= wire_ttl(TTL) + 1.0, f"gone {gone_after:.2f} s after SIGKILL"
        assert await watcher_side.get_service("greeter") == []

    done = await asyncio.to_thread(call, mdns_netns, url(domain), "again")
    assert done.returncode == 1 and "greeter" in done.stderr and "Traceback" not in done.stderr


# -- the records on the wire -------------------------------------------------------------------


class Collect(RecordUpdateListener):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[DNSRecord] = []

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        self.records.extend(r.new for r in records)

    def async_update_records_complete(self) -> None:
        pass


def raw_zeroconf(netns: Netns) -> AsyncZeroconf:
    with netns.entered():
        return AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)


def go_micro_decode(strings: list[bytes]) -> Any:
    """go-micro's decode(): join the TXT strings, hex-decode, inflate, JSON."""
    return json.loads(zlib.decompress(bytes.fromhex(b"".join(strings).decode())))


def txt_strings(text: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(text):
        out.append(text[i + 1 : i + 1 + text[i]])
        i += 1 + text[i]
    return out


async def test_records_are_go_micros(mdns_netns: Netns) -> None:
    domain = fresh_domain()
    raw = raw_zeroconf(mdns_netns)
    heard = Collect()
    raw.zeroconf.async_add_listener(heard, None)
    service = record("node-1")
    service.endpoints.extend(Endpoint(name=f"Greeter.Method{i}", metadata={"i": str(i)}) for i in range(40))
    try:
        async with open_mdns(mdns_netns, url(domain)) as registry:
            await registry.register(service, ttl=TTL)

            def by(kind: type, name: str) -> list[Any]:
                return [r for r in heard.records if isinstance(r, kind) and r.name == name]

            instance = f"node-1.greeter.{domain}."
            await async_wait_until(
                lambda: asyncio.sleep(0, by(DNSText, instance) and by(DNSPointer, f"_services.{domain}.")),
                timeout=WAIT,
                what="the announcement",
            )
            [ptr, *_] = by(DNSPointer, f"greeter.{domain}.")
            assert ptr.alias == instance
            [srv, *_] = by(DNSService, instance)
            assert (srv.port, srv.server) == (8080, instance)
            [txt, *_] = by(DNSText, instance)
            assert txt.ttl == wire_ttl(TTL)
            strings = txt_strings(txt.text)
            assert len(strings) > 1 and all(len(s) <= 255 for s in strings)  # go-micro's cut
            assert all(len(s) == 255 for s in strings[:-1])
            decoded = go_micro_decode(strings)
            # Go's names, in go-micro's order; plus the service's metadata, which go-micro's
            # record has no field for (its decoder ignores the extra key)
            assert list(decoded) == ["Metadata", "Service", "Version", "Endpoints", "ServiceMetadata"]
            assert decoded["ServiceMetadata"] == {"owner": "tests"}
            assert decoded["Service"] == "greeter" and decoded["Version"] == "1.2.3"
            assert decoded["Metadata"] == {"protocol": "grpc", "registry": "mdns"}  # the node's
            assert decoded["Endpoints"][0] == {
                "name": "Greeter.SayHello",
                "request": None,
                "response": None,
                "metadata": {"stream": "unary"},
            }
            [wildcard, *_] = by(DNSPointer, f"_services.{domain}.")
            assert wildcard.alias == f"greeter._services.{domain}."  # what ListServices browses

            bare = record("node-2").with_nodes([Node(id="node-2", address="127.0.0.1:8081")])
            bare.metadata.clear()  # no service metadata: exactly go-micro's four fields
            await registry.register(bare, ttl=TTL)
            await async_wait_until(
                lambda: asyncio.sleep(0, by(DNSText, f"node-2.greeter.{domain}.")),
                timeout=WAIT,
                what="the second announcement",
            )
            [txt, *_] = by(DNSText, f"node-2.greeter.{domain}.")
            decoded = go_micro_decode(txt_strings(txt.text))
            assert list(decoded) == ["Metadata", "Service", "Version", "Endpoints"]
            assert decoded["Metadata"] == {}

            heard.records.clear()
            await registry.deregister(service)
            await async_wait_until(
                lambda: asyncio.sleep(0, [r for r in by(DNSText, instance) if r.ttl == 0]),
                timeout=WAIT,
                what="the goodbye",
            )
    finally:
        await raw.async_close()


async def test_a_go_micro_node_is_read(mdns_netns: Netns) -> None:
    """Announced as go-micro does: host = the machine's name, Go's JSON (null maps), no TTL."""
    domain = fresh_domain()
    txt = {
        "Metadata": {"protocol": "grpc", "server": "grpc"},
        "Service": "go.micro.srv.greeter",  # go-micro's classic dotted names
        "Version": "latest",
        "Endpoints": [
            {"name": "Greeter.Hello", "request": {"name": "Request", "type": "Request", "values": None},
             "response": None, "metadata": None},
        ],
    }  # fmt: skip
    info = go_micro_instance(
        "go.micro.srv.greeter",
        "greeter-7f3a",
        domain,
        port=50071,
        txt=go_micro_txt(json.dumps(txt).encode()),
        host="gohost.",
    )
    raw = raw_zeroconf(mdns_netns)
    try:
        await raw.zeroconf.async_wait_for_start()
        raw.zeroconf.registry.async_add(info)  # answers queries only, as go-micro's server does
        async with open_mdns(mdns_netns, url(domain)) as registry:
            [service] = await registry.get_service("go.micro.srv.greeter")  # found by its query
            assert (service.name, service.version) == ("go.micro.srv.greeter", "latest")
            assert service.nodes == [
                Node(
                    id="greeter-7f3a",
                    address="127.0.0.1:50071",
                    metadata={"protocol": "grpc", "server": "grpc"},
                )
            ]
            assert service.endpoints[0].name == "Greeter.Hello" and service.endpoints[0].metadata == {}
            assert service.endpoints[0].request is not None
            assert service.endpoints[0].request.name == "Request"
            assert "go.micro.srv.greeter" in {s.name for s in await registry.list_services()}
    finally:
        raw.zeroconf.registry.async_remove(info)
        await raw.async_close()


async def test_a_reader_started_later_finds_nodes_by_query(mdns_netns: Netns) -> None:
    domain = fresh_domain()
    async with open_mdns(mdns_netns, url(domain)) as owner:
        await owner.register(record("early"), ttl=TTL)
        await asyncio.sleep(1.0)  # its announcements are over: only a query can find it now
        async with open_mdns(mdns_netns, url(domain)) as reader:
            [service] = await reader.get_service("greeter")
            assert service == record("early")
            async with open_mdns(mdns_netns, url(domain)) as lister:
                assert [s.name for s in await lister.list_services()] == ["greeter"]


async def test_a_reader_on_every_interface_finds_nodes_by_query(mdns_netns: Netns) -> None:
    """`mdns://` with no interface= (the docs' first example) asks on every interface, not
    where the kernel routes multicast: in a namespace (or container, or offline host) with no
    default route that is nowhere (ENETUNREACH, silently)."""
    domain = fresh_domain()
    async with open_mdns(mdns_netns, url(domain)) as owner:
        await owner.register(record("early"), ttl=TTL)
        await asyncio.sleep(1.0)  # its announcements are over: only a query can find it now
        async with open_mdns(mdns_netns, f"mdns://?domain={domain}") as reader:
            assert await reader.get_service("greeter") == [record("early")]


async def test_a_watcher_on_another_instance_sees_create_update_delete(mdns_netns: Netns) -> None:
    domain = fresh_domain()
    async with (
        open_mdns(mdns_netns, url(domain)) as owner,
        open_mdns(mdns_netns, url(domain)) as reader,
        await reader.watch("greeter") as watcher,
    ):
        await owner.register(record(address="127.0.0.1:1"), ttl=TTL)
        event = await next_event(watcher)
        assert (event.action, event.service) == (Action.CREATE, record(address="127.0.0.1:1"))
        await owner.register(record(address="127.0.0.1:2"), ttl=TTL)
        event = await next_event(watcher)
        assert (event.action, event.service) == (Action.UPDATE, record(address="127.0.0.1:2"))
        await owner.deregister(record())
        event = await next_event(watcher)
        assert (event.action, [n.id for n in event.service.nodes]) == (Action.DELETE, ["n1"])


# -- bounds and isolation --------------------------------------------------------------------


async def test_a_flood_of_announced_nodes_is_capped(mdns_netns: Netns) -> None:
    domain = fresh_domain()
    cap = 50
    async with (
        open_mdns(mdns_netns, url(domain, max_nodes=cap)) as target,
        open_mdns(mdns_netns, url(domain)) as hostile,
    ):
        with capture_logs(logging.WARNING, logger="microweave.registry") as logs:
            for start in range(0, 1000, 100):  # 1,000 nodes of 10 services, no TTL (120 s)
                await asyncio.gather(
                    *(hostile.register(record(f"n{i}", name=f"s{i % 10}", address=f"127.0.0.1:{i + 1}"))
                      for i in range(start, start + 100))
                )  # fmt: skip
            await async_wait_until(
                lambda: asyncio.sleep(0, len(target._tracker.heard) >= cap),
                timeout=WAIT,
                what="the target to fill up",
            )
            await asyncio.sleep(0.5)
            assert len(target._tracker.heard) == cap
            assert sum(len(s.nodes) for s in await target.list_services()) <= cap
        warnings = [e["message"] for e in logs if "ignoring new ones" in e["message"]]
        assert len(warnings) == 1, [e["message"] for e in logs]
        assert repr(target) in warnings[0]  # says which registry


async def test_another_network_namespace_sees_nothing(mdns_netns: Netns) -> None:
    """What the docs say of containers and pods: multicast stays in its network namespace."""
    domain = fresh_domain()
    other = Netns()
    try:
        async with (
            open_mdns(mdns_netns, url(domain)) as here,
            open_mdns(other, url(domain)) as there,
            open_mdns(mdns_netns, url(domain)) as neighbour,
        ):
            await here.register(record("inside"), ttl=TTL)
            assert [n.id for s in await neighbour.get_service("greeter") for n in s.nodes] == ["inside"]
            await asyncio.sleep(1.0)  # announcements and a query: nothing crosses
            assert await there.get_service("greeter") == []
            assert await there.list_services() == []
    finally:
        other.close()


async def test_bad_urls_and_addresses_say_what_to_fix(mdns_netns: Netns) -> None:
    from microweave.errors import ConfigurationError, RegistryError
    from microweave.registry import from_url

    with pytest.raises(ConfigurationError, match="takes no address"):
        from_url("mdns://somehost:5353")
    with pytest.raises(ConfigurationError, match="ttl"):
        from_url("mdns://?ttl=soon")
    # a typo'd option was ignored: the registry ran with the default TTL, or on every interface
    with pytest.raises(ConfigurationError, match=r"unknown option tll.*did you mean ttl\?"):
        from_url("mdns://?tll=3")
    with pytest.raises(ConfigurationError, match=r"unknown option interfce.*did you mean interface\?"):
        from_url("mdns://?interfce=lo")
    with pytest.raises(ConfigurationError, match="unknown option colour"):
        from_url("mdns://", colour="red")
    registry = from_url(f"mdns://?domain={fresh_domain()}&interface=nosuch0")
    assert isinstance(registry, MdnsRegistry)
    with mdns_netns.entered(), pytest.raises(RegistryError, match=r"interface 'nosuch0'.*interfaces: lo"):
        registry.open()
    await registry.aclose()
    async with open_mdns(mdns_netns, url(fresh_domain())) as good:
        with pytest.raises(RegistryError, match=r"mdns://\?domain=.*not IP:port"):
            await good.register(record(address="greeter.example:80"))
        with pytest.raises(RegistryError, match="DNS name"):
            await good.register(record(node="x" * 64))


def test_a_txt_record_inflating_past_the_limit_is_refused() -> None:
    from microweave.registry.mdns.records import MAX_TXT_JSON, decode_txt

    big = json.dumps({"Service": "s", "Version": "1", "Metadata": {"x": "y" * MAX_TXT_JSON}})
    packed = zlib.compress(big.encode(), 9).hex().encode()
    assert len(packed) < 9000  # it fits in one mDNS packet
    with pytest.raises(ValueError, match="inflates"):
        decode_txt([packed[i : i + 255] for i in range(0, len(packed), 255)])


async def test_aclose_leaves_nothing_behind(mdns_netns: Netns) -> None:
    """Sockets (zeroconf's and the asker's), tasks (sweeper, announcements, start) and
    threads: none left after aclose(), used or not, on every interface or one."""
    import threading

    def held() -> tuple[int, int, int]:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return len(os.listdir("/proc/self/fd")), threading.active_count(), len(others)

    domain = fresh_domain()
    before = held()
    for registry_url in (url(domain), f"mdns://?domain={domain}"):
        registry = open_mdns(mdns_netns, registry_url)
        await registry.register(record(), ttl=TTL)  # announcements still pending at close
        async with await registry.watch(), await registry.watch("greeter"):
            await registry.get_service("other")
            await registry.list_services()
        await registry.aclose()
        unused = open_mdns(mdns_netns, registry_url)
        await unused.aclose()
        await unused.aclose()
        await async_wait_until(
            lambda: asyncio.sleep(0, held() == before), timeout=5, what=f"{before} held again"
        )
