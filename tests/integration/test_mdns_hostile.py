"""A hostile host on the LAN answering in our mDNS domain (in a private network namespace):
its malformed records are skipped, the honest nodes beside them still found, and nothing
raises in zeroconf's packet handling (no traceback per packet, no listener left broken).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from engines.mdns import Netns, fresh_domain, go_micro_instance, go_micro_txt, open_mdns
from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from microweave.registry import Action, Node, Service
from microweave.registry.mdns.records import decode_txt
from microweave.testing import capture_logs


def nested_txt(depth: int) -> bytes:
    """go-micro's TXT JSON whose one endpoint's request Value nests `depth` levels deep."""
    value = '{"name":"a","type":"t","values":[' * depth + '{"name":"x","type":"y"}' + "]}" * depth
    return ('{"Service":"greeter","Version":"1","Endpoints":[{"name":"E","request":' + value + "}]}").encode()


def strings(txt: dict[str, Any] | bytes) -> list[bytes]:
    return go_micro_txt(txt if isinstance(txt, bytes) else json.dumps(txt).encode())


@pytest.mark.parametrize("depth", [3000, 200])
def test_a_txt_nesting_values_deeply_is_refused(depth: int) -> None:
    """3,000 levels: past msgspec's recursion limit; 200: decodes, but nothing nests so."""
    with pytest.raises(ValueError, match="nest"):
        decode_txt(strings(nested_txt(depth)))


def test_txt_records_of_other_shapes_are_refused() -> None:
    for bad in (b"[1,2]", b'"text"', b"null", b'{"Service": 5}', b"\xff\xfe"):
        with pytest.raises(ValueError):
            decode_txt(strings(bad))
    with pytest.raises(ValueError):
        decode_txt([b"not hex at all"])


def info(domain: str, node: str, port: int, txt: list[bytes]) -> ServiceInfo:
    """A go-micro-shaped instance `<node>.greeter.<domain>.` on host `evil.`."""
    made: ServiceInfo = go_micro_instance("greeter", node, domain, port=port, txt=txt, host="evil.")
    return made


async def test_a_hostile_host_cannot_break_lookups(mdns_netns: Netns) -> None:
    domain = fresh_domain()
    with mdns_netns.entered():
        raw = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    good = {"Service": "greeter", "Version": "1", "Metadata": {"ok": "1"}}
    infos = [
        info(domain, "deep", 1, strings(nested_txt(3000))),
        info(domain, "deep2", 2, strings(nested_txt(200))),
        info(domain, "garbage", 3, [b"\x00\xff" * 100]),
        info(domain, "other", 4, strings({"Service": "billing", "Version": "1"})),  # not its name
        info(domain, "good", 5, strings(good)),
    ]
    try:
        await raw.zeroconf.async_wait_for_start()
        for each in infos:
            raw.zeroconf.registry.async_add(each)  # answers queries, as go-micro's server does
        with capture_logs(logging.WARNING) as logs:
            async with open_mdns(mdns_netns, f"mdns://?domain={domain}&interface=lo") as registry:
                [service] = await registry.get_service("greeter")
                assert [(n.id, n.address) for n in service.nodes] == [("good", "127.0.0.1:5")]
                assert await registry.get_service("billing") == []
        assert [e["message"] for e in logs] == []  # no traceback from zeroconf's packet handler
    finally:
        for each in infos:
            raw.zeroconf.registry.async_remove(each)
        await raw.async_close()


async def test_node_ids_and_names_keep_their_case_and_odd_characters(mdns_netns: Netns) -> None:
    """DNS compares names without case, but the node id a reader reports is the owner's, byte
    for byte (a node is named `<Service>-<uuid>`, so upper case is common)."""
    domain = fresh_domain()
    url = f"mdns://?domain={domain}&interface=lo"
    node = Node(id="Greeter-ABC def_ü", address="127.0.0.1:7", metadata={})
    service = Service(name="Go.Micro.Greeter", version="1", nodes=[node])
    async with open_mdns(mdns_netns, url) as owner, open_mdns(mdns_netns, url) as reader:
        async with await reader.watch() as watcher:
            await owner.register(service, ttl=2)
            event = await asyncio.wait_for(anext(watcher), 15)
        assert (event.action, event.service) == (Action.CREATE, service)
        assert await reader.get_service("Go.Micro.Greeter") == [service]


async def test_a_goodbye_for_our_node_from_another_host(mdns_netns: Netns) -> None:
    """mDNS has no authentication: any host may say goodbye for any name, and readers drop
    the node. Its owner keeps it, and its next heartbeat brings it back everywhere."""
    from zeroconf._dns import DNSService, DNSText
    from zeroconf._protocol.outgoing import DNSOutgoing

    domain = fresh_domain()
    url = f"mdns://?domain={domain}&interface=lo"
    mine = Service(name="greeter", version="1", nodes=[Node(id="n1", address="127.0.0.1:9")])
    with mdns_netns.entered():
        raw = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        await raw.zeroconf.async_wait_for_start()
        async with open_mdns(mdns_netns, url) as owner, open_mdns(mdns_netns, url) as reader:
            async with await reader.watch("greeter") as watcher:
                await owner.register(mine, ttl=30)
                assert (await asyncio.wait_for(anext(watcher), 15)).action is Action.CREATE
                name = f"n1.greeter.{domain}."
                goodbye = DNSOutgoing(0x8400)  # a response, authoritative
                goodbye.add_answer_at_time(DNSService(name, 33, 1, 0, 0, 0, 9, name), 0)
                goodbye.add_answer_at_time(DNSText(name, 16, 1, 0, b"\x00"), 0)
                raw.zeroconf.async_send(goodbye)
                assert (await asyncio.wait_for(anext(watcher), 15)).action is Action.DELETE
                assert await owner.get_service("greeter") == [mine]  # ours: not the LAN's to end
                await owner.register(mine, ttl=30)  # the heartbeat
                assert (await asyncio.wait_for(anext(watcher), 15)).action is Action.CREATE
            assert await reader.get_service("greeter") == [mine]
    finally:
        await raw.async_close()
