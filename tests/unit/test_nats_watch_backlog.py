"""A NATS watcher's unread events are bounded in bytes, not only in count: announces come from
the network at up to 1 MiB each, so `watch_buffer` (10,000) of them would be 10 GB held for a
consumer that fell behind. Past MAX_BACKLOG bytes (64 MiB) the backlog becomes one RESYNC."""

from __future__ import annotations

from microweave.registry import Action, Endpoint, Event, Node, Service
from microweave.registry.events import MAX_BACKLOG
from microweave.registry.nats.watch import NatsWatcher
from microweave.registry.nats.wire import MAX_MESSAGE, Announce

# one string shared by every record: each announce weighs ~1 MiB as it would on the wire,
# while the test itself holds only one
BLOB = "x" * (MAX_MESSAGE - 4096)
COUNT = MAX_BACKLOG // len(BLOB) + 16  # more than the byte bound, far fewer than the count bound


async def _closed(_: NatsWatcher) -> None:
    return None


def big(node_id: str) -> Service:
    return Service(
        "greeter",
        version="1.0.0",
        endpoints=[Endpoint("Greeter.SayHello")],
        nodes=[Node(node_id, "127.0.0.1:1", {"blob": BLOB})],
    )


async def unread(watcher: NatsWatcher) -> list[Event]:
    out = []
    while len(watcher.events):
        out.append(await anext(watcher))
    return out


async def test_a_nats_watcher_s_backlog_is_bounded_in_bytes() -> None:
    watcher = NatsWatcher("greeter", buffer=10_000, default_ttl=90.0, on_close=_closed)
    for i in range(COUNT):  # ~80 MiB of announces nobody reads yet
        watcher.announce(Announce("create", big(f"n{i}"), 2), now=0)
    events = await unread(watcher)
    assert events[0].action is Action.RESYNC
    kept = [e.service.nodes[0].id for e in events[1:]]
    assert 0 < len(kept) < MAX_BACKLOG // len(BLOB)  # what came after the RESYNC, bounded
    assert kept[-1] == f"n{COUNT - 1}" and all(e.action is Action.CREATE for e in events[1:])
    assert watcher.events.backlog == 0  # read: nothing held

    # the nodes' DELETEs when their TTL runs out weigh what they held, too
    watcher.expire(now=10)
    events = await unread(watcher)
    assert events[0].action is Action.RESYNC
    assert 0 < len(events) - 1 < MAX_BACKLOG // len(BLOB)
    assert all(e.action is Action.DELETE for e in events[1:])
    await watcher.aclose()


async def test_small_announces_are_bounded_by_count_as_before() -> None:
    watcher = NatsWatcher("greeter", buffer=50, default_ttl=90.0, on_close=_closed)
    record = big("x").with_nodes([])
    for i in range(200):
        watcher.announce(Announce("create", record.with_nodes([Node(f"n{i}", "127.0.0.1:1")]), 2), now=0)
    events = await unread(watcher)
    assert events[0].action is Action.RESYNC and len(events) <= 50
    assert events[-1].service.nodes[0].id == "n199"
    # a heartbeat that changes nothing is no event, and weighs nothing
    watcher.announce(Announce("create", record.with_nodes([Node("n199", "127.0.0.1:1")]), 2), now=1)
    assert await unread(watcher) == [] and watcher.events.backlog == 0
    await watcher.aclose()


async def test_the_nodes_a_watcher_keeps_clocks_for_are_bounded_in_bytes() -> None:
    from microweave.registry.nats.watch import MAX_TRACKED_BYTES

    watcher = NatsWatcher("greeter", buffer=10_000, default_ttl=90.0, on_close=_closed)
    count = MAX_TRACKED_BYTES // len(BLOB) + 16
    for i in range(count):  # a peer announcing ~1 MiB records, each a new node
        watcher.announce(Announce("create", big(f"n{i}"), 2), now=0)
    assert watcher.tracked_bytes <= MAX_TRACKED_BYTES
    assert 0 < len(watcher.nodes) < count
    watcher.announce(Announce("delete", big("n0"), 2), now=1)  # a tracked node leaving frees room
    assert watcher.tracked_bytes <= MAX_TRACKED_BYTES - len(BLOB)
    await watcher.aclose()
    assert watcher.tracked_bytes == 0
