"""The config sources against a hostile or broken peer, without a real engine: a fake Consul
agent on loopback that answers wrongly must not make the source spin, leak or crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from config_kit import eventually

from microweave._backends import load_config_source
from microweave.config import Config
from microweave.config.sources.consul import ConsulSource
from microweave.config.sources.etcd import EtcdSource
from microweave.config.sources.memory import MemorySource

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


EVIL = "evil\nERROR:microweave.config:forged line\x1b[31m"


async def test_a_key_with_control_characters_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A key holding a newline and a terminal escape (anyone who can write a key can choose
    its name) was written as it is into the rejection line: a forged log line, a recoloured
    terminal. The line shows such a key escaped."""
    caplog.set_level(logging.DEBUG, logger="microweave")
    memory = MemorySource()
    async with Config([memory]):
        memory.put(EVIL, "{bad", "text")
        await eventually(lambda: "rejected" in caplog.text, "the rejection line")
    assert_escaped(caplog)


def assert_escaped(caplog: pytest.LogCaptureFixture) -> None:
    """Every rejection line is one line, with no terminal escape in it."""
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert rejected, caplog.text
    assert all("\n" not in line and "\x1b" not in line for line in rejected), rejected


def test_etcd_and_consul_keys_with_control_characters_are_no_settings() -> None:
    """Under the prefix, such a key is ignored (counted in the read's warning), as a key that
    is not UTF-8 is: it reaches no log line, no `config watch` output, no terminal."""
    etcd = load_config_source("etcd://127.0.0.1:1/p")
    consul = ConsulSource("127.0.0.1:1", "p")
    assert isinstance(etcd, EtcdSource)
    for name in (EVIL, "a\x00b", "tab\there", "bell\x07"):
        assert etcd._dotted(b"/p/" + name.encode()) is None
        assert consul._dotted("p/" + name) is None
    assert etcd._dotted("/p/db/pört".encode()) == consul._dotted("p/db/pört") == "db.pört"
    assert etcd._dotted(b"/p/a b") == consul._dotted("p/a b") == "a b"


async def test_a_document_key_with_control_characters_cannot_forge_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The reason of a rejection may quote a key from inside a document (an unset ${VAR}
    names where it is): escaped as well."""
    caplog.set_level(logging.DEBUG, logger="microweave")
    memory = MemorySource()
    async with Config([memory]):
        memory.put("", '"evil\\nERROR:microweave.config:forged\\u001b[31m": ${UNSET_HOSTILE_VAR_1}\n', "yaml")
        await eventually(lambda: "rejected" in caplog.text, "the rejection line")
    assert_escaped(caplog)
