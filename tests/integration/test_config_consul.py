"""Issue 9's must-shows for the Consul config source, on a real Consul agent.

- 100 updates at 10/s reach a bound model, every one, in order; the final value's latency
  (write sent -> bound model swapped) is measured and printed, not asserted.
- The agent (a server that keeps its data) stopped for 10 s: a real service keeps serving its
  values; back: later updates arrive; one warning for the outage, one line when it is back,
  no busy loop.
- A malformed value and one failing the bound model are rejected without a crash; the bound
  view keeps its last good instance.
- ACL: a wrong token is a clear 403 naming the URL, never the token; CONSUL_HTTP_TOKEN works.
- A -dev agent restarted comes back empty with a lower index: the watch resets and follows.

Writes come from a separate source (its own connections), as an operator's do. The scenarios
etcd shows too are in tests/config_kit.py; this file gives them Consul.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from config_kit import (
    WAIT,
    App,
    eventually,
    fresh_prefix,
    next_change,
    prefix_is_bounded,
    service_rides_out_an_outage,
    unreachable_at_start,
    updates_reach_a_bound_model_in_order,
)
from config_kit import writer as writing_to
from engines.consul import MANAGEMENT_TOKEN, ConsulAgent

from microweave._backends import load_config_source
from microweave.config import Config, Source
from microweave.config.sources.consul import ConsulSource
from microweave.errors import Unavailable
from microweave.testing import capture_logs


@pytest.fixture
async def writer(consul_server: ConsulAgent) -> AsyncIterator[tuple[str, Source]]:
    """A config URL on the session's agent, and a source of its own that writes there."""
    async with writing_to(consul_server.url + fresh_prefix()) as written:
        yield written


def putter(agent: ConsulAgent, prefix: str) -> Callable[[str, str], None]:
    """Writes a key under `prefix` through the agent's KV API, as an operator does."""

    def put(key: str, text: str) -> None:
        agent.kv_put(f"{prefix[1:]}/{key}", text.encode())

    return put


def queries(source: Source) -> int:
    assert isinstance(source, ConsulSource)
    return source.queries


async def test_100_updates_at_10_per_second_reach_a_bound_model_in_order(
    writer: tuple[str, Source],
) -> None:
    line, made = await updates_reach_a_bound_model_in_order(*writer, measure=queries)
    # one blocking query per update (and a few spare): no polling, no busy loop
    assert made <= 110, made
    print(f"\nconsul config: {line}; {made} blocking queries")


async def test_a_service_keeps_its_values_through_a_10_s_outage_and_sees_later_updates(
    consul_persistent: ConsulAgent, registry_dir: Any
) -> None:
    agent = consul_persistent
    key = fresh_prefix()
    # backoff: 0.1 s doubling to 5 s is a few dozen attempts in 10 s at most; a busy loop is thousands
    await service_rides_out_an_outage(
        "Consul", agent.url + key, putter(agent, key), agent.stop, agent.start, 40
    )


async def test_a_malformed_value_and_one_failing_the_model_are_rejected_the_bound_view_stays(
    writer: tuple[str, Source],
) -> None:
    url, other = writer
    await other.set("app.n", "1")
    await other.set("app.name", "first")
    async with Config([url]) as config:
        app = config.bind(App, "app")
        watch = config.watch("app")
        good = app.value
        assert good == App(n=1, name="first")
        instances: list[App] = []
        config.on_change(lambda changes: instances.append(app.value), "app")
        with capture_logs("ERROR", logger="microweave.config") as errors:
            for key, bad in (("app", b'{"n": 5'), ("app.n", b"not-a-number")):
                await other.set(key, bad.decode())
                count = len(errors) + 1
                await eventually(
                    lambda n=count: len(errors) >= n, f"the error for {key}", WAIT, interval=0.01
                )
                assert app.value is good and config.get("app.n") == "1"
                if key == "app":
                    await other.delete(key)  # back to what was accepted: no change
                else:
                    await other.set(key, "1")
            await other.set("app.n", "2")  # a good update after them is applied
            async with asyncio.timeout(WAIT):
                async for change in watch:
                    if change.key == "app.n" and change.new == "2":
                        break
        # the rejected updates made no instance: the next one is the good update's
        assert instances == [App(n=2, name="first")] and instances[0] is app.value
    assert len(errors) == 2, errors
    source = config.sources[0].url
    assert all(source in e["message"] for e in errors), errors
    assert "app" in errors[0]["message"] and "app.n" in errors[1]["message"], errors
    assert "not-a-number" not in errors[1]["message"]  # the value may be a secret: never quoted


async def test_a_wrong_token_is_a_clear_403_naming_the_url_without_the_token(
    consul_agents: Callable[..., ConsulAgent], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = consul_agents(acl=True)
    key = fresh_prefix()
    public = agent.url + key
    wrong = "0badc0de-dead-4bad-8bad-00000000beef"
    for url, env in ((f"{public}?token={wrong}", None), (public, wrong)):
        if env:
            monkeypatch.setenv("CONSUL_HTTP_TOKEN", env)
        with pytest.raises(Unavailable) as caught:
            async with Config([url]):
                pass
        detail = caught.value.detail
        assert caught.value.code == 403, caught.value
        assert public in detail and "check the ACL token" in detail, detail
        assert wrong not in detail and wrong not in repr(caught.value)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN")
    agent.kv_put(f"{key[1:]}/feature", b"on")
    # no token: Consul leaves out of a listing what the token may not read, without a word
    with capture_logs("WARNING", logger="microweave.config") as logs:
        async with Config([public]) as config:
            assert config.get("feature") is None
    assert len(logs) == 1 and "check the token" in logs[0]["message"], logs
    assert public in logs[0]["message"]
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", MANAGEMENT_TOKEN)  # the environment's token
    async with Config([public]) as config:
        assert config.get("feature") == "on"
        assert MANAGEMENT_TOKEN not in repr(config.sources[0]) and MANAGEMENT_TOKEN not in repr(config)
        watch = config.watch()
        await config.set("feature", "off")
        assert (await next_change(watch)).new == "off"


async def test_an_agent_that_comes_back_empty_with_a_lower_index_is_followed(
    consul_agents: Callable[..., ConsulAgent],
) -> None:
    agent = consul_agents()  # -dev: a restart forgets everything, its index starts again
    key = fresh_prefix()
    for i in range(20):
        agent.kv_put(f"unrelated/{i}", b"x")  # the index climbs well above a fresh agent's
    agent.kv_put(f"{key[1:]}/greeting", b"hello")
    async with Config([agent.url + key]) as config:
        source = config.sources[0]
        assert isinstance(source, ConsulSource)
        before = source.index
        await asyncio.to_thread(agent.stop)
        await asyncio.to_thread(agent.start)
        await asyncio.to_thread(agent.kv_put, f"{key[1:]}/greeting", b"after the restart")
        await eventually(
            lambda: config.get("greeting") == "after the restart", "the value after the restart", WAIT
        )
        assert source.index < before, (source.index, before)


async def test_an_unreachable_agent_at_start_is_a_clear_error_or_with_optional_picked_up_later(
    tmp_path: Any,
) -> None:
    agent = ConsulAgent(tmp_path)  # its ports are chosen; it is not started yet
    key = fresh_prefix()
    await unreachable_at_start(
        "Consul",
        failing=f"{agent.url}{key}?token=tok-in-url&timeout=1&retries=0",
        public=agent.url + key,
        hidden="tok-in-url",
        hint="is `consul agent` running",
        optional=f"{agent.url}{key}?optional=true&timeout=1",
        kind=ConsulSource,
        put=putter(agent, key),
        start=agent.start,
        stop=agent.stop,
    )


async def test_what_a_prefix_can_make_the_source_hold_is_bounded(
    writer: tuple[str, Source], monkeypatch: pytest.MonkeyPatch
) -> None:
    from microweave.config.sources import consul

    monkeypatch.setattr(consul, "MAX_KEYS", 3)
    await prefix_is_bounded(*writer)


async def test_keys_map_folders_are_ignored_and_the_prefix_key_is_a_document(
    writer: tuple[str, Source], consul_server: ConsulAgent
) -> None:
    url, _ = writer
    base = url.rsplit("/", 1)[1]
    consul_server.kv_put(f"{base}/", b"")  # folders, as Consul's UI makes them
    consul_server.kv_put(f"{base}/db/", b"")
    consul_server.kv_put(f"{base}/db/port", b"5433")
    consul_server.kv_put(f"{base}-other/x", b"not ours")  # inside ?recurse, not under the prefix
    consul_server.kv_put(base, b"db:\n  host: docdb\n  port: 1\nname: doc\n")
    source = load_config_source(url)
    try:
        with capture_logs("WARNING", logger="microweave.config") as logs:
            snapshot = await source.read()
        assert {k: (v.data, v.format) for k, v in snapshot.items()} == {
            "": (b"db:\n  host: docdb\n  port: 1\nname: doc\n", "yaml"),
            "db.port": (b"5433", "text"),
        }
        assert not logs, logs  # folders are not "ignored keys"
        consul_server.kv_put(f"{base}/a.b/c", b"1")  # a '.' in a level names no setting
        with capture_logs("WARNING", logger="microweave.config") as logs:
            assert "a.b.c" not in await source.read()
        assert any("ignored 1 key(s)" in e["message"] for e in logs), logs
        async with Config([source]) as config:
            assert config.get("db") == {"host": "docdb", "port": "5433"} and config.get("name") == "doc"
    finally:
        await source.aclose()


async def test_an_index_ahead_of_the_agent_is_reset_as_consuls_docs_ask(writer: tuple[str, Source]) -> None:
    """An agent whose index went backwards without an outage (another server answering, a
    snapshot restored): a blocking query from our index would never see it move again."""
    url, other = writer
    source = load_config_source(url + "?wait=0.3")
    assert isinstance(source, ConsulSource)
    try:
        await source.read()
        source.index += 1_000_000  # ahead of anything the agent will reach soon
        await other.set("greeting", "hello")
        changes = source.watch()
        snapshot = await next_change(changes)
        await changes.aclose()  # type: ignore[attr-defined]
        assert snapshot["greeting"].data == b"hello"
        assert 0 < source.index < 1_000_000
    finally:
        await source.aclose()
