"""Config in a real service: handlers read `ctx.config` and see changes live; `microweave run`
takes its sources from MICRO_CONFIG; a `Secret` never reaches the registry record, the logs,
the reprs or the replies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cli_helpers import CliProcess, cli, registry_env, wait_for_service

from microweave import Client, Context, MicroError, Secret, Service
from microweave.config.secret import MASK
from microweave.config.sources.memory import MemorySource

PASSWORD = "pw-7f3a-never-shown"
NEW_PASSWORD = "pw-9c1e-never-shown-either"
API_KEY = "key-51d0-never-shown"
SCRIPT = "tests/integration/services/secretive.py"


class Database(msgspec.Struct):
    host: str
    port: int
    password: Secret


class KeyRequest(msgspec.Struct):
    key: str


class Settings:
    """Answers with what the serving service's config holds."""

    async def get(self, req: KeyRequest, ctx: Context) -> dict[str, Any]:
        assert ctx.config is not None
        return {"value": ctx.config.get(req.key), "port": ctx.config.get("db.port", int)}

    async def dump(self, req: KeyRequest, ctx: Context) -> dict[str, Any]:
        assert ctx.config is not None
        return ctx.config.dump()

    async def leak(self, req: KeyRequest, ctx: Context) -> dict[str, Any]:
        """A handler that hands a Secret to the encoder: it fails loudly, it does not leak."""
        assert ctx.config is not None
        return {"password": ctx.config.get("db.password", Secret)}


@pytest.fixture
async def served(registry_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[Service, Client, MemorySource]]:
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"db:\n  host: file-host\n  port: 5432\n  password: {PASSWORD}\n")
    overrides = MemorySource(name="overrides")
    service = Service(
        "configured-inproc",
        config=[f"file://{settings}?interval=0.05", overrides],
        metadata={"api_key": Secret(API_KEY)},
        drain_delay=0,
        grace=2,
    )
    service.handler(Settings)
    db = service.config.bind(Database, "db")
    async with service, Client(transports=("local",), timeout=20) as client:
        assert db.value.password.reveal() == PASSWORD
        yield service, client, overrides


def no_secret(text: str) -> None:
    for secret in (PASSWORD, NEW_PASSWORD, API_KEY):
        assert secret not in text


async def test_handlers_read_ctx_config_live(
    served: tuple[Service, Client, MemorySource], registry_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service, client, overrides = served
    reply = await client.call("configured-inproc", "Settings.Get", {"key": "db.host"})
    assert reply == {"value": "file-host", "port": 5432}
    overrides.put("db.port", "6543", "text")
    overrides.put("db.password", NEW_PASSWORD, "text")
    limit = time.monotonic() + 10
    while (await client.call("configured-inproc", "Settings.Get", {"key": "db.host"}))["port"] != 6543:
        assert time.monotonic() < limit, "the override never reached the handler"
        await asyncio.sleep(0.02)

    dumped = await client.call("configured-inproc", "Settings.Dump", {"key": ""})
    assert dumped["db"] == {"host": "file-host", "port": "6543", "password": MASK}

    with pytest.raises(MicroError) as info:
        await client.call("configured-inproc", "Settings.Leak", {"key": ""})
    no_secret(str(info.value) + repr(info.value) + json.dumps(info.value.detail))

    # what the registry holds of this node: its record, as other processes read it
    files = list((registry_dir / "configured-inproc").glob("*.json"))
    assert files
    text = "".join(f.read_text() for f in files)
    no_secret(text)
    assert MASK in text  # the api key is there, masked
    no_secret(msgspec.json.encode(service.record()).decode())
    no_secret(repr(service) + repr(service.config) + repr(service.config.sources))
    no_secret(str(service.config.dump()))
    no_secret(caplog.text)


def test_microweave_run_takes_its_sources_from_micro_config(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"db:\n  host: file-host\n  port: 6000\n  password: {PASSWORD}\ngreeting: hi\n")
    env = registry_env(root)
    env = {k: v for k, v in env.items() if not k.startswith("SECRETIVE_")}
    sources = [f"file://{settings}?interval=0.05", "env://SECRETIVE_"]
    env.update(
        MICRO_CONFIG=" ".join(sources),
        SECRETIVE_DB__PORT="6001",  # env is later: it wins over the file
        SECRETIVE_API_KEY=API_KEY,
    )
    with CliProcess("run", SCRIPT, env=env, log=tmp_path / "run.log") as process:
        records = wait_for_service("secretive", env=env, process=process)
        called = cli("call", "secretive", "Settings.Get", '{"key": "db.port"}', env=env)
        assert called.returncode == 0, called
        urls = [f"file://{settings}", "env://SECRETIVE_"]  # a source is named without its options
        expected = {"value": "6001", "sources": urls, "password_length": len(PASSWORD)}
        assert json.loads(called.stdout) == expected

        tmp = settings.with_name("settings.tmp")
        tmp.write_text(f"db:\n  host: new-host\n  port: 6000\n  password: {NEW_PASSWORD}\ngreeting: hi\n")
        os.replace(tmp, settings)
        limit = time.monotonic() + 15
        while True:
            called = cli("call", "secretive", "Settings.Get", '{"key": "db.host"}', env=env)
            assert called.returncode == 0, called
            reply = json.loads(called.stdout)
            if reply["value"] == "new-host":
                break
            assert time.monotonic() < limit, f"the file change never reached the service: {reply}"
            time.sleep(0.1)
        assert reply["password_length"] == len(NEW_PASSWORD)

        described = cli("describe", "secretive", "--json", env=env)
        assert described.returncode == 0, described
        (node,) = json.loads(described.stdout)[0]["nodes"]
        assert node["metadata"]["api_key"] == MASK
        registry_files = "".join(p.read_text() for p in root.rglob("*.json"))
        for text in (described.stdout, json.dumps(records), registry_files):
            no_secret(text)
    output = process.log_path.read_text(errors="replace")
    assert "config changed" in output and "db.host" in output and "get db.host" in output, output
    no_secret(output)
