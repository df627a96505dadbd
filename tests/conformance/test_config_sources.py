"""One suite, every writable config source: each must mean the same to a `Config` above it.

A source joins by adding a factory to `CONFIG_BACKENDS` (an engine's, with `@config_backend`
in tests/engines/<engine>.py; memory and file come from tests/config_kit.py): an async context
manager that takes the pytest request and yields a fresh, empty, writable Source of its own.
Every test goes through a real, started `Config`, writes with `config.set/delete` (which write
to the source) and waits for what it expects through the config's own watch, with a timeout:
no fixed sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from config_kit import CONFIG_KIT
from engines import CONFIG_BACKENDS
from helpers import async_wait_until

from microweave.config import MISSING, Change, Config, ConfigWatch, Secret, Source
from microweave.config.secret import MASK
from microweave.testing import capture_logs

BACKENDS = {**CONFIG_KIT, **CONFIG_BACKENDS}
WAIT = 10.0  # generous bound on anything a source does asynchronously


class Database(msgspec.Struct):
    host: str = "localhost"
    port: int = 5432


@pytest.fixture(params=sorted(BACKENDS))
async def source(request: pytest.FixtureRequest) -> AsyncIterator[Source]:
    async with BACKENDS[request.param](request) as source:
        assert source.scheme == request.param and source.writable
        yield source


@pytest.fixture
async def config(source: Source) -> AsyncIterator[Config]:
    async with Config([source]) as config:
        yield config


async def next_change(watch: ConfigWatch) -> Change:
    async with asyncio.timeout(WAIT):
        return await anext(watch)


async def until(watch: ConfigWatch, key: str, new: Any) -> list[Change]:
    """The changes seen until `key` becomes `new` (MISSING: until it is removed)."""
    seen = []
    async with asyncio.timeout(WAIT):
        async for change in watch:
            seen.append(change)
            if change.key == key and change.new == new:
                return seen
    raise AssertionError(f"the watch ended before {key} became {new!r}: {seen}")


def doc_key(source: Source, key: str) -> str:
    """How an error names the key: a one-document source names its document."""
    return "(document)" if getattr(source, "one_document", False) else key


async def test_a_leaf_set_is_seen_by_get_watch_and_bind(config: Config, source: Source) -> None:
    db = config.bind(Database, "db")
    watch = config.watch("db")
    await config.set("db.port", "5433")
    change = await next_change(watch)
    assert change == Change("db.port", MISSING, "5433", source.url)
    assert config.get("db.port", int) == 5433
    assert db.value == Database(port=5433)


async def test_a_document_at_the_root_and_at_a_sub_key(config: Config) -> None:
    watch = config.watch()
    await config.set("", "db:\n  host: db.internal\n  port: 6000\n")  # YAML at the root
    await until(watch, "db.port", 6000)
    assert config.get("db") == {"host": "db.internal", "port": 6000}
    await config.set("cache", '{"size": 3, "ttl": 1.5}')  # a JSON object at a key
    await until(watch, "cache.ttl", 1.5)
    assert config.get("cache") == {"size": 3, "ttl": 1.5}
    assert config.get("db.port") == 6000


async def test_deeper_keys_override_a_document(config: Config) -> None:
    watch = config.watch()
    await config.set("", '{"db": {"host": "a", "port": 1}}')
    await until(watch, "db.port", 1)
    await config.set("db", '{"host": "b"}')
    await until(watch, "db.host", "b")
    await config.set("db.port", "2")
    await until(watch, "db.port", "2")
    assert config.get("db") == {"host": "b", "port": "2"}
    await config.delete("db.port")  # the document's value shows again
    await until(watch, "db.port", 1)
    assert config.get("db") == {"host": "b", "port": 1}


async def test_delete_removes_a_key(config: Config, source: Source) -> None:
    watch = config.watch("feature")
    await config.set("feature.beta", "on")
    await until(watch, "feature.beta", "on")
    await config.delete("feature.beta")
    assert await next_change(watch) == Change("feature.beta", "on", MISSING, source.url)
    assert config.get("feature.beta", default="off") == "off"
    assert "feature.beta" not in config


async def test_change_values_old_and_new(config: Config, source: Source) -> None:
    watch = config.watch("limits")
    await config.set("limits.rps", "10")
    assert await next_change(watch) == Change("limits.rps", MISSING, "10", source.url)
    await config.set("limits.rps", "20")
    assert await next_change(watch) == Change("limits.rps", "10", "20", source.url)
    await config.set("limits.rps", '{"burst": 5}')  # a leaf becomes a mapping
    changes = await until(watch, "limits.rps", MISSING)
    assert Change("limits.rps.burst", MISSING, 5, source.url) in changes
    assert config.get("limits.rps") == {"burst": 5}


async def test_changes_arrive_in_order(config: Config) -> None:
    """A source may fold quick updates together (a file is polled); what arrives is in the
    order written and ends at the last value."""
    seen: list[int] = []
    config.on_change(lambda changes: seen.extend(int(c.new) for c in changes if c.new), "n")
    watch = config.watch("n")
    for i in range(1, 21):
        await config.set("n", str(i))
        await asyncio.sleep(0.01)
    await until(watch, "n", "20")
    assert seen == sorted(set(seen)) and seen[-1] == 20, seen


async def test_a_malformed_document_is_rejected_and_the_last_good_value_stays(
    config: Config, source: Source
) -> None:
    watch = config.watch()
    await config.set("", "db:\n  port: 7000\n")
    await until(watch, "db.port", 7000)
    with capture_logs("ERROR", logger="microweave.config") as errors:
        await config.set("", "db: [unclosed\n")
        await _logged(errors)
        assert config.get("db.port") == 7000
        await config.set("", "db:\n  port: 7001\n")  # a good update after it is applied
        await until(watch, "db.port", 7001)
    assert len(errors) == 1, errors
    assert source.url in errors[0]["message"] and "(document)" in errors[0]["message"]


async def test_a_value_failing_a_bound_model_is_rejected_and_the_last_good_one_stays(
    config: Config, source: Source
) -> None:
    db = config.bind(Database, "db")
    watch = config.watch("db")
    await config.set("db.port", "5433")
    await until(watch, "db.port", "5433")
    good = db.value
    with capture_logs("ERROR", logger="microweave.config") as errors:
        await config.set("db.port", "not-a-port")
        await _logged(errors)
        assert db.value is good and config.get("db.port", int) == 5433
        await config.set("db.port", "5434")
        await until(watch, "db.port", "5434")
    assert db.value == Database(port=5434)
    assert len(errors) == 1, errors
    message = errors[0]["message"]
    assert source.url in message and doc_key(source, "db.port") in message, message
    assert "not-a-port" not in message  # the value may be a secret: never quoted


async def test_secrets_are_masked_in_changes_and_dump(source: Source) -> None:
    async with Config([source], secrets=["api.*"]) as config:
        watch = config.watch()
        await config.set("db.password", "hunter2")
        await config.set("api.key_id", "AKIA-1")
        changes = await until(watch, "api.key_id", Secret("AKIA-1"))
        shown = {c.key: c.new for c in changes}
        assert isinstance(shown["db.password"], Secret) and shown["db.password"].reveal() == "hunter2"
        assert "hunter2" not in repr(changes) and "AKIA-1" not in repr(changes)
        assert config.dump() == {"db": {"password": MASK}, "api": {"key_id": MASK}}
        assert config.dump(reveal=True) == {"db": {"password": "hunter2"}, "api": {"key_id": "AKIA-1"}}


async def _logged(errors: list[dict[str, Any]]) -> None:
    async def any_error() -> bool:
        return bool(errors)

    await async_wait_until(any_error, timeout=WAIT, interval=0.01, what="an error line for the bad update")
