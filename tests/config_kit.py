"""What the config tests share: the engine-free sources of the conformance suite (memory and
file), the waits every config test uses, and the must-show scenarios that etcd and Consul run
alike (tests/integration/test_config_etcd.py and test_config_consul.py), each parametrized by
how the engine writes a key, stops and starts, and spells its URL, so that both engines are
held to one scenario, not to two copies that drift apart.

Each factory takes the pytest request and yields a fresh, empty, writable Source of its own,
as the engines' factories (`@config_backend` in tests/engines/) do. A file is not writable by
design (the config reads it; people and deploy tools write it), so the file factory yields a
`WrittenFile`: a FileSource whose `set` and `delete` write the file, as a deploy would (a new
file renamed over the old one), from the keys set so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import msgspec
import pytest
from helpers import async_wait_until

from microweave import Client, Context, Service
from microweave._backends import load_config_source
from microweave.config import Change, Config, ConfigWatch, Item, Source
from microweave.config.parse import ParseError, parse
from microweave.config.sources.file import FileSource
from microweave.config.sources.memory import MemorySource
from microweave.config.tree import build
from microweave.errors import Unavailable
from microweave.testing import capture_logs

__all__ = [
    "CONFIG_KIT",
    "WAIT",
    "App",
    "WrittenFile",
    "eventually",
    "fresh_prefix",
    "next_change",
    "prefix_is_bounded",
    "service_rides_out_an_outage",
    "settle",
    "unreachable_at_start",
    "updates_reach_a_bound_model_in_order",
    "writer",
]

T = TypeVar("T")

#: how long an engine test waits for anything a source does asynchronously (seconds)
WAIT = 30.0

#: how often the file factory's source looks for a change (seconds): short, so tests are
FILE_INTERVAL = 0.05


class WrittenFile(FileSource):
    """A YAML file rewritten whole on each set/delete. The keys set are laid out the way an
    etcd or Consul source lays out its keys (the "" key is a YAML document at the root, a
    dotted key is a "text" leaf, deeper keys over the document), so the same test means the
    same thing here; a key whose text does not parse makes the whole file that text (a file
    holds one document: one bad part is a bad file)."""

    writable = True
    #: an error about any key names the file's one document, "(document)"
    one_document = True

    def __init__(self, path: Path) -> None:
        path.write_text("{}\n")
        super().__init__(path, interval=FILE_INTERVAL)
        self._texts: dict[str, str] = {}

    async def set(self, key: str, value: str) -> None:
        self._texts[key] = value
        self._write()

    async def delete(self, key: str) -> None:
        if self._texts.pop(key, None) is not None:
            self._write()

    def _write(self) -> None:
        parsed: dict[str, Any] = {}
        body = None
        for key, text in self._texts.items():
            try:
                parsed[key] = parse(Item(text, "yaml" if key == "" else "text"), root=key == "")
            except ParseError:
                body = text  # the bad text is the file
                break
        if body is None:
            body = json.dumps(build(parsed.items()))  # JSON is YAML
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(body)
        os.replace(tmp, self.path)  # a new inode: seen at the next check, never half-written


@contextlib.asynccontextmanager
async def memory_config(request: pytest.FixtureRequest) -> AsyncIterator[Source]:
    yield MemorySource(name=f"conformance-{uuid.uuid4().hex[:8]}")


@contextlib.asynccontextmanager
async def file_config(request: pytest.FixtureRequest) -> AsyncIterator[Source]:
    tmp: Path = request.getfixturevalue("tmp_path")
    source = WrittenFile(tmp / "settings.yaml")
    try:
        yield source
    finally:
        await source.aclose()


CONFIG_KIT = {"memory": memory_config, "file": file_config}


# -- waits ---------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Any], what: str = "condition", timeout: float = 10.0, interval: float = 0.005
) -> Any:
    """Poll until `check()` is truthy and return it (updates reach a config through a watch
    task, so a test waits for them); fail naming `what` after `timeout` seconds."""

    async def now() -> Any:
        return check()

    return await async_wait_until(now, timeout=timeout, interval=interval, what=what)


async def settle() -> None:
    """Let the watch tasks run: a few loop turns are enough for a memory source."""
    for _ in range(20):
        await asyncio.sleep(0)


@overload
async def next_change(watch: ConfigWatch, timeout: float = WAIT) -> Change: ...


@overload
async def next_change(watch: AsyncIterator[T], timeout: float = WAIT) -> T: ...


async def next_change(watch: ConfigWatch | AsyncIterator[T], timeout: float = WAIT) -> Change | T:
    """The next change of a config's watch (or snapshot of a source's); fail after `timeout`
    seconds."""
    async with asyncio.timeout(timeout):
        return await anext(watch)


# -- the scenarios etcd and Consul share ---------------------------------------------------


class App(msgspec.Struct):
    n: int = 0
    name: str = ""


def fresh_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/config-{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def writer(url: str) -> AsyncIterator[tuple[str, Source]]:
    """`url`, and a source of its own (its own connection) that writes there, as an operator's
    writes come from another connection than the service's."""
    source = load_config_source(url)
    try:
        yield url, source
    finally:
        await source.aclose()


async def updates_reach_a_bound_model_in_order(
    url: str, other: Source, measure: Callable[[Source], T]
) -> tuple[str, T]:
    """100 updates of `app.n` written through `other` at 10/s reach a model bound over `url`:
    every one, in order, none twice, and the final value within 1 s of its write (the issue's
    own bound, measured from the write; about 2 ms here). Returns a line of latencies (write
    sent -> bound model swapped) and what `measure` read from the config's source once the
    last update had arrived (while the config still runs)."""
    arrived: list[tuple[float, App]] = []
    async with Config([url]) as config:
        app = config.bind(App, "app")
        config.on_change(lambda changes: arrived.append((time.monotonic(), app.value)), "app")
        written: list[float] = []
        start = time.monotonic()
        for i in range(1, 101):
            await asyncio.sleep(max(0.0, start + i * 0.1 - time.monotonic()))  # 10/s, no drift
            written.append(time.monotonic())  # the write leaves (its round trip counts)
            await other.set("app.n", str(i))
        await eventually(lambda: app.value.n == 100, "the 100th update", timeout=WAIT)
        measured = measure(config.sources[0])
    values = [value.n for _, value in arrived]
    assert values == list(range(1, 101)), values  # each one, in order, none twice
    latency = [at - written[value.n - 1] for at, value in arrived]
    assert latency[-1] < 1.0, f"the final value arrived {latency[-1]:.2f} s after its write"
    line = (
        f"100 updates at 10/s; write sent -> bound model swapped: median"
        f" {statistics.median(latency) * 1000:.1f} ms, max {max(latency) * 1000:.1f} ms;"
        f" the final value {latency[-1] * 1000:.1f} ms after its write"
    )
    return line, measured


class GetRequest(msgspec.Struct):
    key: str


class GetReply(msgspec.Struct):
    value: str | None


class Settings:
    """A handler that answers with the service's config, as a real service reads it."""

    async def get(self, req: GetRequest, ctx: Context) -> GetReply:
        value = ctx.config.get(req.key)
        return GetReply(value=None if value is None else str(value))


async def service_rides_out_an_outage(
    engine: str,
    url: str,
    put: Callable[[str, str], None],
    stop: Callable[[], object],
    start: Callable[[], object],
    most_retries: int,
) -> None:
    """A real service configured from `url` keeps serving its values while the engine is
    stopped for 10 s, and serves an update written once it is back; the outage is one warning,
    its end one line, and the retries back off (fewer than `most_retries`: a busy loop makes
    thousands). `put(key, text)` writes a key under the URL's prefix as an operator's tool
    does; `put`, `stop` and `start` block (they run on a thread)."""
    put("greeting", "hello")
    name = f"configured-{engine.lower()}"
    service = Service(name, config=[url], drain_delay=0, grace=2)
    service.handler(Settings)

    async def greeting(client: Client) -> str | None:
        reply = await client.call(name, "Settings.Get", GetRequest("greeting"), response=GetReply)
        return reply.value

    with capture_logs("DEBUG", logger="microweave.config") as logs:
        async with service, Client(timeout=10) as client:
            assert await greeting(client) == "hello"
            await asyncio.to_thread(stop)
            down = time.monotonic()
            answers = []
            while time.monotonic() - down < 10:
                answers.append(await greeting(client))
                await asyncio.sleep(0.5)
            assert answers and set(answers) == {"hello"}, answers
            await asyncio.to_thread(start)
            back = time.monotonic()
            await asyncio.to_thread(put, "greeting", "hello again")

            async def updated() -> bool:
                return await greeting(client) == "hello again"

            await async_wait_until(updated, timeout=WAIT, interval=0.05, what="the update after the outage")
            took = time.monotonic() - back
            print(f"\nafter {engine} came back, the next update was served within {took:.1f} s")
    warnings = [e["message"] for e in logs if e["level"] == "WARNING"]
    assert len([m for m in warnings if "unreachable" in m]) == 1, warnings
    assert len([m for m in warnings if "reachable again" in m]) == 1, warnings
    retries = [e for e in logs if "still unreachable" in e["message"]]
    assert len(retries) < most_retries, len(retries)
    assert not [e for e in logs if e["level"] in ("ERROR", "CRITICAL")]


async def unreachable_at_start(
    engine: str,
    *,
    failing: str,
    public: str,
    hidden: str,
    hint: str,
    optional: str,
    kind: type[Source],
    put: Callable[[str, str], None],
    start: Callable[[], object],
    stop: Callable[[], object],
) -> None:
    """An engine not running when the config starts: `failing` (its URL with a credential,
    `hidden`, in it) is a 503 naming `public` and saying `hint`, never the credential;
    `optional` (the URL with optional=true) starts empty, and once the engine is started a
    value written there is picked up. The engine is stopped at the end."""
    with pytest.raises(Unavailable) as caught:
        async with Config([failing]):
            pass
    detail = caught.value.detail
    assert caught.value.code == 503 and public in detail and hidden not in detail
    assert hint in detail, detail
    config = Config([optional])
    assert isinstance(config.sources[0], kind) and config.sources[0].optional
    async with config:
        assert config.get("greeting", default="none") == "none"
        try:
            await asyncio.to_thread(start)
            await asyncio.to_thread(put, "greeting", "hi")
            await eventually(lambda: config.get("greeting") == "hi", f"the value once {engine} is up", WAIT)
        finally:
            await asyncio.to_thread(stop)


async def prefix_is_bounded(url: str, other: Source) -> None:
    """With the source's MAX_KEYS set to 3 by the caller: a fourth key is refused with a
    warning while the last good values stay, a later good update is applied, and a config
    started over too many keys is an Unavailable that says so."""
    for key in ("a", "b", "c"):
        await other.set(key, "1")
    with capture_logs("WARNING", logger="microweave.config") as logs:
        async with Config([url]) as config:
            watch = config.watch()
            await other.set("d", "1")  # one key too many: refused, the last good values stay
            await eventually(
                lambda: any("more than a config source takes" in e["message"] for e in logs),
                "the warning",
                WAIT,
            )
            assert config.get("d") is None and config.get("a") == "1"
            await other.delete("d")
            await other.set("a", "2")
            change = await next_change(watch)
            assert (change.key, change.new) == ("a", "2")
    with pytest.raises(Unavailable, match="more than a config source takes"):
        await other.set("d", "1")
        async with Config([url]):
            pass
