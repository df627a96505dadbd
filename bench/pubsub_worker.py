"""The two child processes of `pubsub.py`: a stack's subscriber and its publisher.

    python bench/pubsub_worker.py subscribe STACK --url U --topic T --group G --count N [--cpu C]
    python bench/pubsub_worker.py publish STACK --url U --topic T --count N [--window W] [--cpu C]

Both speak JSON lines on stdout and read commands on stdin:

- `subscribe` subscribes, then checks that its subscription is live by publishing probe messages
  (seq -1, through a publisher of the same stack) until one comes back; then it prints
  `{"event": "ready", ...}`. On `go` it starts counting its CPU time; on `published N` it knows
  how many to expect and prints its result once it has consumed all N distinct messages, or when
  none came for `--idle` seconds (the rest are counted lost).
- `publish` connects, prints `{"event": "ready", ...}`, and on `go` publishes N messages with
  `--window` publishes in flight (1: each awaited before the next), each stamped with
  CLOCK_MONOTONIC just before its publish; then it flushes (buffering stacks) and prints its result.

With `--profile FILE` each writes cProfile stats of its measured part (from `go` to its result).

Both stop when stdin reaches EOF (the bench died) or after `--max-seconds`. They pin themselves
to `--cpu` before importing anything that starts threads, and run on uvloop when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rpc_worker import _percentile, _pin, _run

PROBE_TIMEOUT = 30.0
#: seconds a worker whose stdin closed may take to close its connections before it just exits
EOF_GRACE = 2.0


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pubsub_worker.py")
    roles = parser.add_subparsers(dest="role", required=True)
    for role in ("subscribe", "publish"):
        sub = roles.add_parser(role)
        sub.add_argument("stack")
        sub.add_argument("--url", required=True)
        sub.add_argument("--topic", required=True)
        sub.add_argument("--count", type=int, required=True)
        sub.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
        sub.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
        sub.add_argument("--max-seconds", type=float, default=3600.0, help="hard bound on lifetime")
        sub.add_argument("--profile", default=None, help="write cProfile stats of the measured part here")
    roles.choices["subscribe"].add_argument("--group", required=True)
    roles.choices["subscribe"].add_argument("--idle", type=float, default=5.0)
    roles.choices["publish"].add_argument("--window", type=int, default=1)
    return parser.parse_args(argv)


def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _Profiler:
    """cProfile over the measured part, when asked (it slows everything down: figures are off)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.profile: Any = None
        if path:
            import cProfile

            self.profile = cProfile.Profile()
            self.profile.enable()

    def dump(self) -> None:
        if self.profile is not None:
            self.profile.disable()
            self.profile.dump_stats(self.path)
            self.profile = None


class Commands:
    """Lines from stdin (the bench), read by the event loop; EOF means the bench is gone."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self._buffer = b""
        # whatever it is doing (publishing, consuming), the process stops when the bench is gone
        self._main: asyncio.Task[Any] | None = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._fd = sys.stdin.fileno()
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._fd)
            self.lines.put_nowait("eof")
            if self._main is not None:
                self._main.cancel("stdin closed: the bench is gone")
                # drivers may swallow a cancellation (redis-py shields its commands): exit anyway
                asyncio.get_running_loop().call_later(EOF_GRACE, os._exit, 1)
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.lines.put_nowait(line.decode().strip())

    def done(self) -> None:
        """The result is out: the bench closing our stdin now is the normal way to end, and the
        connections close in their own time."""
        self._main = None

    async def next(self) -> str:
        line = await self.lines.get()
        if line == "eof":
            raise SystemExit("pubsub_worker: stdin closed, the bench is gone")
        return line


# -- subscribe ------------------------------------------------------------------------------


class Tally:
    """What the subscriber consumed: distinct messages, duplicates, latencies."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = bytearray(count)
        self.received = 0
        self.duplicates = 0
        self.latencies: list[int] = []
        self.first_ns = 0
        self.last_ns = 0
        self.expected: int | None = None
        self.probed = asyncio.Event()
        self.done = asyncio.Event()
        self.progress = asyncio.Event()

    def record(self, seq: int, ts: int) -> None:
        now = time.monotonic_ns()
        if seq < 0:
            self.probed.set()
            return
        if seq >= self.count or self.seen[seq]:
            self.duplicates += 1
            return
        self.seen[seq] = 1
        self.received += 1
        self.latencies.append(now - ts)
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        if self.expected is not None and self.received >= self.expected:
            self.done.set()


async def _subscribe(args: argparse.Namespace) -> None:
    from pubsub_stacks import STACKS

    stack = STACKS[args.stack]
    commands = Commands()
    tally = Tally(args.count)
    subscriber = await stack.subscriber(args.url, args.topic, args.group, tally.record)
    try:
        # the subscription is live on the engine once a message published after it comes back
        publisher = await stack.publisher(args.url, args.topic)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                while not tally.probed.is_set():
                    await publisher.publish(-1, time.monotonic_ns())
                    await publisher.flush()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(tally.probed.wait(), 0.2)
        finally:
            await publisher.aclose()
        _say({"event": "ready", "stack": stack.name, "pid": os.getpid(), "loop": _loop_name()})
        while await commands.next() != "go":
            pass
        profiler = _Profiler(args.profile)
        cpu = time.process_time()
        words = (await commands.next()).split()
        if words[:1] != ["published"]:
            raise SystemExit(f"pubsub_worker: expected 'published N', got {words!r}")
        tally.expected = int(words[1])
        if tally.received >= tally.expected:
            tally.done.set()
        # wait for all of them, or until they stop coming
        while not tally.done.is_set():
            before = tally.received
            try:
                await asyncio.wait_for(tally.done.wait(), args.idle)
            except TimeoutError:
                if tally.received == before:
                    break
        cpu = time.process_time() - cpu
        profiler.dump()
        ordered = sorted(tally.latencies)
        _say(
            {
                "event": "result",
                "received": tally.received,
                "duplicates": tally.duplicates,
                "lost": max(0, tally.expected - tally.received),
                "first_consume_ns": tally.first_ns,
                "last_consume_ns": tally.last_ns,
                "p50_ms": _percentile(ordered, 0.50) / 1e6,  # type: ignore[arg-type]
                "p99_ms": _percentile(ordered, 0.99) / 1e6,  # type: ignore[arg-type]
                "max_ms": (ordered[-1] / 1e6) if ordered else None,
                "cpu_s": cpu,
            }
        )
        commands.done()
    finally:
        await subscriber.aclose()


# -- publish --------------------------------------------------------------------------------


async def _publish(args: argparse.Namespace) -> None:
    from pubsub_stacks import STACKS

    stack = STACKS[args.stack]
    commands = Commands()
    publisher = await stack.publisher(args.url, args.topic)
    errors: list[str] = []
    try:
        _say({"event": "ready", "stack": stack.name, "pid": os.getpid(), "loop": _loop_name()})
        while await commands.next() != "go":
            pass
        publish, clock, count = publisher.publish, time.monotonic_ns, args.count
        sequence = itertools.count()

        async def worker() -> None:
            for seq in sequence:
                if seq >= count:
                    return
                try:
                    await publish(seq, clock())
                except Exception as exc:  # counted; the subscriber will not expect it
                    errors.append(repr(exc))
                    if len(errors) > 100:
                        raise

        profiler = _Profiler(args.profile)
        cpu = time.process_time()
        first = clock()
        if args.window == 1:
            await worker()
        else:
            await asyncio.gather(*(worker() for _ in range(args.window)))
        published_ns = clock()
        await publisher.flush()
        flushed_ns = clock()
        cpu = time.process_time() - cpu
        profiler.dump()
        _say(
            {
                "event": "result",
                "published": count - len(errors),
                "errors": len(errors),
                "first_publish_ns": first,
                "last_publish_ns": published_ns,
                "flushed_ns": flushed_ns,
                "cpu_s": cpu,
            }
        )
        commands.done()
        if errors:
            print(f"pubsub_worker: {len(errors)} failed publishes, first: {errors[0]}", file=sys.stderr)
    finally:
        await publisher.aclose()


async def _bounded(main: Any, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await main
    except TimeoutError:
        raise SystemExit(f"pubsub_worker: reached --max-seconds ({seconds:g} s)") from None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _pin(args.cpu)
    role = _subscribe if args.role == "subscribe" else _publish
    try:
        _run(_bounded(role(args), args.max_seconds), args.loop)
    except asyncio.CancelledError:
        print("pubsub_worker: stopped, stdin closed (the bench is gone)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
