"""The config against hostile or broken engines, for real: someone with write access to the
etcd prefix floods it while a service serves calls."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from microweave import Client, Context, Service
from microweave._backends import load_config_source

#: a process that writes PUTS values to churn.k0..k49 under the prefix, 32 at a time, as fast
#: as etcd takes them, then `churn.last = final`
WRITER = """
import asyncio, sys
from microweave._backends import load_config_source
async def main():
    source = load_config_source(sys.argv[1])
    left = int(sys.argv[2])
    async def one(i):
        nonlocal left
        while left > 0:
            left -= 1
            await source.set(f"churn.k{i % 50}", str(left))
    await asyncio.gather(*(one(i) for i in range(32)))
    await source.set("churn.last", "final")
    await source.aclose()
asyncio.run(main())
"""


class Settings:
    async def get(self, req: dict[str, Any], ctx: Context) -> dict[str, Any]:
        assert ctx.config is not None
        return {"value": ctx.config.get(req["key"])}


async def _calls_in(client: Client, seconds: float, until: Callable[[], bool] = lambda: False) -> int:
    """How many calls one caller completes in `seconds` (or until `until()`)."""
    done, end = 0, time.monotonic() + seconds
    while time.monotonic() < end and not until():
        await client.call("churned", "Settings.Get", {"key": "k1.v"})
        done += 1
    return done


@pytest.mark.parametrize("engine", ["etcd", "consul"])
async def test_a_flooded_prefix_leaves_the_service_serving_and_the_config_converges(
    engine: str, request: pytest.FixtureRequest, registry_dir: Any
) -> None:
    """3,000 keys under the prefix, then thousands of writes a second to it. The etcd source
    yielded a full snapshot per watch response, each costing the config a rebuild of every
    key on the event loop: calls waited behind rebuilds (a few per second got through) and the
    config fell ever further behind (after the flood it had not caught up a minute later).
    Coalesced and paced, calls keep a fair part of their idle rate and the last write arrives
    (Consul's blocking queries coalesce by themselves, spaced 50 ms apart: the same holds)."""
    prefix = f"hostile-{uuid.uuid4().hex[:12]}"
    if engine == "etcd":
        url = request.getfixturevalue("etcd_server").url(f"/{prefix}")
    else:
        url = f"{request.getfixturevalue('consul_server').url}/{prefix}"
    filler = load_config_source(url)
    try:
        gate = asyncio.Semaphore(64)

        async def put(i: int) -> None:
            async with gate:
                await filler.set(f"k{i}.v", str(i))

        await asyncio.gather(*(put(i) for i in range(3000)))
    finally:
        await filler.aclose()

    service = Service("churned", config=[url], drain_delay=0, grace=2)
    service.handler(Settings)
    async with service, Client(transports=("local",), timeout=30) as client:
        assert service.config.get("k2999.v") == "2999"
        window = 3.0
        idle = await _calls_in(client, window)
        writer = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, url, "20000")
        try:
            await asyncio.sleep(0.5)  # the flood is under way
            busy = await _calls_in(client, window, until=lambda: writer.returncode is not None)
            assert await asyncio.wait_for(writer.wait(), 120) == 0
        finally:
            if writer.returncode is None:
                writer.kill()
                await writer.wait()
        ratio = busy / idle
        print(f"\n{engine} flood: {idle} calls idle, {busy} under the flood ({ratio:.2f})")
        began = time.monotonic()
        while service.config.get("churn.last") != "final":
            assert time.monotonic() - began < 30, "the config never caught up with the flood"
            await asyncio.sleep(0.05)
        caught_up = time.monotonic() - began
        assert service.config.get("k2999.v") == "2999"
    print(f"{engine} flood: caught up {caught_up:.2f} s after the last write")
    # before: about 0.001 (75 calls against 65,000); after, about 0.15 with the writer and
    # etcd busy on the same two cores
    assert ratio >= 0.03, f"{busy} calls under the flood against {idle} idle: the loop is starved"


@pytest.mark.parametrize("engine", ["etcd", "consul"])
async def test_a_writer_of_a_shared_prefix_cannot_read_the_environment(
    engine: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """`${VAR}` is expanded only in sources this host controls: a value written to etcd or
    Consul that names the service's environment stays as written, while the same text in a
    file is expanded."""
    from microweave import Config

    monkeypatch.setenv("MW_HOSTILE_SECRET", "env-secret-5c1e")
    if engine == "etcd":
        url = request.getfixturevalue("etcd_server").url(f"/hostile-{uuid.uuid4().hex[:8]}")
    else:
        url = f"{request.getfixturevalue('consul_server').url}/hostile-{uuid.uuid4().hex[:8]}"
    writer = load_config_source(url)
    try:
        await writer.set("greeting", "hello ${MW_HOSTILE_SECRET}")
        path = tmp_path / "own.yaml"
        path.write_text("mine: ${MW_HOSTILE_SECRET}\n")
        async with Config([f"file://{path}", url]) as config:
            assert config.get("mine") == "env-secret-5c1e"  # this host's own file: expanded
            assert config.get("greeting") == "hello ${MW_HOSTILE_SECRET}"
            assert config.dump()["greeting"] == "hello ${MW_HOSTILE_SECRET}"
    finally:
        await writer.delete("greeting")
        await writer.aclose()


def test_the_etcd_password_is_not_in_the_options_repr() -> None:
    source = load_config_source("etcd://root:hunter2-opt@127.0.0.1:2379/p")
    assert "hunter2-opt" not in repr(source) and "hunter2-opt" not in repr(source.options)  # type: ignore[attr-defined]
