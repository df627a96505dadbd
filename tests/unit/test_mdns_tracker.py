"""The mDNS tracker fed records directly (as zeroconf hands them over), no sockets: what a LAN
host announcing many nodes, each on a host of its own, costs us per record.

go-micro puts every node of a machine on that machine's host name, so an address record
concerns the nodes of one host; a record for a host must not cost a pass over every node
heard (with 10,000 nodes whose addresses expire together, the sweep took minutes).
"""

from __future__ import annotations

import socket
import time

import pytest
from zeroconf import RecordUpdate
from zeroconf._dns import DNSAddress, DNSService, DNSText

from microweave.registry import Node, Service
from microweave.registry.mdns.records import _txt_wire, encode_txt
from microweave.registry.mdns.tracker import Tracker

DOMAIN = "micro"
_A, _SRV, _TXT, _IN = 1, 33, 16, 1


def tracker_with(nodes: int) -> Tracker:
    """A tracker that heard `nodes` nodes of greeter, node i on host `h<i>.local.`."""
    tracker = Tracker(DOMAIN, where="test", max_nodes=100_000, watch_buffer=10)
    txt = _txt_wire(encode_txt(Service("greeter"), Node("x", "10.0.0.1:1")))
    records = []
    for i in range(nodes):
        instance = f"n{i}.greeter.{DOMAIN}."
        records += [
            RecordUpdate(DNSService(instance, _SRV, _IN, 120, 0, 0, 1000, f"h{i}.local."), None),
            RecordUpdate(DNSText(instance, _TXT, _IN, 120, txt), None),
            RecordUpdate(DNSAddress(f"h{i}.local.", _A, _IN, 120, socket.inet_aton("10.0.0.1")), None),
        ]
    tracker.async_update_records(None, 0, records)
    tracker.async_update_records_complete()
    assert len(tracker.services("greeter")[0].nodes) == nodes
    return tracker


def costs(nodes: int, hosts: int) -> tuple[float, float]:
    """Seconds to take a new address for `hosts` hosts, and to sweep their addresses out."""
    tracker = tracker_with(nodes)
    fresh = [
        RecordUpdate(DNSAddress(f"h{i}.local.", _A, _IN, 120, socket.inet_aton("10.0.0.2")), None)
        for i in range(hosts)
    ]
    start = time.perf_counter()
    tracker.async_update_records(None, 0, fresh)
    tracker.async_update_records_complete()
    taken = time.perf_counter() - start
    assert {n.address for n in tracker.services("greeter")[0].nodes} == {"10.0.0.1:1000"}  # v4: min
    for i in range(hosts):
        addresses = tracker._hosts[f"h{i}.local."]
        for address in addresses:
            addresses[address] = 0.0  # expired
    start = time.perf_counter()
    tracker.sweep(lambda key: None)
    swept = time.perf_counter() - start
    assert len(tracker.services("greeter")[0].nodes) == nodes - hosts  # no address: not visible
    return taken, swept


def test_address_records_cost_no_pass_over_every_node() -> None:
    """10 times the nodes and 10 times the hosts changing: about 10 times the work (the sweep
    passes over every node once anyway); a pass over every node per host would be 100 times.
    The small case takes about a millisecond, so a busy machine skews it: best of 5, and a bound
    (45) halfway between linear and quadratic on a log scale."""
    small = [costs(500, 100) for _ in range(5)]
    large = [costs(5_000, 1_000) for _ in range(5)]
    for which in (0, 1):  # taking new addresses, sweeping expired ones
        ratio = min(c[which] for c in large) / min(c[which] for c in small)
        assert ratio < 45, (which, ratio)


def test_a_host_s_nodes_follow_its_address() -> None:
    tracker = tracker_with(3)
    moved = DNSAddress("h1.local.", _A, _IN, 120, socket.inet_aton("10.0.0.9"))
    gone = DNSAddress("h1.local.", _A, _IN, 0, socket.inet_aton("10.0.0.1"))
    tracker.async_update_records(None, 0, [RecordUpdate(moved, None), RecordUpdate(gone, None)])
    tracker.async_update_records_complete()
    by_id = {n.id: n.address for n in tracker.services("greeter")[0].nodes}
    assert by_id == {"n0": "10.0.0.1:1000", "n1": "10.0.0.9:1000", "n2": "10.0.0.1:1000"}
    goodbye = DNSService(f"n1.greeter.{DOMAIN}.", _SRV, _IN, 0, 0, 0, 1000, "h1.local.")
    tracker.async_update_records(None, 0, [RecordUpdate(goodbye, None)])
    tracker.async_update_records_complete()
    assert {n.id for n in tracker.services("greeter")[0].nodes} == {"n0", "n2"}
    assert "h1.local." not in tracker._hosts  # nobody lives there any more: forgotten


async def test_a_watcher_s_backlog_is_bounded_in_bytes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TXT may inflate to 256 KiB: `watch_buffer` (10,000 events) alone would let a LAN
    host that keeps changing its records pile gigabytes on a slow consumer. Past MAX_BACKLOG
    bytes (200 KB here) the watcher says RESYNC."""
    from microweave.registry import Action
    from microweave.registry.mdns import tracker as tracker_module

    monkeypatch.setattr(tracker_module, "MAX_BACKLOG", 200_000)
    tracker = Tracker(DOMAIN, where="test", max_nodes=100, watch_buffer=10_000)
    watcher = tracker.watch("greeter")
    for i in range(6):  # 6 x ~50 KB, unread
        big = Node(f"n{i}", "10.0.0.1:1", {"blob": f"{i}" * 50_000})
        txt = _txt_wire(encode_txt(Service("greeter"), big))
        instance = f"n{i}.greeter.{DOMAIN}."
        records = [
            RecordUpdate(DNSService(instance, _SRV, _IN, 120, 0, 0, 1000, "h.local."), None),
            RecordUpdate(DNSText(instance, _TXT, _IN, 120, txt), None),
            RecordUpdate(DNSAddress("h.local.", _A, _IN, 120, socket.inet_aton("10.0.0.1")), None),
        ]
        tracker.async_update_records(None, 0, records)
        tracker.async_update_records_complete()
    first = await anext(watcher)
    assert first.action is Action.RESYNC
    rest = []
    while len(watcher.events):
        rest.append(await anext(watcher))
    assert [e.action for e in rest] == [Action.CREATE] * len(rest) and 0 < len(rest) < 4
    await watcher.aclose()
