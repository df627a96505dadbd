"""Config sources: change-to-visible latency, and the cost of a read.

    python bench/config.py                        # every source that can run here
    python bench/config.py --sources memory,etcd
    python bench/config.py --samples 50 --json

- latency, per source: from the write (a second instance of the source's `set()`, as another
  process would write; for `file`, an atomic rename of a new version) to the moment the
  reading `Config` has applied it (its change hook runs); median and p90 over `--samples`
  writes. Target <= 100 ms for etcd and Consul. The file source checks every `interval`
  seconds (0.5 by default), so its latency is up to that (here close to it: each write comes
  just after the previous change was seen).
- get: `config.get("db.port")`, `config.get("db.port", int)` on a value that already is an
  int, and `config.get("db.port", int)` on text from the environment (a conversion), per call,
  over a config of ~1,000 keys. Target <= 2 us for the first two.
- bound: reading a field of a bound model, `view.value.port`.

Engines (etcd, Consul) are started here on free loopback ports with the classes the tests use
(tests/engines), in a temporary directory, and stopped by PID at the end. A source whose
engine, binary or driver is missing is skipped with the reason. Single runs on a shared
machine are noisy: compare to the target, run again to confirm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the engines' start-up code, shared with the tests

from microweave.config import Config, Source  # noqa: E402
from microweave.config.sources.memory import MemorySource  # noqa: E402

SOURCES = ("memory", "file", "etcd", "consul")
TARGETS = {"latency_ms": 100.0, "get_us": 2.0}


class Database(msgspec.Struct):
    host: str = "localhost"
    port: int = 5432


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


Writer = Callable[[int], Any]  # write version i of db.port; may be a coroutine function


@contextlib.asynccontextmanager
async def open_memory(base: Path) -> AsyncIterator[tuple[Source, Writer]]:
    source = MemorySource()
    yield source, lambda i: source.set("db.port", str(i))


@contextlib.asynccontextmanager
async def open_file(base: Path) -> AsyncIterator[tuple[Source, Writer]]:
    path = base / "settings.yaml"
    path.write_text("db:\n  port: 0\n")

    def write(i: int) -> None:
        new = base / f"settings.{i}.tmp"
        new.write_text(f"db:\n  port: {i}\n")
        os.replace(new, path)

    from microweave._backends import load_config_source

    yield load_config_source(f"file://{path}"), write


@contextlib.asynccontextmanager
async def _on_engine(server: Any, url: str) -> AsyncIterator[tuple[Source, Writer]]:
    from microweave._backends import load_config_source

    await asyncio.to_thread(server.start)
    try:
        # given to the reading Config as instances, so they are ours to close
        writer, reader = load_config_source(url), load_config_source(url)
        try:
            yield reader, lambda i: writer.set("db.port", str(i))
        finally:
            await writer.aclose()
            await reader.aclose()
    finally:
        await asyncio.to_thread(server.stop)


def open_etcd(base: Path) -> contextlib.AbstractAsyncContextManager[tuple[Source, Writer]]:
    from engines.etcd import EtcdServer

    server = EtcdServer(base)
    return _on_engine(server, server.url(f"/bench-{uuid.uuid4().hex[:8]}"))


def open_consul(base: Path) -> contextlib.AbstractAsyncContextManager[tuple[Source, Writer]]:
    from engines.consul import ConsulAgent

    agent = ConsulAgent(base)
    return _on_engine(agent, f"{agent.url}/bench-{uuid.uuid4().hex[:8]}")


OPENERS = {"memory": open_memory, "file": open_file, "etcd": open_etcd, "consul": open_consul}


def unavailable(source: str) -> str | None:
    """Why a source cannot run here (None: it can)."""
    try:
        if source in ("etcd", "consul"):
            importlib.import_module(f"microweave.config.sources.{source}")  # its driver is there
        if source == "etcd":
            from engines import find_binary

            find_binary("etcd", debian="etcd-server")
        elif source == "consul":
            from engines.consul import consul_binary

            consul_binary()
    except Exception as exc:  # ImportError and pytest.UsageError alike say what is missing
        return str(exc).strip().splitlines()[0]
    return None


async def latency(source: Source, write: Writer, samples: int) -> list[float]:
    """Seconds from each write to the reading config's change hook."""
    seen: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    async with Config([source]) as config:

        def applied(changes: list[Any]) -> None:
            for change in changes:
                seen.put_nowait((int(change.new), time.perf_counter()))

        config.on_change(applied)
        out = []
        for i in range(1, samples + 1):
            start = time.perf_counter()
            done = write(i)
            if asyncio.iscoroutine(done):
                await done
            while True:
                value, at = await asyncio.wait_for(seen.get(), 10)
                if value == i:
                    break
            out.append(at - start)
            await asyncio.sleep(0.02)  # writes spaced like a human's, not a burst
        return out


def per_call_us(fn: Callable[[], Any], number: int = 200_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


async def read_costs() -> dict[str, float]:
    tree = {f"section{i}": {f"key{j}": j for j in range(10)} for i in range(100)}
    tree["db"] = {"host": "db.local", "port": 5432, "port_text": "5432"}
    async with Config([MemorySource(tree)]) as config:
        view = config.bind(Database, "db")
        get = config.get
        return {
            "get_us": per_call_us(lambda: get("db.port")),
            "get_typed_us": per_call_us(lambda: get("db.port", int)),
            "get_convert_us": per_call_us(lambda: get("db.port_text", int), 50_000),
            "bound_field_us": per_call_us(lambda: view.value.port),
        }


async def main(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {}
    log("measuring read costs ...")
    results["reads"] = await read_costs()
    for name in args.sources:
        reason = unavailable(name)
        if reason:
            log(f"{name}: skipped ({reason})")
            results[name] = {"skipped": reason}
            continue
        log(f"{name}: {args.samples} writes ...")
        with tempfile.TemporaryDirectory(prefix=f"bench-config-{name}-") as tmp:
            async with OPENERS[name](Path(tmp)) as (source, write):
                samples = await latency(source, write, args.samples)
        results[name] = {
            "median_ms": statistics.median(samples) * 1e3,
            "p90_ms": statistics.quantiles(samples, n=10)[-1] * 1e3,
        }
    if args.json:
        print(json.dumps(results))
        return 0
    reads = results.pop("reads")
    print(f"{'read':<28}{'us/call':>10}{'target':>10}")
    for key, value in reads.items():
        target = f"<= {TARGETS['get_us']:g}" if key in ("get_us", "get_typed_us") else ""
        print(f"{key:<28}{value:>10.3f}{target:>10}")
    print()
    print(f"{'source':<10}{'median ms':>12}{'p90 ms':>10}{'target':>10}")
    for name, row in results.items():
        if "skipped" in row:
            print(f"{name:<10}  skipped: {row['skipped']}")
            continue
        target = f"<= {TARGETS['latency_ms']:g}" if name in ("etcd", "consul") else ""
        print(f"{name:<10}{row['median_ms']:>12.1f}{row['p90_ms']:>10.1f}{target:>10}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default=",".join(SOURCES), type=lambda s: [x for x in s.split(",") if x])
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    unknown = set(args.sources) - set(SOURCES)
    if unknown:
        parser.error(f"unknown source(s) {', '.join(sorted(unknown))}; known: {', '.join(SOURCES)}")
    return args


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
