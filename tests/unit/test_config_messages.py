"""What the config says and shows, as a newcomer meets it: errors name config keys, the
shell's `${VAR:-default}` works, pydantic's own secret types are secret to the config, URL
passwords are masked in dumps, and a bound view read too early says what to do."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pydantic
import pytest
from config_kit import eventually

from microweave.config import Config, Secret
from microweave.config.secret import mask_credentials
from microweave.config.sources.memory import MemorySource
from microweave.errors import ConfigurationError


class Database(msgspec.Struct):
    port: int = 5432


class DatabaseP(pydantic.BaseModel):
    port: int = 5432


class Keys(pydantic.BaseModel):
    dsn: pydantic.SecretStr
    blob: pydantic.SecretBytes | None = None
    name: str = "x"


@pytest.mark.parametrize("model", [Database, DatabaseP])
async def test_a_model_that_does_not_validate_names_the_config_key(model: type) -> None:
    config = Config([MemorySource({"db": {"port": "not-a-port"}})])
    config.bind(model, "db")
    with pytest.raises(ConfigurationError) as info:
        await config.start()
    assert "db.port" in info.value.detail and "$." not in info.value.detail
    assert "not-a-port" not in info.value.detail  # the value may be a secret: never quoted


async def test_a_typed_get_that_does_not_convert_names_the_key() -> None:
    async with Config([MemorySource({"db": {"port": "nope"}})]) as config:
        with pytest.raises(ConfigurationError, match=r"config key db\.port") as info:
            config.get("db.port", int)
        assert "nope" not in info.value.detail


async def test_shell_style_default_reads_like_the_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MW_UNSET_FOR_TEST", raising=False)
    monkeypatch.setenv("MW_SET_FOR_TEST", "given")
    data = {
        "a": "${MW_UNSET_FOR_TEST:-fallback}",
        "b": "${MW_UNSET_FOR_TEST:fallback}",
        "c": "${MW_SET_FOR_TEST:-x}",
    }
    async with Config([MemorySource(data)]) as config:
        assert (config.get("a"), config.get("b"), config.get("c")) == ("fallback", "fallback", "given")


async def test_pydantic_secret_types_are_secret_keys() -> None:
    async with Config([MemorySource({"keys": {"dsn": "dsn-value-9", "name": "n"}})]) as config:
        bound = config.bind(Keys, "keys")
        assert bound.value.dsn.get_secret_value() == "dsn-value-9"
        assert config.is_secret("keys.dsn") and config.is_secret("keys.blob")
        assert not config.is_secret("keys.name")
        assert "dsn-value-9" not in repr(config.dump())
        assert "keys.dsn" in config.secrets


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgres://app:pw1@db:5432/x", "postgres://app:**********@db:5432/x"),
        ("redis://:pw2@cache:6379/0", "redis://:**********@cache:6379/0"),
        ("see http://host/a@b", "see http://host/a@b"),
        ("ops@example.com", "ops@example.com"),
    ],
)
def test_a_url_password_is_masked_whatever_the_key(text: str, shown: str) -> None:
    assert mask_credentials(text) == shown


async def test_dump_masks_url_passwords_and_reveal_shows_them() -> None:
    async with Config([MemorySource({"database_url": "postgres://app:pw3@db/x"})]) as config:
        assert config.dump() == {"database_url": "postgres://app:**********@db/x"}
        assert config.dump(reveal=True) == {"database_url": "postgres://app:pw3@db/x"}
        assert config.get("database_url") == "postgres://app:pw3@db/x"  # asked for: given


async def test_a_bound_view_read_before_start_says_what_to_do() -> None:
    config = Config([MemorySource({"db": {"port": 1}})])
    bound = config.bind(Database, "db")
    with pytest.raises(ConfigurationError, match="before its config has started"):
        bound.value  # noqa: B018
    async with config:
        assert bound.value.port == 1


def test_a_secret_that_is_not_text_says_to_quote_it() -> None:
    class Holder(msgspec.Struct):
        password: Secret

    async def start() -> None:
        config = Config([MemorySource({"password": 123})])
        config.bind(Holder)
        await config.start()

    with pytest.raises(ConfigurationError, match="quote it"):
        asyncio.run(start())


# -- what a slow or hostile update may cost ------------------------------------------------


def test_an_item_repr_never_shows_its_data() -> None:
    from microweave.config import Item

    assert "hunter2" not in repr(Item(b"password: hunter2", "yaml"))
    assert "hunter2" not in repr(Item("hunter2", "text"))


async def test_a_nan_read_again_is_not_a_change() -> None:
    source = MemorySource()
    source.put("", "ratio: .nan\n", "yaml")
    async with Config([source]) as config:
        seen: list[list[str]] = []
        config.on_change(lambda changes: seen.append([c.key for c in changes]))
        source.put("", "ratio: .nan\nother: 1\n", "yaml")
        await eventually(lambda: config.get("other") == 1, "the update")
        assert seen == [["other"]]


async def test_a_slow_async_hook_runs_one_call_at_a_time_with_changes_folded() -> None:
    source = MemorySource({"n": 0})
    release = asyncio.Event()
    calls: list[list[tuple[str, Any, Any]]] = []
    running = 0
    most = 0

    async def slow(changes: list[Any]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        calls.append([(c.key, c.old, c.new) for c in changes])
        await release.wait()
        running -= 1

    async with Config([source]) as config:
        config.on_change(slow)
        for i in range(1, 101):
            source.put("n", i)
            await asyncio.sleep(0)  # each update applied on its own
        await eventually(lambda: config.get("n") == 100, "the 100th update")
        assert len(config._hook_tasks) == 1  # one task, not one per update
        release.set()
        await eventually(lambda: running == 0 and len(calls) == 2, "the folded call")
    assert most == 1
    first, folded = calls
    assert folded == [("n", first[0][2], 100)]  # everything after the first call, as one change


async def test_a_large_document_is_parsed_off_the_event_loop(tmp_path: Any) -> None:
    """A document that takes long to parse (deep YAML flow nesting) must not stop the loop:
    a ticker keeps running while it is parsed. Compared as a ratio within this test: the
    longest pause of the ticker against the whole time the update took."""
    import os
    import time

    path = tmp_path / "big.yaml"
    path.write_text("a: 1\n")
    slow = "a: [" + ("[" * 40 + "]" * 40 + ",") * 1500 + "]\n"  # ~120 KB, slow to scan
    async with Config([f"file://{path}?interval=0.05"]) as config:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.ensure_future(ticker())
        started = time.perf_counter()
        new = tmp_path / "big.tmp"
        new.write_text(slow)
        os.replace(new, path)
        await eventually(lambda: isinstance(config.get("a"), list), "the large document", timeout=60)
        took = time.perf_counter() - started
        stop.set()
        await ticking
    assert took > 0 and max(gaps) < took / 2, (max(gaps), took)
