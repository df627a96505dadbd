"""The config sources against a hostile or broken peer, without a real engine: a fake Consul
agent on loopback that answers wrongly must not make the source spin, leak or crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from microweave.config.sources.consul import ConsulSource

VALUE = b'[{"Key":"p/a","Value":"MQ=="}]'


@contextlib.asynccontextmanager
async def fake_agent(answer: Callable[[web.Request], web.Response]) -> AsyncIterator[tuple[str, list[float]]]:
    """An HTTP server on a free loopback port answering every KV request with `answer`;
    yields its address and the loop times of the requests it got."""
    seen: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(asyncio.get_running_loop().time())
        return answer(request)

    app = web.Application()
    app.router.add_route("*", "/v1/kv/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def _watch_for(source: ConsulSource, seconds: float) -> int:
    yields = 0

    async def follow() -> None:
        nonlocal yields
        async for _ in source.watch():
            yields += 1

    task = asyncio.create_task(follow())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return yields


def _no_index(request: web.Request) -> web.Response:
    return web.Response(body=VALUE, content_type="application/json")  # no X-Consul-Index


def _backwards(request: web.Request) -> web.Response:
    # a plain read says 5, every blocking query says 1: the index "goes backwards" each time
    index = "1" if "index" in request.query else "5"
    return web.Response(body=VALUE, headers={"X-Consul-Index": index})


def _always_moving(request: web.Request) -> web.Response:
    # answers at once with an index that moves every time and the same content
    _always_moving.n += 1  # type: ignore[attr-defined]
    return web.Response(body=VALUE, headers={"X-Consul-Index": str(_always_moving.n)})  # type: ignore[attr-defined]


_always_moving.n = 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("answer", [_no_index, _backwards, _always_moving], ids=lambda f: f.__name__)
async def test_an_agent_whose_index_misbehaves_is_no_busy_loop(
    answer: Callable[[web.Request], web.Response], caplog: pytest.LogCaptureFixture
) -> None:
    """An agent that sends no X-Consul-Index, one that always goes backwards, or one that
    answers at once with an index moving for nothing: a blocking query that does not block.
    The source spaced queries out only when the index stood still, so each of these made it
    send about 2,000 requests a second, forever. At most 20 queries a second (and reads)."""
    caplog.set_level(logging.DEBUG, logger="microweave")
    async with fake_agent(answer) as (address, seen):
        source = ConsulSource(address, "p", wait=5)
        try:
            assert "a" in await source.read()
            window = 2.0
            start = len(seen)
            await _watch_for(source, window)
            requests = len(seen) - start
        finally:
            await source.aclose()
    # 20 queries a second plus a read after each reset, and slack for a slow machine
    assert requests <= 2 * 20 * window + 5, f"{requests} requests in {window} s: a busy loop"
    assert "Traceback" not in caplog.text
