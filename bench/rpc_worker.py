"""The two child processes of `rpc.py`: a stack's server, and a closed-loop load generator.

    python bench/rpc_worker.py serve STACK [--cpu N] [--max-seconds S]
    python bench/rpc_worker.py load STACK --address A --kind unary|stream --concurrency C ...

Ready signal: once listening, `serve` prints one JSON line on stdout,
`{"event": "ready", "stack": ..., "address": "127.0.0.1:PORT", "pid": ...}`, and prints nothing
else there. It stops on SIGTERM/SIGINT, when its stdin reaches EOF (the bench died), or after
`--max-seconds`, whichever comes first. `load` prints one JSON line with its result.

Both pin themselves to `--cpu` before importing anything that starts threads (Linux applies
`sched_setaffinity` to the calling thread, and threads inherit it), and run on uvloop when it
is installed unless `--loop asyncio` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from typing import Any


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rpc_worker.py")
    roles = parser.add_subparsers(dest="role", required=True)
    for role in ("serve", "load"):
        sub = roles.add_parser(role)
        sub.add_argument("stack")
        sub.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
        sub.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--max-seconds", type=float, default=3600.0, help="hard bound on lifetime")
    load = roles.choices["load"]
    load.add_argument("--address", required=True)
    load.add_argument("--kind", choices=("unary", "stream"), default="unary")
    load.add_argument("--concurrency", type=int, default=1)
    load.add_argument("--duration", type=float, default=5.0)
    load.add_argument("--warmup", type=float, default=1.0)
    load.add_argument("--server-pid", type=int, default=None, help="to measure the server's CPU time")
    load.add_argument("--broker-pid", type=int, default=None, help="to measure a broker's CPU time")
    load.add_argument("--stream-batch", type=int, default=100_000, help="messages per stream call")
    return parser.parse_args(argv)


def _pin(cpu: int | None) -> list[int]:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _run(main: Any, loop: str) -> tuple[Any, str]:
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main), "uvloop"
    import asyncio

    return asyncio.run(main), "asyncio"


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU time spent by everything on this machine (all CPUs, steal included), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (every thread), from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# -- serve ----------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    import asyncio
    import signal

    from rpc_stacks import STACKS

    stack = STACKS[args.stack]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def stdin_readable() -> None:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data:  # EOF: whoever started us is gone
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    # a pipe from rpc.py; epoll refuses regular files and /dev/null, which never reach EOF anyway
    with contextlib.suppress(OSError, ValueError):
        loop.add_reader(sys.stdin.fileno(), stdin_readable)
    server = await stack.serve(args.host)
    try:
        ready = {
            "event": "ready",
            "stack": stack.name,
            "address": server.address,
            "pid": os.getpid(),
            "loop": type(loop).__module__.partition(".")[0],
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        try:
            async with asyncio.timeout(args.max_seconds):
                await stop.wait()
        except TimeoutError:
            print(f"rpc_worker: {stack.name} server reached --max-seconds, stopping", file=sys.stderr)
    finally:
        await server.aclose()


# -- load -----------------------------------------------------------------------------------


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class _Phase:
    __slots__ = ("measuring", "stop")

    def __init__(self) -> None:
        self.measuring = False
        self.stop = False


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from rpc_stacks import STACKS

    stack = STACKS[args.stack]
    client = await stack.client(args.address)
    phase = _Phase()
    latencies: list[float] = []
    counted = [0]
    errors: list[str] = []
    try:
        await client.check()

        async def unary_worker() -> None:
            one = await client.worker()
            clock = time.perf_counter
            record = latencies.append
            while not phase.stop:
                start = clock()
                try:
                    await one()
                except Exception as exc:
                    errors.append(repr(exc))
                    if len(errors) > 1000:
                        raise
                    continue
                if phase.measuring:
                    record(clock() - start)

        async def stream_worker() -> None:
            while not phase.stop:
                stream = client.stream(args.stream_batch)
                try:
                    async for _ in stream:
                        counted[0] += 1
                        if phase.stop:
                            break
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]

        worker = unary_worker if args.kind == "unary" else stream_worker
        tasks = [asyncio.ensure_future(worker()) for _ in range(args.concurrency)]
        try:
            async with asyncio.timeout(args.warmup + args.duration + 30):
                await asyncio.sleep(args.warmup)
                for task in tasks:
                    if task.done():
                        task.result()  # a worker that died in warm-up: report why
                server_cpu = cpu_seconds(args.server_pid) if args.server_pid else None
                broker_cpu = cpu_seconds(args.broker_pid) if args.broker_pid else None
                client_cpu = time.process_time()
                machine_cpu = machine_busy_seconds()
                counted_before = counted[0]
                began = time.perf_counter()
                phase.measuring = True
                await asyncio.sleep(args.duration)
                phase.measuring = False
                elapsed = time.perf_counter() - began
                counted_after = counted[0]
                client_cpu = time.process_time() - client_cpu
                machine_cpu = machine_busy_seconds() - machine_cpu
                if server_cpu is not None:
                    server_cpu = cpu_seconds(args.server_pid) - server_cpu
                if broker_cpu is not None:
                    broker_cpu = cpu_seconds(args.broker_pid) - broker_cpu
                phase.stop = True
                await asyncio.gather(*tasks)
        finally:
            phase.stop = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await client.aclose()

    result: dict[str, Any] = {"kind": args.kind, "stack": stack.name, "concurrency": args.concurrency}
    if args.kind == "unary":
        done = len(latencies)
        ordered = sorted(latencies)
        result.update(
            rps=done / elapsed,
            p50_ms=_percentile(ordered, 0.50) * 1e3,
            p99_ms=_percentile(ordered, 0.99) * 1e3,
            calls=done,
        )
    else:
        done = counted_after - counted_before
        result.update(msgs_per_s=done / elapsed, msgs=done)
    per = "call" if args.kind == "unary" else "msg"
    result[f"client_cpu_us_per_{per}"] = client_cpu / done * 1e6 if done else None
    result[f"server_cpu_us_per_{per}"] = server_cpu / done * 1e6 if done and server_cpu is not None else None
    if broker_cpu is not None:  # the stack's broker (nats-server) is part of the stack, not noise
        result[f"broker_cpu_us_per_{per}"] = broker_cpu / done * 1e6 if done else None
    # CPUs' worth of work done by other processes meanwhile: a noisy neighbour skews the figures
    ours = client_cpu + (server_cpu or 0.0) + (broker_cpu or 0.0)
    result["other_cpu"] = max(0.0, machine_cpu - ours) / elapsed
    result["seconds"] = elapsed
    result["errors"] = len(errors)
    if errors:
        print(f"rpc_worker: {len(errors)} failed calls, first: {errors[0]}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    cpus = _pin(args.cpu)
    # our siblings (rpc_stacks) resolve whichever way this script was started
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if args.role == "serve":
        _run(_serve(args), args.loop)
        return 0
    result, loop = _run(_load(args), args.loop)
    result["loop"] = loop
    result["cpus"] = cpus
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
