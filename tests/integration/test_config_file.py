"""The file and env config sources with real files and a real environment: the ways deploy
tools replace a file (atomic rename, rewrite in place, a Kubernetes ConfigMap's `..data`
symlink swap), a file that goes away and comes back, one caught half-written, one that
appears later; env variables read as nested keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
from config_kit import eventually

from microweave.config import Config
from microweave.config.sources.env import EnvSource
from microweave.config.sources.file import FileSource
from microweave.errors import ConfigurationError

POLL = 0.02  # the file source's stat interval in these tests


class Db(pydantic.BaseModel):
    host: str
    port: int


async def polls(n: int = 10) -> None:
    """Let the file source look at the file `n` times."""
    await asyncio.sleep(POLL * n)


def write_atomic(path: Path, text: str) -> None:
    """What editors and deploy tools do: a temp file in the same directory, renamed over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "microweave.config" and r.levelno == level]


def doc(port: int, host: str = "h") -> str:
    return f"db:\n  host: {host}\n  port: {port}\n"


async def test_atomic_rename_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(doc(1))
    async with Config([f"file://{path}?interval={POLL}"]) as config:
        db = config.bind(Db, "db")
        assert db.value.port == 1
        for port in range(2, 12):  # the inode changes each time; it may even be reused
            write_atomic(path, doc(port))
            await eventually(lambda port=port: db.value.port == port, f"port {port}")


@pytest.mark.parametrize("ext", ["yaml", "toml", "json"])
async def test_in_place_rewrite_is_seen(tmp_path: Path, ext: str) -> None:
    texts = {
        "yaml": lambda p: f"db:\n  host: h\n  port: {p}\n",
        "toml": lambda p: f'[db]\nhost = "h"\nport = {p}\n',
        "json": lambda p: f'{{"db": {{"host": "h", "port": {p}}}}}',
    }
    path = tmp_path / f"settings.{ext}"
    path.write_text(texts[ext](1))
    async with Config([FileSource(path, interval=POLL)]) as config:
        db = config.bind(Db, "db")
        with path.open("w") as fh:  # truncate and write: same inode
            fh.write(texts[ext](12345))
        await eventually(lambda: db.value.port == 12345, "the rewritten port")


async def test_a_same_size_rewrite_within_one_timestamp_tick_is_seen(tmp_path: Path) -> None:
    """Filesystems with coarse timestamps (1 s on ext3, NFS, HFS+; 2 s on FAT; one kernel tick
    even on ext4) give an edit right after the last one the same mtime: same inode, same
    size, same mtime, different content. Simulated by putting the old mtime back."""
    path = tmp_path / "settings.yaml"
    path.write_text(doc(1111))
    before = path.stat()
    async with Config([FileSource(path, interval=POLL)]) as config:
        with path.open("r+") as fh:
            fh.write(doc(2222))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size
        await eventually(lambda: config.get("db.port") == 2222, "the same-size edit")


async def test_a_kubernetes_configmap_symlink_swap_is_seen(tmp_path: Path) -> None:
    """A ConfigMap volume: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>; an
    update writes a new timestamped directory and renames a new ..data symlink over the old."""
    volume = tmp_path / "volume"
    volume.mkdir()

    def publish(version: int, text: str) -> None:
        target = volume / f"..2026_11_30_{version}"
        target.mkdir()
        (target / "config.yaml").write_text(text)
        tmp_link = volume / "..data_tmp"
        tmp_link.symlink_to(target.name)
        os.replace(tmp_link, volume / "..data")
        if version > 1:
            shutil.rmtree(volume / f"..2026_11_30_{version - 1}")

    publish(1, doc(1))
    (volume / "config.yaml").symlink_to("..data/config.yaml")
    async with Config([FileSource(volume / "config.yaml", interval=POLL)]) as config:
        db = config.bind(Db, "db")
        assert db.value.port == 1
        publish(2, doc(2))
        await eventually(lambda: db.value.port == 2, "the swapped ConfigMap")
        publish(3, doc(2, host="other"))  # same size, same mtime second: a new inode
        await eventually(lambda: db.value.host == "other", "the second swap")


async def test_a_deleted_file_keeps_its_values_warns_once_and_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "microweave.config")
    path = tmp_path / "settings.yaml"
    path.write_text(doc(1))
    async with Config([FileSource(path, interval=POLL)]) as config:
        db = config.bind(Db, "db")
        path.unlink()
        await eventually(lambda: records(caplog, logging.WARNING), "the warning")
        await polls(20)
        gone = [m for m in records(caplog, logging.WARNING) if "gone" in m]
        assert len(gone) == 1 and str(path) in gone[0]
        assert db.value.port == 1 and config.get("db.port") == 1
        assert not records(caplog, logging.ERROR)
        path.write_text(doc(2))
        await eventually(lambda: db.value.port == 2, "the restored file")
        assert any("back" in m for m in records(caplog, logging.WARNING) + records(caplog, logging.INFO))
        path.unlink()  # gone again: a new warning for a new disappearance
        await eventually(
            lambda: len([m for m in records(caplog, logging.WARNING) if "gone" in m]) == 2, "gone again"
        )
        write_atomic(path, doc(2))  # back with the same content: nothing changes, nothing breaks
        await polls(10)
        assert db.value.port == 2


async def test_a_half_written_file_is_rejected_then_completed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "settings.yaml"
    full = "db:\n  host: h\n  port: 2\n  tags: [a, b, secret-tag]\n"
    path.write_text(doc(1))
    async with Config([FileSource(path, interval=POLL)]) as config:
        db = config.bind(Db, "db")
        with path.open("w") as fh:
            fh.write(full[: full.index("secret-tag") + 3])  # cut inside the flow list
            fh.flush()
            await eventually(lambda: records(caplog, logging.ERROR), "the rejection")
            await polls(10)
            (error,) = records(caplog, logging.ERROR)
            assert str(path) in error and "not valid YAML" in error
            assert "sec" not in error
            assert db.value.port == 1
            fh.write(full[full.index("secret-tag") + 3 :])
        await eventually(lambda: db.value.port == 2, "the completed file")
        assert config.get("db.tags") == ["a", "b", "secret-tag"]
        assert len(records(caplog, logging.ERROR)) == 1


async def test_a_file_that_fails_validation_keeps_the_last_good_instance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(doc(1))
    async with Config([FileSource(path, interval=POLL)]) as config:
        db = config.bind(Db, "db")
        good = db.value
        write_atomic(path, "db:\n  host: h\n  port: port-9999-x\n")
        await eventually(lambda: records(caplog, logging.ERROR), "the rejection")
        (error,) = records(caplog, logging.ERROR)
        assert str(path) in error and "port" in error and "port-9999-x" not in error
        assert db.value is good


async def test_an_optional_missing_file_is_picked_up_later(tmp_path: Path) -> None:
    path = tmp_path / "later.yaml"
    base = tmp_path / "base.yaml"
    base.write_text(doc(1))
    urls = [f"file://{base}?interval={POLL}", f"file://{path}?optional=true&interval={POLL}"]
    async with Config(urls) as config:
        assert config.get("db.port") == 1
        write_atomic(path, "db:\n  port: 2\n")
        await eventually(lambda: config.get("db.port") == 2, "the late file")
        assert config.get("db.host") == "h"  # merged over the base


async def test_a_missing_required_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no such file") as info:
        async with Config([FileSource(tmp_path / "nope.yaml")]):
            pass
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "file://x.ini",
        "file://x.yaml?interval=0",
        "file://x.yaml?interval=abc",
        "file://x.yaml?bogus=1",
        "file://",
    ],
)
def test_bad_file_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        Config([url])


# -- env ----------------------------------------------------------------------------------


async def test_env_nested_keys_and_precedence_over_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(doc(1, host="file-host"))
    for name in [n for n in os.environ if n.startswith("MWTESTAPP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MWTESTAPP_DB__PORT", "5432")
    monkeypatch.setenv("MWTESTAPP_LOG_LEVEL", "debug")
    monkeypatch.setenv("MWTESTAPP_A__B__C", "deep")
    monkeypatch.setenv("MWTESTAPP___SKIPPED", "x")
    monkeypatch.setenv("MWTESTAPPNOT", "x")
    async with Config([f"file://{path}", "env://MWTESTAPP_"]) as config:
        db = config.bind(Db, "db")
        assert db.value.port == 5432 and db.value.host == "file-host"
        assert config.get("log_level") == "debug"
        assert config.get("a.b.c") == "deep"
        assert config.dump()["db"] == {"host": "file-host", "port": "5432"}
        assert not any(k.startswith("_") or "not" in k for k in config.dump())
    assert EnvSource("MWTESTAPP_").url == "env://MWTESTAPP_"


def test_env_source_in_a_fresh_process(tmp_path: Path) -> None:
    script = (
        "import asyncio\n"
        "from microweave.config import Config\n"
        "async def main():\n"
        "    async with Config(['env://SVC_']) as c:\n"
        "        print(c.get('db.port', int) + 1, c.get('db.password'), c.dump()['db']['password'])\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVC_")}
    env.update(SVC_DB__PORT="5432", SVC_DB__PASSWORD="pw-value")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5433", "pw-value", "**********"]


async def test_a_fifo_or_directory_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Reading a FIFO blocks until someone writes to it: a worker thread stuck for good, and a
    process that cannot exit. Only regular files are read."""
    fifo = tmp_path / "settings.yaml"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    for path in (fifo, folder):
        with pytest.raises(Exception, match=r"not a regular file|Is a directory"):
            await asyncio.wait_for(Config([FileSource(path)]).start(), 30)
        async with Config([FileSource(path, optional=True, interval=POLL)]) as config:
            assert config.dump() == {}
