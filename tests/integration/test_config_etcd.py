"""Issue 9's must-shows for the etcd config source, on a real etcd.

- 100 updates at 10/s reach a bound model, every one, in order; the final value's latency
  (write sent -> bound model swapped) is measured and printed, not asserted.
- etcd stopped for 10 s: a real service keeps serving its values; etcd back: later updates
  arrive; one warning for the outage, one line when it is back, no busy loop.
- Precedence across file + env + etcd is "later wins".
- Authentication (and a token etcd forgot when it restarted); an unreachable etcd at start is
  a clear error naming the URL (`optional=true`: empty, then picked up).

Writes come from a separate connection (a second EtcdSource, or etcdctl), as an operator's do.
The scenarios Consul shows too are in tests/config_kit.py; this file gives them etcd.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from config_kit import (
    fresh_prefix,
    next_change,
    prefix_is_bounded,
    service_rides_out_an_outage,
    unreachable_at_start,
    updates_reach_a_bound_model_in_order,
)
from config_kit import writer as writing_to
from engines.etcd import ROOT_PASSWORD, EtcdServer

from microweave._backends import load_config_source
from microweave.config import Config, Source
from microweave.config.sources.etcd import EtcdSource
from microweave.errors import Unavailable
from microweave.testing import capture_logs


@pytest.fixture
async def writer(etcd_server: EtcdServer) -> AsyncIterator[tuple[str, Source]]:
    """A config URL on the session's etcd, and a source of its own that writes there."""
    async with writing_to(etcd_server.url(fresh_prefix())) as written:
        yield written


def putter(server: EtcdServer, prefix: str) -> Callable[[str, str], None]:
    """Writes a key under `prefix` with etcdctl, as an operator does."""

    def put(key: str, text: str) -> None:
        server.ctl("put", f"{prefix}/{key}", text)

    return put


async def test_100_updates_at_10_per_second_reach_a_bound_model_in_order(
    writer: tuple[str, Source],
) -> None:
    line, _ = await updates_reach_a_bound_model_in_order(*writer, measure=lambda source: None)
    print(f"\netcd config: {line}")


async def test_a_service_keeps_its_values_through_a_10_s_outage_and_sees_later_updates(
    etcd_own: EtcdServer, registry_dir: Path
) -> None:
    key = fresh_prefix()
    # backoff: 0.1 s doubling to 5 s is under a dozen attempts in 10 s; a busy loop is thousands
    await service_rides_out_an_outage(
        "etcd", etcd_own.url(key), putter(etcd_own, key), etcd_own.engine.stop, etcd_own.engine.start, 30
    )


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
        change = await next_change(watch)
        assert (change.key, change.new) == ("d", "etcd")
        assert config.get("a") == "file"


async def test_authentication_and_a_token_etcd_forgot_when_it_restarted(etcd_auth: EtcdServer) -> None:
    key = fresh_prefix()
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
        assert (await next_change(watch)).new == "on"
        # etcd's simple tokens live in its memory: after a restart the old one is refused
        await asyncio.to_thread(etcd_auth.engine.stop)
        await asyncio.to_thread(etcd_auth.engine.start)
        user = f"root:{ROOT_PASSWORD}"
        await asyncio.to_thread(etcd_auth.ctl, "put", f"{key}/feature", "off", user=user)
        assert (await next_change(watch)).new == "off"
        await config.set("feature", "again")  # a write renews the token too
        assert (await next_change(watch)).new == "again"


async def test_an_unreachable_etcd_at_start_is_a_clear_error_or_with_optional_picked_up_later(
    tmp_path: Path,
) -> None:
    server = EtcdServer(tmp_path)  # its ports are chosen; it is not started yet
    key = fresh_prefix()
    await unreachable_at_start(
        "etcd",
        failing=server.url(key, username="u", password="pw-in-url", timeout="1"),
        public=server.url(key),
        hidden="pw-in-url",
        hint="is etcd running there",
        optional=server.url(key, optional="true", timeout="1"),
        kind=EtcdSource,
        put=putter(server, key),
        start=server.start,
        stop=server.stop,
    )


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
            snapshot = await next_change(changes)
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
    await prefix_is_bounded(*writer)
