"""The config core, as a demanding user and as an attacker: merge order, typed reads,
interpolation, bound models, rejected updates, watches, hooks, restarts and what is shown.

Sources are `MemorySource`s (real sources, in process): every update goes through the same
watch -> `_apply` path a file, etcd or Consul update takes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from typing import Any, Literal

import msgspec
import pydantic
import pytest
from config_kit import eventually, settle

from microweave.config import MISSING, Change, Config, Secret
from microweave.config.secret import MASK
from microweave.config.sources.memory import MemorySource
from microweave.errors import ConfigurationError

SECRET = "hunter2-do-not-log"


def config_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "microweave.config" and r.levelno >= logging.ERROR]


# -- merge order --------------------------------------------------------------------------


async def test_later_sources_win_and_mappings_merge_deeply() -> None:
    base = MemorySource({"db": {"host": "base", "port": 1, "pool": {"min": 1, "max": 5}}, "name": "a"})
    mid = MemorySource({"db": {"port": 2, "pool": {"max": 9}}}, name="mid")
    top = MemorySource({"db": {"host": "top"}}, name="top")
    async with Config([base, mid, top]) as config:
        assert config.get("db.host") == "top"
        assert config.get("db.port") == 2
        assert config.get("db.pool") == {"min": 1, "max": 9}
        assert config.get("name") == "a"
        assert config.dump() == {"db": {"host": "top", "port": 2, "pool": {"min": 1, "max": 9}}, "name": "a"}


async def test_a_scalar_replaces_a_mapping_and_back() -> None:
    base = MemorySource({"db": {"host": "h", "port": 1}})
    over = MemorySource(name="over")
    async with Config([base, over]) as config:
        over.put("db", "sqlite://memory")
        await eventually(lambda: config.get("db") == "sqlite://memory", "the scalar")
        assert "db.host" not in config and "db.port" not in config
        over.put("db", {"port": 7})
        await eventually(lambda: config.get("db.port") == 7, "the mapping again")
        assert config.get("db") == {"host": "h", "port": 7}  # merged with the layer below again
        await over.delete("db")
        await eventually(lambda: config.get("db.port") == 1, "the base layer")


async def test_a_dotted_key_overrides_the_document_it_sits_in() -> None:
    source = MemorySource({"db": {"port": 1, "host": "h"}})
    source.put("db.port", "5433", "text")
    async with Config([source]) as config:
        assert config.get("db.port", int) == 5433
        assert config.get("db.host") == "h"


async def test_deleting_a_key_brings_back_the_documents_value() -> None:
    """A leaf key laid over a document at the root must not be written into the document."""
    source = MemorySource({"db": {"port": 5432}})
    async with Config([source]) as config:
        source.put("db.port", 5433)
        source.put("db.extra", 1)
        await eventually(lambda: config.get("db.port") == 5433, "the override")
        await source.delete("db.port")
        await source.delete("db.extra")
        await eventually(lambda: config.get("db.port") == 5432, "the document's value")
        assert "db.extra" not in config
        assert (await source.read())[""].data == {"db": {"port": 5432}}  # the source's data untouched


# -- typed reads --------------------------------------------------------------------------


async def test_get_converts_types_and_defaults() -> None:
    source = MemorySource(
        {"db": {"port": "5432", "debug": "false", "on": "true", "hosts": ["a", "b"], "password": SECRET}}
    )
    async with Config([source]) as config:
        assert config.get("db.port", int) == 5432
        assert config.get("db.port") == "5432"  # untyped: as stored
        assert config.get("db.debug", bool) is False
        assert config.get("db.on", bool) is True
        assert config.get("db.hosts", list[str]) == ["a", "b"]
        secret = config.get("db.password", Secret)
        assert isinstance(secret, Secret) and secret.reveal() == SECRET
        assert SECRET not in repr(secret) and SECRET not in f"{secret}"
        assert config.get("db.missing", int, default=5432) == 5432
        assert config.get("nowhere.at.all") is None
        assert "db.port" in config and "db.missing" not in config
        with pytest.raises(ConfigurationError, match=r"db\.hosts"):
            config.get("db.hosts", int)


async def test_a_read_before_start_raises() -> None:
    config = Config([MemorySource({"a": 1})])
    with pytest.raises(ConfigurationError, match="before the config has started"):
        config.get("a")


# -- interpolation ------------------------------------------------------------------------


async def test_interpolation_set_default_and_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_TEST_DB_HOST", "db.internal")
    monkeypatch.delenv("MW_TEST_UNSET", raising=False)
    source = MemorySource(
        {
            "host": "${MW_TEST_DB_HOST}",
            "port": "${MW_TEST_UNSET:5432}",
            "url": "pg://${MW_TEST_DB_HOST:x}:${MW_TEST_UNSET:1}/db",
            "literal": "$${MW_TEST_DB_HOST}",
            "empty": "${MW_TEST_UNSET:}",
        }
    )
    async with Config([source]) as config:
        assert config.get("host") == "db.internal"
        assert config.get("port", int) == 5432
        assert config.get("url") == "pg://db.internal:1/db"
        assert config.get("literal") == "${MW_TEST_DB_HOST}"
        assert config.get("empty") == ""
    async with Config([source], interpolate=False) as raw:
        assert raw.get("host") == "${MW_TEST_DB_HOST}"


async def test_an_unset_variable_rejects_the_update_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MW_TEST_UNSET", raising=False)
    source = MemorySource({"db": {"host": "h"}})
    with pytest.raises(ConfigurationError, match=r"db\.host.*MW_TEST_UNSET"):
        async with Config([MemorySource({"db": {"host": "${MW_TEST_UNSET}"}})]):
            pass
    async with Config([source]) as config:
        source.put("db.host", "${MW_TEST_UNSET}")
        source.put("marker", 1)
        await eventually(lambda: config_errors(caplog), "the rejection")
        (error,) = config_errors(caplog)
        assert "db.host" in error.getMessage() and "memory://" in error.getMessage()
        assert config.get("db.host") == "h"
        assert config.get("marker") == 1  # the rest of the update arrived


async def test_an_unset_variable_inside_a_secret_is_not_quoted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A password that happens to contain `${...}` must not appear in the rejection."""
    monkeypatch.delenv("HUNTER2_PART", raising=False)
    source = MemorySource({"db": {"password": "x"}})
    async with Config([source]) as config:
        source.put("db.password", "ab${HUNTER2_PART}cd")
        await eventually(lambda: config_errors(caplog), "the rejection")
        assert "db.password" in caplog.text
        assert "HUNTER2_PART" not in caplog.text
        assert config.get("db.password") == "x"


# -- bound models -------------------------------------------------------------------------


class PoolP(pydantic.BaseModel):
    min: int = 1
    max: int = 10


class DatabaseP(pydantic.BaseModel):
    host: str
    port: int
    password: Secret
    pool: PoolP = PoolP()


class PoolM(msgspec.Struct):
    min: int = 1
    max: int = 10


class DatabaseM(msgspec.Struct):
    host: str
    port: int
    password: Secret
    pool: PoolM = msgspec.field(default_factory=PoolM)


@dataclasses.dataclass
class PoolD:
    min: int = 1
    max: int = 10


@dataclasses.dataclass
class DatabaseD:
    host: str
    port: int
    password: Secret
    pool: PoolD = dataclasses.field(default_factory=PoolD)


@pytest.mark.parametrize("model", [DatabaseP, DatabaseM, DatabaseD], ids=["pydantic", "msgspec", "dataclass"])
async def test_bind_builds_nested_models_and_masks_secret_fields(model: Any) -> None:
    source = MemorySource(
        {"db": {"host": "h", "port": "5432", "password": "first-" + SECRET, "pool": {"max": "20"}}}
    )
    async with Config([source]) as config:
        bound = config.bind(model, "db")
        first = bound.value
        assert isinstance(first, model)
        assert (first.host, first.port, first.pool.max) == ("h", 5432, 20)
        assert first.password.reveal() == "first-" + SECRET
        assert SECRET not in repr(first)
        assert config.is_secret("db.password")
        assert config.dump()["db"]["password"] == MASK
        assert config.dump(reveal=True)["db"]["password"] == "first-" + SECRET

        watch = config.watch("db")
        source.put("db.password", "second-" + SECRET)
        source.put("db.pool.max", 30)
        change = await asyncio.wait_for(watch.__anext__(), 5)
        seen = [change]
        while len(seen) < 2:
            seen.append(await asyncio.wait_for(watch.__anext__(), 5))
        by_key = {c.key: c for c in seen}
        assert isinstance(by_key["db.password"].old, Secret)
        assert by_key["db.password"].new.reveal() == "second-" + SECRET
        assert SECRET not in repr(seen)
        await eventually(lambda: bound.value.pool.max == 30, "the new instance")
        assert bound.value is not first  # swapped, not mutated
        assert first.pool.max == 20


async def test_a_value_that_fails_validation_keeps_the_last_good_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = MemorySource({"db": {"host": "h", "port": 5432, "password": SECRET}})
    async with Config([source]) as config:
        bound = config.bind(DatabaseP, "db")
        good = bound.value
        source.put("db.port", "not-a-port-77")
        await eventually(lambda: config_errors(caplog), "the rejection")
        await settle()
        (error,) = config_errors(caplog)
        text = error.getMessage()
        assert "memory://" in text and "db.port" in text
        assert "not-a-port-77" not in caplog.text and SECRET not in caplog.text
        assert bound.value is good
        assert config.get("db.port") == 5432
        source.put("db.port", "6543")
        await eventually(lambda: bound.value.port == 6543, "the fixed value")
        assert len(config_errors(caplog)) == 1


async def test_a_bind_that_does_not_validate_raises_and_is_not_kept() -> None:
    source = MemorySource({"db": {"host": "h", "port": "x"}})
    async with Config([source]) as config:
        with pytest.raises(ConfigurationError, match="port"):
            config.bind(DatabaseP, "db")
        source.put("other", 1)
        await eventually(lambda: config.get("other") == 1, "an unrelated update")  # not blocked


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


class Tuned(msgspec.Struct):
    mode: Mode
    level: Literal["low", "high"] = "low"


async def test_an_enum_rejection_does_not_quote_the_value(caplog: pytest.LogCaptureFixture) -> None:
    """msgspec says "Invalid enum value 'x'": the value may be a secret, it is not logged."""
    source = MemorySource({"tuned": {"mode": "fast"}})
    async with Config([source]) as config:
        config.bind(Tuned, "tuned")
        source.put("tuned.mode", SECRET)
        await eventually(lambda: config_errors(caplog), "the rejection")
        source.put("tuned.level", "lvl-" + SECRET)
        source.put("tuned.mode", "safe")
        await eventually(lambda: len(config_errors(caplog)) == 2, "the second rejection")
        assert "tuned.mode" in caplog.text and "tuned.level" in caplog.text
        assert SECRET not in caplog.text
        source.put("tuned.level", "high")
        source.put("free", "free-" + SECRET)
        await eventually(lambda: "free" in config, "an unbound key")
        with pytest.raises(ConfigurationError, match="free") as info:
            config.get("free", Literal["low", "high"])
        assert SECRET not in str(info.value)


async def test_a_rejected_update_does_not_lose_its_good_keys(caplog: pytest.LogCaptureFixture) -> None:
    """An update that carries a good key and a bad one: the good key arrives at once (one typo
    in etcd must not freeze the other settings), the bad one keeps its last good value, is
    logged once, and arrives when fixed."""
    source = MemorySource({"db": {"host": "h", "port": 5432, "password": "p"}, "flag": "off"})
    async with Config([source]) as config:
        bound = config.bind(DatabaseP, "db")
        source.put("flag", "on")
        source.put("db.port", "nope")  # the same snapshot: the watch has not run yet
        await settle()
        assert config.get("flag") == "on" and bound.value.port == 5432
        source.put("other", "x")  # a later update of another key: applied, nothing re-logged
        await eventually(lambda: config.get("other") == "x", "the later update")
        assert len(config_errors(caplog)) == 1 and bound.value.port == 5432
        source.put("db.port", "6543")
        await eventually(lambda: bound.value.port == 6543, "the fixed port")


# -- hostile shapes -----------------------------------------------------------------------


async def test_a_key_nested_too_deeply_is_rejected_and_the_config_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that can write keys (etcd, Consul) writes one with thousands of levels."""
    source = MemorySource({"a": 1})
    async with Config([source]) as config:
        source.put(".".join(["x"] * 5000), "deep")
        await eventually(lambda: config_errors(caplog), "the rejection")
        source.put("b", 2)
        await eventually(lambda: config.get("b") == 2, "a later update")
        assert config.get("a") == 1 and "x" not in config
    deep = MemorySource()
    deep.put(".".join(["y"] * 5000), 1)
    with pytest.raises(ConfigurationError, match="deep") as info:
        async with Config([deep]):
            pass
    assert len(str(info.value)) < 1000  # the key is named, not quoted whole


async def test_secrets_inside_lists_are_masked_in_dump_and_changes() -> None:
    class Upstream(pydantic.BaseModel):
        url: str
        key: Secret

    class Proxy(pydantic.BaseModel):
        upstreams: list[Upstream]

    source = MemorySource(
        {"proxy": {"upstreams": [{"url": "u1", "key": "k1-" + SECRET}]}, "hooks": [{"token": "t-" + SECRET}]}
    )
    async with Config([source]) as config:
        bound = config.bind(Proxy, "proxy")
        dumped = config.dump()
        assert SECRET not in repr(dumped)
        assert dumped["proxy"]["upstreams"] == [{"url": "u1", "key": MASK}]
        assert dumped["hooks"] == [{"token": MASK}]
        watch = config.watch()
        source.put("proxy.upstreams", [{"url": "u2", "key": "k2-" + SECRET}])
        change = await asyncio.wait_for(watch.__anext__(), 5)
        assert change.key == "proxy.upstreams"
        assert SECRET not in repr(change)
        assert change.new[0]["url"] == "u2"
        assert bound.value.upstreams[0].key.reveal() == "k2-" + SECRET


async def test_dump_reveal_is_a_copy() -> None:
    source = MemorySource({"db": {"port": 1, "hosts": ["a"]}})
    async with Config([source], interpolate=False) as config:
        tree = config.dump(reveal=True)
        tree["db"]["port"] = 2
        tree["db"]["hosts"].append("b")
        assert config.get("db.port") == 1
        assert config.get("db.hosts") == ["a"]


# -- watches ------------------------------------------------------------------------------


async def test_watch_sees_changes_in_order_with_old_and_new() -> None:
    source = MemorySource({"db": {"port": 0}, "other": 0})
    async with Config([source]) as config:
        watch = config.watch("db")
        seen = []
        for i in range(1, 21):  # a reader that keeps up sees every change
            source.put("db.port", i)
            source.put("other", i)
            seen.append(await asyncio.wait_for(watch.__anext__(), 5))
        assert [(c.old, c.new) for c in seen] == [(i - 1, i) for i in range(1, 21)]
        assert {c.key for c in seen} == {"db.port"}
        assert all(c.source == "memory://" for c in seen)
        source.put("db.added", 1)
        await eventually(lambda: "db.added" in config, "the new key")
        assert await asyncio.wait_for(watch.__anext__(), 5) == Change("db.added", MISSING, 1, "memory://")
        await source.delete("db.added")  # (it was put as its own key)
        assert await asyncio.wait_for(watch.__anext__(), 5) == Change("db.added", 1, MISSING, "memory://")


async def test_a_watcher_that_never_reads_holds_one_entry_per_key() -> None:
    source = MemorySource({"a": 0, "b": 0})
    async with Config([source]) as config:
        idle = config.watch()
        for i in range(1, 501):
            source.put("a", i)
            source.put("b", -i)
            await settle()
        assert len(idle._pending) == 2
        a, b = await idle.__anext__(), await idle.__anext__()
        assert (a.key, a.old, a.new) == ("a", 0, 500)
        assert (b.key, b.old, b.new) == ("b", 0, -500)
        source.put("a", 501)
        source.put("a", 500)  # changed and back in one snapshot: nothing to say
        await settle()
        assert not idle._pending


async def test_watchers_end_when_the_config_stops() -> None:
    config = Config([MemorySource({"a": 1})])
    await config.start()
    watch = config.watch()
    reader = asyncio.ensure_future(anext(watch, "ended"))
    await settle()
    await config.stop()
    assert await asyncio.wait_for(reader, 5) == "ended"


# -- hooks --------------------------------------------------------------------------------


async def test_hooks_sync_and_async_and_a_raising_one_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    source = MemorySource({"db": {"port": 1}, "x": 1})
    seen: list[tuple[str, list[str]]] = []
    async_done = asyncio.Event()

    def broken(changes: list[Change]) -> None:
        raise RuntimeError("sync hook broke")

    async def broken_async(changes: list[Change]) -> None:
        raise RuntimeError("async hook broke")

    def sync_hook(changes: list[Change]) -> None:
        seen.append(("sync", [c.key for c in changes]))

    async def async_hook(changes: list[Change]) -> None:
        await asyncio.sleep(0)
        seen.append(("async", [c.key for c in changes]))
        async_done.set()

    async with Config([source]) as config:
        config.on_change(broken)
        config.on_change(broken_async)
        config.on_change(sync_hook, "db")
        remove = config.on_change(async_hook)
        source.put("db.port", 2)
        await asyncio.wait_for(async_done.wait(), 5)
        await eventually(lambda: "async hook broke" in caplog.text, "the async hook's error")
        assert ("sync", ["db.port"]) in seen and ("async", ["db.port"]) in seen
        assert "sync hook broke" in caplog.text
        remove()
        source.put("x", 2)
        await eventually(lambda: config.get("x") == 2, "x")
        await settle()
        assert [s for s in seen if s[0] == "async"] == [("async", ["db.port"])]
        assert not any(s[1] == ["x"] for s in seen)  # sync_hook is for "db" only


async def test_a_hook_that_removes_itself_does_not_skip_the_next() -> None:
    source = MemorySource({"a": 0})
    calls: list[str] = []

    def once(changes: list[Change]) -> None:
        calls.append("once")
        remove()

    def every(changes: list[Change]) -> None:
        calls.append("every")

    async with Config([source]) as config:
        remove = config.on_change(once)
        config.on_change(every)
        source.put("a", 1)
        await eventually(lambda: config.get("a") == 1, "a")
        await settle()
        source.put("a", 2)
        await eventually(lambda: config.get("a") == 2, "a")
        await settle()
        assert calls == ["once", "every", "every"]


async def test_stop_cancels_pending_async_hooks() -> None:
    source = MemorySource({"a": 0})
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(changes: list[Change]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    config = Config([source])
    await config.start()
    config.on_change(slow)
    source.put("a", 1)
    await asyncio.wait_for(started.wait(), 5)
    await config.stop()
    assert cancelled.is_set()


# -- lifecycle and what is shown ----------------------------------------------------------


async def test_a_config_restarts_after_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    source = MemorySource({"a": 1})
    monkeypatch.setenv("MWTEST_RESTART_X", "5")
    config = Config([source, "env://MWTEST_RESTART_"])
    await config.start()
    assert config.get("x", int) == 5
    await config.stop()
    source.put("a", 2)
    monkeypatch.setenv("MWTEST_RESTART_X", "6")
    await config.start()
    try:
        assert config.get("a") == 2
        assert config.get("x", int) == 6
        source.put("a", 3)
        await eventually(lambda: config.get("a") == 3, "an update after the restart")
        watch = config.watch()
        source.put("a", 4)
        assert (await asyncio.wait_for(watch.__anext__(), 5)).new == 4
    finally:
        await config.stop()


async def test_reprs_show_no_values() -> None:
    source = MemorySource(
        {"db": {"host": "h", "password": SECRET, "port": 5432}, "plain": "visible-value"}, name="m"
    )
    config = Config([source], secrets=["plain"])
    async with config:
        bound = config.bind(DatabaseP, "db")
        text = repr(config) + str(config) + repr(config.watch()) + repr(bound)
        assert SECRET not in repr(bound.value)
        assert SECRET not in text and "visible-value" not in text and "5432" not in text
        assert "memory://m" in repr(config)
        assert config.dump()["plain"] == MASK
        assert config.dump()["db"]["password"] == MASK


@pytest.mark.parametrize(
    "key",
    [
        "aws.secret_access_key",  # AWS_SECRET_ACCESS_KEY from the environment
        "django.secret_key",  # Django's SECRET_KEY
        "jwt.signing_key",
        "storage.encryption_key",
        "kms.master_key",
        "oauth.client_secret",
        "db.password",
        "api_key",
        "github.access_token",
    ],
)
async def test_common_secret_names_are_masked(key: str) -> None:
    source = MemorySource()
    source.put(key, SECRET)
    async with Config([source]) as config:
        assert config.is_secret(key)
        assert SECRET not in repr(config.dump())


@pytest.mark.parametrize("key", ["api.key", "db.port", "keyboard.layout", "monkey", "tokens_per_second"])
async def test_ordinary_names_are_not_masked(key: str) -> None:
    source = MemorySource()
    source.put(key, "shown")
    async with Config([source]) as config:
        assert not config.is_secret(key)
        assert "shown" in repr(config.dump())


async def test_a_bound_model_with_secrets_can_be_copied_but_not_pickled() -> None:
    import copy
    import pickle

    source = MemorySource({"db": {"host": "h", "port": 1, "password": SECRET}})
    async with Config([source]) as config:
        for model in (DatabaseP, DatabaseM, DatabaseD):
            value = config.bind(model, "db").value
            copied = copy.deepcopy(value)
            assert copied.password.reveal() == SECRET and SECRET not in repr(copied)
        db = config.bind(DatabaseD, "db").value
        assert dataclasses.asdict(db)["password"].reveal() == SECRET
        assert config.bind(DatabaseP, "db").value.model_copy(deep=True).password.reveal() == SECRET
        with pytest.raises(TypeError, match="not pickled"):
            pickle.dumps(db)


async def test_an_empty_key_cannot_take_the_place_of_the_root(caplog: pytest.LogCaptureFixture) -> None:
    """`"": {...}` in a document, or a key `.` or `a..b`, named the root (or nothing): dump()
    showed only what the attacker put there, and a model bound at the root read it."""
    source = MemorySource()
    source.put("", '"": {x: 1}\ndb: {port: 5432}\n', "yaml")
    with pytest.raises(ConfigurationError, match="empty"):
        async with Config([source]):
            pass
    source = MemorySource({"db": {"port": 1}})
    async with Config([source]) as config:
        for key in (".", "a..b", "a."):
            source.put(key, 2)
            await eventually(lambda: len(config_errors(caplog)) == 1, f"the rejection of {key!r}")
            await source.delete(key)
            caplog.clear()
        assert config.dump() == {"db": {"port": 1}}
        assert set(config._flat) == {"", "db", "db.port"}


class _Flaky(MemorySource):
    """A source built from a URL that cannot be read until `up`, and is useless once closed
    (as an etcd or Consul client is)."""

    up = False

    def __init__(self) -> None:
        super().__init__({"a": 1}, name="flaky")
        self.closed = False

    async def read(self) -> Any:
        from microweave.errors import Unavailable

        if self.closed:
            raise RuntimeError("read after aclose")
        if not _Flaky.up:
            raise Unavailable("memory://flaky is down")
        return await super().read()

    async def aclose(self) -> None:
        self.closed = True


async def test_a_start_that_failed_can_be_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed start closes the sources it built; the next start builds fresh ones rather
    than reading closed ones (a service retried after its etcd came back)."""
    import microweave.config.core as core

    built: list[_Flaky] = []

    def load(url: str, **kwargs: Any) -> _Flaky:
        built.append(_Flaky())
        return built[-1]

    monkeypatch.setattr(core, "load_config_source", load)
    monkeypatch.setattr(_Flaky, "up", False)
    config = Config(["memory://flaky"])
    with pytest.raises(Exception, match="down"):
        await config.start()
    assert built[-1].closed
    monkeypatch.setattr(_Flaky, "up", True)
    await config.start()
    try:
        assert config.get("a") == 1
        assert not config.sources[0].closed  # type: ignore[attr-defined]
    finally:
        await config.stop()
