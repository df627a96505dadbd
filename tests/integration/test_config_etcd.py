"""Issue 9's must-shows for the etcd config source, on a real etcd.

- 100 updates at 10/s reach a bound model, every one, in order; the final value's latency
  (write sent -> bound model swapped) is measured and printed, not asserted.
- etcd stopped for 10 s: a real service keeps serving its values; etcd back: later updates
  arrive; one warning for the outage, one line when it is back, no busy loop.
- Precedence across file + env + etcd is "later wins".
- Authentication (and a token etcd forgot when it restarted); an unreachable etcd at start is
  a clear error naming the URL (`optional=true`: empty, then picked up).

Writes come from a separate connection (a second EtcdSource, or etcdctl), as an operator's do.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from engines.etcd import ROOT_PASSWORD, EtcdServer
from helpers import async_wait_until

from microweave import Client, Context, Service
from microweave._backends import load_config_source
from microweave.config import Config, Source
from microweave.config.sources.etcd import EtcdSource
from microweave.errors import Unavailable
from microweave.testing import capture_logs

WAIT = 30.0


class App(msgspec.Struct):
    n: int = 0
    name: str = ""


def prefix() -> str:
    return f"/config-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def writer(etcd_server: EtcdServer) -> AsyncIterator[tuple[str, Source]]:
    """A config URL on the session's etcd, and a source of its own (its own connection) that
    writes there."""
    url = etcd_server.url(prefix())
    source = load_config_source(url)
    try:
        yield url, source
    finally:
        await source.aclose()


async def test_100_updates_at_10_per_second_reach_a_bound_model_in_order(
    writer: tuple[str, Source],
) -> None:
    url, other = writer
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

        async def final() -> bool:
            return app.value.n == 100

        await async_wait_until(final, timeout=WAIT, interval=0.005, what="the 100th update")
    values = [value.n for _, value in arrived]
    assert values == list(range(1, 101)), values  # each one, in order, none twice
    latency = [at - written[value.n - 1] for at, value in arrived]
    print(
        f"\netcd config: 100 updates at 10/s; write sent -> bound model swapped: median"
        f" {statistics.median(latency) * 1000:.1f} ms, max {max(latency) * 1000:.1f} ms;"
        f" the final value {latency[-1] * 1000:.1f} ms after its write"
    )


class GetRequest(msgspec.Struct):
    key: str


class GetReply(msgspec.Struct):
    value: str | None


class Settings:
    async def get(self, req: GetRequest, ctx: Context) -> GetReply:
        value = ctx.config.get(req.key)
        return GetReply(value=None if value is None else str(value))


async def test_a_service_keeps_its_values_through_a_10_s_outage_and_sees_later_updates(
    etcd_own: EtcdServer, registry_dir: Path
) -> None:
    key = prefix()
    etcd_own.ctl("put", f"{key}/greeting", "hello")
    service = Service("configured-etcd", config=[etcd_own.url(key)], drain_delay=0, grace=2)
    service.handler(Settings)

    async def greeting(client: Client) -> str | None:
        reply = await client.call(
            "configured-etcd", "Settings.Get", GetRequest("greeting"), response=GetReply
        )
        return reply.value

    with capture_logs("DEBUG", logger="microweave.config") as logs:
        async with service, Client(timeout=10) as client:
            assert await greeting(client) == "hello"
            await asyncio.to_thread(etcd_own.engine.stop)
            down = time.monotonic()
            answers = []
            while time.monotonic() - down < 10:
                answers.append(await greeting(client))
                await asyncio.sleep(0.5)
            assert answers and set(answers) == {"hello"}, answers
            await asyncio.to_thread(etcd_own.engine.start)
            back = time.monotonic()
            await asyncio.to_thread(etcd_own.ctl, "put", f"{key}/greeting", "hello again")

            async def updated() -> bool:
                return await greeting(client) == "hello again"

            await async_wait_until(updated, timeout=WAIT, interval=0.05, what="the update after the outage")
            print(
                f"\nafter etcd came back, the next update was served within {time.monotonic() - back:.1f} s"
            )
    warnings = [e["message"] for e in logs if e["level"] == "WARNING"]
    assert len([m for m in warnings if "unreachable" in m]) == 1, warnings
    assert len([m for m in warnings if "reachable again" in m]) == 1, warnings
    retries = [e for e in logs if "still unreachable" in e["message"]]
    # backoff: 0.1 s doubling to 5 s is under a dozen attempts in 10 s; a busy loop is thousands
    assert len(retries) < 30, len(retries)
    assert not [e for e in logs if e["level"] in ("ERROR", "CRITICAL")]


async def test_precedence_across_file_env_and_etcd_is_later_wins(
    writer: tuple[str, Source], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, other = writer
    settings = tmp_path / "settings.yaml"
    settings.write_text("a: file\nb: file\nc: file\ndb:\n  host: filehost\n  port: 1\n")
    monkeypatch.setenv("PRECEDENCE_B", "env")
    monkeypatch.setenv("PRECEDENCE_C", "env")
    await other.set("c", "etcd")
    await other.set("db.port", "2")
    file, env = f"file://{settings}", "env://PRECEDENCE_"
    async with Config([file, env, url]) as config:
        assert [config.get(k) for k in "abc"] == ["file", "env", "etcd"]
        assert config.get("db") == {"host": "filehost", "port": "2"}  # deep: one key replaced
    async with Config([url, env, file]) as config:
        assert [config.get(k) for k in "abc"] == ["file", "file", "file"]
        assert config.get("db") == {"host": "filehost", "port": 1}
        watch = config.watch()
        await other.set("a", "etcd")  # under the file: no visible change
        await other.set("d", "etcd")  # nobody above it: visible
        async with asyncio.timeout(WAIT):
            change = await anext(watch)
        assert (change.key, change.new) == ("d", "etcd")
        assert config.get("a") == "file"


async def test_authentication_and_a_token_etcd_forgot_when_it_restarted(etcd_auth: EtcdServer) -> None:
    key = prefix()
    good = etcd_auth.url(key, username="root", password=ROOT_PASSWORD)
    for url, code in ((etcd_auth.url(key), 401), (etcd_auth.url(key, username="root", password="nope"), 401)):
        with pytest.raises(Unavailable) as caught:
            async with Config([url]):
                pass
        assert caught.value.code == code, caught.value
        assert etcd_auth.url(key) in caught.value.detail and "nope" not in caught.value.detail
    async with Config([good]) as config:
        source = config.sources[0]
        assert ROOT_PASSWORD not in repr(source) and ROOT_PASSWORD not in repr(config)
        watch = config.watch()
        await config.set("feature", "on")
        async with asyncio.timeout(WAIT):
            assert (await anext(watch)).new == "on"
        # etcd's simple tokens live in its memory: after a restart the old one is refused
        await asyncio.to_thread(etcd_auth.engine.stop)
        await asyncio.to_thread(etcd_auth.engine.start)
        user = f"root:{ROOT_PASSWORD}"
        await asyncio.to_thread(etcd_auth.ctl, "put", f"{key}/feature", "off", user=user)
        async with asyncio.timeout(WAIT):
            assert (await anext(watch)).new == "off"
        await config.set("feature", "again")  # a write renews the token too
        async with asyncio.timeout(WAIT):
            assert (await anext(watch)).new == "again"


async def test_an_unreachable_etcd_at_start_is_a_clear_error_or_with_optional_picked_up_later(
    tmp_path: Path,
) -> None:
    server = EtcdServer(tmp_path)  # its ports are chosen; it is not started yet
    key = prefix()
    with pytest.raises(Unavailable) as caught:
        async with Config([server.url(key, username="u", password="pw-in-url", timeout="1")]):
            pass
    detail = caught.value.detail
    assert caught.value.code == 503 and server.url(key) in detail and "pw-in-url" not in detail
    assert "is etcd running there" in detail, detail

    config = Config([server.url(key, optional="true", timeout="1")])
    assert isinstance(config.sources[0], EtcdSource) and config.sources[0].optional
    async with config:
        assert config.get("greeting", default="none") == "none"
        try:
            await asyncio.to_thread(server.start)
            await asyncio.to_thread(server.ctl, "put", f"{key}/greeting", "hi")

            async def picked_up() -> bool:
                return config.get("greeting") == "hi"

            await async_wait_until(picked_up, timeout=WAIT, what="the value once etcd is up")
        finally:
            await asyncio.to_thread(server.stop)


async def test_a_watch_from_a_compacted_revision_reads_everything_again(
    writer: tuple[str, Source], etcd_server: EtcdServer
) -> None:
    url, other = writer
    source = load_config_source(url)
    assert isinstance(source, EtcdSource)
    try:
        await other.set("x", "1")
        assert (await source.read())["x"].data == b"1"
        await other.set("x", "2")  # after the read: the watch must bring it
        await other.set("y", "3")
        revision = json.loads(etcd_server.ctl("get", "nothing", "--write-out=json"))["header"]["revision"]
        etcd_server.ctl("compact", str(revision))  # the watch's start is gone
        with capture_logs("WARNING", logger="microweave.config") as logs:
            changes = source.watch()
            async with asyncio.timeout(WAIT):
                snapshot = await anext(changes)
            await changes.aclose()  # type: ignore[attr-defined]
        assert {k: v.data for k, v in snapshot.items()} == {"x": b"2", "y": b"3"}
        assert any("compacted" in e["message"] for e in logs), logs
    finally:
        await source.aclose()


async def test_what_a_prefix_can_make_the_source_hold_is_bounded(
    writer: tuple[str, Source], monkeypatch: pytest.MonkeyPatch
) -> None:
    from microweave.config.sources import etcd

    monkeypatch.setattr(etcd, "MAX_KEYS", 3)
    url, other = writer
    for key in ("a", "b", "c"):
        await other.set(key, "1")
    with capture_logs("WARNING", logger="microweave.config") as logs:
        async with Config([url]) as config:
            watch = config.watch()
            await other.set("d", "1")  # one key too many: refused, the last good values stay
            await async_wait_until(
                lambda: _true(any("more than a config source takes" in e["message"] for e in logs)),
                timeout=WAIT,
                what="the warning",
            )
            assert config.get("d") is None and config.get("a") == "1"
            await other.delete("d")
            await other.set("a", "2")
            async with asyncio.timeout(WAIT):
                change = await anext(watch)
            assert (change.key, change.new) == ("a", "2")
    with pytest.raises(Unavailable, match="more than a config source takes"):
        await other.set("d", "1")
        async with Config([url]):
            pass


async def _true(value: bool) -> bool:
    return value
