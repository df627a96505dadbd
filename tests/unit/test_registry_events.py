"""EventBuffer, the one bounded backlog behind every registry watcher: past `limit` unread
events or `max_bytes` of what they weigh, the backlog becomes one RESYNC."""

from __future__ import annotations

import asyncio

import pytest

from microweave.registry import Action, Event, Node, Service
from microweave.registry.events import MAX_BACKLOG, EventBuffer


def created(node_id: str) -> Event:
    return Event(Action.CREATE, Service("greeter", nodes=[Node(node_id, "127.0.0.1:1")]))


async def read_all(buffer: EventBuffer) -> list[tuple[Action, str]]:
    """What the buffer holds now, read through next() (which frees what it reads)."""
    out = []
    while buffer._queue.qsize():
        event = await buffer.next()
        out.append((event.action, ",".join(n.id for n in event.service.nodes)))
    return out


async def test_past_the_byte_bound_the_backlog_becomes_one_resync() -> None:
    buffer = EventBuffer("greeter", 1_000, max_bytes=250)
    for i in range(3):  # 3 x 100 bytes, unread: the third would make 300 > 250
        buffer.offer(created(f"n{i}"), 100)
    buffer.offer(created("n3"), 100)
    assert await read_all(buffer) == [(Action.RESYNC, ""), (Action.CREATE, "n3")]
    assert buffer.backlog == 0


async def test_reading_frees_the_bytes_it_read() -> None:
    buffer = EventBuffer(None, 1_000, max_bytes=250)
    for i in range(20):  # 2,000 bytes in all, but never more than 200 unread
        buffer.offer(created(f"a{i}"), 100)
        buffer.offer(created(f"b{i}"), 100)
        assert buffer.backlog == 200
        assert [e for e, _ in await read_all(buffer)] == [Action.CREATE, Action.CREATE]
        assert buffer.backlog == 0


async def test_one_event_heavier_than_the_bound_is_a_resync() -> None:
    buffer = EventBuffer("greeter", 1_000, max_bytes=250)
    buffer.offer(created("huge"), 251)
    buffer.offer(created("small"), 10)
    assert await read_all(buffer) == [(Action.RESYNC, ""), (Action.CREATE, "small")]
    assert buffer.backlog == 0


async def test_weightless_events_are_bounded_by_count_alone() -> None:
    buffer = EventBuffer("greeter", 3)
    assert buffer.max_bytes == MAX_BACKLOG
    for i in range(4):
        buffer.offer(created(f"n{i}"))
    buffer.offer(created("n4"))
    assert await read_all(buffer) == [(Action.RESYNC, ""), (Action.CREATE, "n4")]


async def test_close_drops_the_backlog_and_wakes_a_waiting_reader() -> None:
    buffer = EventBuffer("greeter", 10, max_bytes=1_000)
    waiting = asyncio.get_running_loop().create_task(buffer.next())
    await asyncio.sleep(0)
    buffer.close()
    with pytest.raises(StopAsyncIteration):
        await waiting
    buffer.offer(created("late"), 100)  # after close: ignored
    assert buffer.backlog == 0
    with pytest.raises(StopAsyncIteration):
        await buffer.next()
