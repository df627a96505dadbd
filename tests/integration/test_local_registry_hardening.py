"""The default `local://` registry on a shared host (issue 7, findings 8 to 11).

8. A registry directory someone else owns or can write to is refused, end to end.
9. Entries that are not regular files (a FIFO, a link to /dev/zero, a huge file) neither hang
   nor exhaust a reader, and each is reported once.
10. An idle reader of 5,000 entries reads nothing again after its first pass.
11. A writer whose clock is 45 s off is neither hidden nor deleted while it heartbeats.

Readers that could hang or run out of memory before the fix run in child processes with a
timeout and a memory limit, so such a failure is a clean assertion, not a stuck test run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cli_helpers import assert_clean, cli
from helpers import REPO, async_wait_until

from microweave import ConfigurationError
from microweave.registry import Action, Event, Node, Service
from microweave.registry.local import LocalRegistry
from microweave.registry.local.tracker import SETTLE

NOBODY = 65534
WAIT = 10.0

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def record(name: str = "greeter", node: str = "n1", *, address: str = "127.0.0.1:1") -> Service:
    return Service(name=name, version="1.0.0", nodes=[Node(id=node, address=address)])


def node_ids(services: list[Service]) -> set[str]:
    return {n.id for s in services for n in s.nodes}


@pytest.fixture
def shared_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /tmp, with XDG_RUNTIME_DIR unset: the default registry lands in it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("MICRO_REGISTRY_ADDRESS", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # gettempdir() caches its answer
    return tmp


def squat(shared_tmp: Path, *, mode: int = 0o777, owner: int | None = None) -> Path:
    """What another user does first: create the victim's default directory."""
    base = shared_tmp / f"microweave-{os.getuid()}"
    (base / "registry").mkdir(parents=True)
    base.chmod(mode)
    if owner is not None:
        os.chown(base, owner, owner)
        os.chown(base / "registry", owner, owner)
    return base


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def service_env(shared_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICRO_") and k != "XDG_RUNTIME_DIR"}
    env.update(TMPDIR=str(shared_tmp), PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


# -- 8: the directory ----------------------------------------------------------------------------


async def test_a_squatted_world_writable_default_directory_is_refused(shared_tmp: Path) -> None:
    base = squat(shared_tmp, mode=0o777)
    registry = LocalRegistry()
    assert registry.root == base / "registry"
    with pytest.raises(ConfigurationError) as info:
        await registry.register(record())
    message = str(info.value)
    assert f"{base} is writable by other users (mode 0777)" in message
    assert "impostors" in message and "MICRO_REGISTRY_ADDRESS" in message
    assert list((base / "registry").iterdir()) == []  # nothing of ours went into it
    for reading in (registry.get_service("greeter"), registry.list_services(), registry.watch()):
        with pytest.raises(ConfigurationError, match="writable by other users"):
            await reading  # a caller must not read an impostor's entries either


@root_only
async def test_a_default_directory_owned_by_another_user_is_refused(shared_tmp: Path) -> None:
    base = squat(shared_tmp, mode=0o700, owner=NOBODY)
    with pytest.raises(ConfigurationError) as info:
        await LocalRegistry().register(record())
    assert f"{base} is owned by uid {NOBODY}, not by you (uid {os.geteuid()})" in str(info.value)
    assert "remove it" in str(info.value)


@root_only
async def test_a_link_planted_by_another_user_is_refused(shared_tmp: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = shared_tmp / f"microweave-{os.getuid()}"
    link.symlink_to(mine)
    os.lchown(link, NOBODY, NOBODY)  # its owner can repoint it whenever they like
    with pytest.raises(ConfigurationError, match=f"symbolic link owned by uid {NOBODY}"):
        await LocalRegistry().register(record())


async def test_a_world_writable_explicit_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    root.chmod(0o775)
    with pytest.raises(ConfigurationError, match=r"writable by other users \(mode 0775\).*chmod go-w"):
        await LocalRegistry(root).get_service("greeter")


async def test_a_world_writable_service_directory_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a root others may enter (0755, as older versions left it) holding a 0777 service directory
    root = tmp_path / "registry"
    registry = LocalRegistry(root)
    await registry.register(record("billing", "b1"))
    root.chmod(0o755)
    (root / "greeter").mkdir()
    (root / "greeter").chmod(0o777)
    impostor = {"expires": time.time() + 60, "ttl": 60.0, "service": json.loads(record().to_json())}
    (root / "greeter" / "n1.json").write_text(json.dumps(impostor))
    with pytest.raises(ConfigurationError, match=r"greeter is writable by other users \(mode 0777\)"):
        await registry.get_service("greeter")
    with pytest.raises(ConfigurationError, match="writable by other users"):
        await registry.register(record("greeter", "mine"))
    caplog.set_level(logging.WARNING, logger="microweave.registry")
    assert {s.name for s in await registry.list_services()} == {"billing"}
    assert "writable by other users" in caplog.text


async def test_directories_are_private_and_entries_0600_whatever_the_umask(shared_tmp: Path) -> None:
    old = os.umask(0)
    try:
        registry = LocalRegistry()
        await registry.register(record())
    finally:
        os.umask(old)
    base = shared_tmp / f"microweave-{os.getuid()}"
    for path in (base, base / "registry", base / "registry" / "greeter"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    [entry] = (base / "registry" / "greeter").iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert node_ids(await registry.get_service("greeter")) == {"n1"}


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../../etc", "nul\0byte"])
async def test_names_that_leave_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "registry"
    registry = LocalRegistry(root)
    with pytest.raises(ConfigurationError, match="cannot be stored in the local registry"):
        await registry.register(record(name=name))
    with pytest.raises(ConfigurationError, match="node id"):
        await registry.register(record(node=name))
    with pytest.raises(ConfigurationError, match="cannot be stored in the local registry"):
        await registry.get_service(name)
    assert files_under(tmp_path) == []


def test_a_service_refuses_a_squatted_registry_end_to_end(shared_tmp: Path) -> None:
    base = squat(shared_tmp, mode=0o777)
    env = service_env(shared_tmp)
    # through the CLI: the error line and what to do, exit code 2, no traceback
    ran = cli("run", "microweave.cli.demo_services:greeter", env=env, timeout=60)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    text = " ".join((ran.stdout + ran.stderr).split())  # rich wraps long lines
    assert "writable by other users" in text and "MICRO_REGISTRY_ADDRESS" in text, text
    assert_clean(ran.stdout + ran.stderr)
    # a plain script running a Service: it stops with the same message (exit 2, no traceback),
    # registering nothing
    script = "from microweave import Service; Service('greeter').run()"
    ran = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 2, ran.stderr
    said = f"greeter cannot start: the local registry directory {base} is writable by other users"
    assert said in ran.stderr
    assert "Traceback" not in ran.stderr
    assert list((base / "registry").iterdir()) == []


# -- 9: entries that are not files ------------------------------------------------------------

READER = """
import asyncio, json, sys
from microweave.registry import Node, Service
from microweave.registry.local import LocalRegistry
from microweave.registry.local.tracker import SETTLE

async def main():
    registry = LocalRegistry(sys.argv[1])
    first = await registry.get_service("greeter")
    async with await registry.watch("greeter") as watcher:
        await registry.register(Service(name="greeter", nodes=[Node(id="late", address="h:2")]))
        event = await asyncio.wait_for(anext(watcher), 10)
    ids = sorted(n.id for s in first for n in s.nodes)
    print(json.dumps({"first": ids, "event": [event.action, event.service.nodes[0].id]}))

asyncio.run(main())
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: /dev/zero would need more


async def test_fifos_links_and_huge_files_neither_hang_nor_exhaust_a_reader(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    await LocalRegistry(root).register(record(node="real"))
    greeter = root / "greeter"
    os.mkfifo(greeter / "fifo.json")
    (greeter / "zero.json").symlink_to("/dev/zero")
    (greeter / "huge.json").write_bytes(b" " * (2 << 20))

    ran = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", READER, str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        preexec_fn=_limit_memory,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result == {"first": ["real"], "event": ["create", "late"]}
    for name, why in (
        ("fifo.json", "it is a FIFO, not a regular file"),
        ("zero.json", "it is a symbolic link, not a regular file"),
        ("huge.json", "it is larger than 1048576 bytes"),
    ):
        assert ran.stderr.count(f"skipping {greeter / name}: {why}") == 1, ran.stderr


async def test_each_skipped_entry_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "registry"
    registry = LocalRegistry(root, poll=0.02)
    await registry.register(record(node="real"))
    os.mkfifo(root / "greeter" / "fifo.json")
    (root / "greeter" / "garbage.json").write_text("{not json")
    (root / "not-a-service").write_text("a file where a service directory goes")
    caplog.set_level(logging.WARNING, logger="microweave.registry")
    async with await registry.watch() as watcher:
        for i in range(10):  # every change makes readers list the directory again
            await registry.register(record(node=f"n{i}"))
            assert "real" in node_ids(await registry.get_service("greeter"))
            await registry.list_services()
            assert (await asyncio.wait_for(anext(watcher), WAIT)).action is Action.CREATE
    skips = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert sorted(m.split("skipping ", 1)[1].split(":", 1)[0] for m in skips) == sorted(
        [
            str(root / "greeter" / "fifo.json"),
            str(root / "greeter" / "garbage.json"),
            str(root / "not-a-service"),
        ]
    ), skips


# -- 10: polling cost --------------------------------------------------------------------------


async def test_an_idle_reader_of_5000_entries_reads_nothing_again(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    writer = LocalRegistry(root)
    many = 5000
    await writer.register(
        Service(
            name="greeter", version="1.0.0", nodes=[Node(id=f"n{i}", address=f"h:{i}") for i in range(many)]
        )
    )
    reader = LocalRegistry(root, poll=0.05)

    gaps: list[float] = []

    async def tick() -> None:  # the event loop's responsiveness while the reader works
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.ensure_future(tick())
    await asyncio.sleep(0.01)
    gaps.clear()  # count the ticks during the lookup only
    started = time.perf_counter()
    assert len(node_ids(await reader.get_service("greeter"))) == many
    first = time.perf_counter() - started
    ticking.cancel()
    assert reader.reads == many
    # the 5,000 reads ran off the event loop: it kept ticking meanwhile (on the loop, the
    # lookup would have run start to end in one step, between two ticks)
    assert len(gaps) >= 10, (first, gaps)

    async with await reader.watch() as watcher:  # a client's cache watches everything
        polls = asyncio.ensure_future(anext(watcher))
        for _ in range(30):  # idle: lookups spanning the settling time, the watcher polling
            assert len(node_ids(await reader.get_service("greeter"))) == many
            await asyncio.sleep(0.1)
        assert not polls.done()  # nothing changed: no event
        polls.cancel()
        assert reader.reads == many  # not one entry read again

        started = time.perf_counter()
        await reader.get_service("greeter")
        later = time.perf_counter() - started

        # one node changes: that file, and only it, is read again
        await writer.register(record(node="n7", address="moved:7"))
        await async_wait_until(
            lambda: _address_of(reader, "n7"), timeout=WAIT, what="the changed node to be seen"
        )
        assert reader.reads - many <= 2, reader.reads - many  # the file, perhaps by watcher and lookup
    # an idle lookup costs a small fraction of the first (measured together, as a ratio)
    assert later < first / 4, (first, later)


async def _address_of(registry: LocalRegistry, node: str) -> bool:
    [service] = await registry.get_service("greeter")
    return any(n.id == node and n.address == "moved:7" for n in service.nodes)


async def test_a_file_edited_in_place_is_still_noticed(tmp_path: Path) -> None:
    # Writers replace entries by rename (a new inode); a person or tool editing one in place
    # keeps the inode, so only the periodic full stat pass can see it: it must.
    root = tmp_path / "registry"
    registry = LocalRegistry(root)
    await registry.register(record(address="127.0.0.1:1"))
    assert [n.address for s in await registry.get_service("greeter") for n in s.nodes] == ["127.0.0.1:1"]
    listings = -1
    while registry._tracker.listings != listings:  # until the directory is settled: not listed
        listings = registry._tracker.listings
        await asyncio.sleep(SETTLE / 4)
        await registry.get_service("greeter")
    registry._tracker.reverify = 0.5  # 30 s by default
    path = root / "greeter" / "n1.json"
    edited = path.read_text().replace("127.0.0.1:1", "127.0.0.1:2")
    with path.open("r+") as file:  # same inode, same size
        file.write(edited)

    async def moved() -> bool:
        return [n.address for s in await registry.get_service("greeter") for n in s.nodes] == ["127.0.0.1:2"]

    await async_wait_until(moved, timeout=WAIT, what="the edit to be seen")


# -- 11: clock skew -----------------------------------------------------------------------------


class SkewedWriter:
    """Another process whose clock is `skew` seconds off ours: the `expires` it writes and the
    mtimes of its files (as on a network filesystem) follow its clock."""

    def __init__(self, root: Path, skew: float, ttl: float, node: str = "skewed") -> None:
        self.path = root / "greeter" / f"{node}.json"
        self.skew = skew
        self.ttl = ttl
        self.service = record(node=node)
        self.beats = 0

    def beat(self) -> None:
        now = time.time() + self.skew
        body = {"expires": now + self.ttl, "ttl": self.ttl, "service": json.loads(self.service.to_json())}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.chmod(0o600)
        os.utime(tmp, (now, now))
        os.replace(tmp, self.path)
        self.beats += 1

    async def heartbeat(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(self.ttl / 3)


@pytest.fixture
async def registry_root(tmp_path: Path) -> AsyncIterator[Path]:
    root = tmp_path / "registry"
    registry = LocalRegistry(root)
    await registry.register(record(node="honest"))  # creates the directories as a writer would
    yield root


@pytest.mark.parametrize("skew", [45.0, -45.0], ids=["writer-ahead", "writer-behind"])
async def test_a_skewed_writer_is_neither_hidden_nor_deleted(registry_root: Path, skew: float) -> None:
    ttl = 1.0
    writer = SkewedWriter(registry_root, skew, ttl)
    long_lived = LocalRegistry(registry_root, poll=0.05)
    events: list[Event] = []

    async def collect() -> None:
        async with await long_lived.watch("greeter") as watcher:
            async for event in watcher:
                events.append(event)

    collecting = asyncio.ensure_future(collect())
    await asyncio.sleep(0.2)  # subscribed
    beating = asyncio.ensure_future(writer.heartbeat())
    try:
        until = time.monotonic() + 4 * ttl
        while time.monotonic() < until:
            await asyncio.sleep(0.1)
            assert "skewed" in node_ids(await long_lived.get_service("greeter"))
            fresh = LocalRegistry(registry_root)  # a reader that sees the file for the first time
            assert "skewed" in node_ids(await fresh.get_service("greeter"))
            assert writer.path.exists()
        assert writer.beats >= 6
        assert [(e.action, node_ids([e.service])) for e in events] == [(Action.CREATE, {"skewed"})]
    finally:
        beating.cancel()

    # the writer stops: a reader that watched it drops it within its TTL, and deletes nothing
    async def gone() -> bool:
        return "skewed" not in node_ids(await long_lived.get_service("greeter"))

    await async_wait_until(gone, timeout=WAIT, what="the stopped writer to drop out")
    await async_wait_until(lambda: _has_delete(events), timeout=WAIT, what="the watcher's DELETE")
    collecting.cancel()
    assert writer.path.exists()


async def _has_delete(events: list[Event]) -> bool:
    return any(e.action is Action.DELETE for e in events)


async def test_readers_do_not_delete_on_their_own_clock(registry_root: Path) -> None:
    writer = SkewedWriter(registry_root, -3600.0, 1.0, node="ancient")
    writer.beat()  # by our clock an hour old: dead, but a reader only just saw it
    reader = LocalRegistry(registry_root, sweep_after=0.5)
    assert node_ids(await reader.get_service("greeter")) == {"honest"}
    assert writer.path.exists()
    assert node_ids(await LocalRegistry(registry_root).get_service("greeter")) == {"honest"}
    assert writer.path.exists()

    # once this reader has itself seen it dead and unchanged for `sweep_after`, it cleans up
    async def swept() -> bool:
        await reader.get_service("greeter")
        return not writer.path.exists()

    await async_wait_until(swept, timeout=WAIT, what="the reader to remove the dead entry")
    assert node_ids(await reader.get_service("greeter")) == {"honest"}
