"""Publish-to-consume throughput and latency: microweave's brokers against raw client libraries
and faststream, on core NATS, JetStream, RabbitMQ and Redis Streams.

    python bench/pubsub.py                  # 3 rounds x 100,000 messages per stack
    python bench/pubsub.py --quick          # 1 round x 20,000
    python bench/pubsub.py --json           # one JSON object per stack and window on stdout
    python bench/pubsub.py --stacks microweave-nats,raw-nats -n 50000 --window 1,64

Each run starts a subscriber process (pinned to the first CPU) and, once its subscription is
live, a publisher process (pinned to the second), both on uvloop when installed. The publisher
publishes N ~64-byte messages as fast as the stack lets it while keeping its delivery semantics
(awaiting each publish: buffered on core NATS, confirmed on JetStream, RabbitMQ and Redis; or
`--window` of them in flight), each stamped with the time of its publish; the subscriber
consumes them in a queue group. Throughput is distinct messages consumed per second from the
first publish to the last consume; latency is consume time - publish time per message.

The engines (nats-server, nats-server -js, redis-server, RabbitMQ) are started here on free
loopback ports with temp dirs, one of each kind the chosen stacks need, and stopped by their
PIDs. Rounds interleave the stacks (rotating their order); figures are medians over rounds, and
ratios are taken within each round. A stack whose engine or packages are missing (or whose
microweave backend is not written yet) is skipped with what to install.

Progress goes to stderr; stdout gets the table, or with --json only the JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "pubsub_worker.py"
sys.path.insert(0, str(HERE))

from pubsub_engines import EngineProcess, engine_missing, start_engine  # noqa: E402
from pubsub_report import NOISY, Case, render, versions  # noqa: E402
from pubsub_stacks import STACKS  # noqa: E402
from rpc_worker import cpu_seconds, machine_busy_seconds  # noqa: E402

DEFAULT_STACKS = tuple(STACKS)
READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 5.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _csv_ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/pubsub.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 20,000 messages")
    parser.add_argument("--json", action="store_true", help="one JSON object per stack and window on stdout")
    parser.add_argument("--stacks", type=_csv, default=None, help="comma-separated; default: all available")
    parser.add_argument(
        "-n", "--count", type=int, default=None, help="messages per run (100,000; quick 20,000)"
    )
    parser.add_argument(
        "--window",
        dest="windows",
        type=_csv_ints,
        default=[1],
        help="publishes in flight: 1,64 (default 1)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds, medians taken (default 3, quick 1)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvloop if installed")
    parser.add_argument(
        "--settle", type=float, default=None, help="max seconds to wait for a quiet machine before each run"
    )
    parser.add_argument(
        "--idle", type=float, default=5.0, help="seconds without a message before the rest count lost"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin publisher and subscriber to CPUs")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="write cProfile stats of each publisher and subscriber into DIR (slows them: figures are off)",
    )
    parser.add_argument("--list", action="store_true", help="list the stacks and exit")
    args = parser.parse_args(argv)
    args.count = args.count or (20_000 if args.quick else 100_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.settle = args.settle if args.settle is not None else (1.0 if args.quick else 5.0)
    if args.count < 1:
        parser.error("--count must be at least 1")
    return args


def choose_stacks(names: list[str] | None) -> tuple[list[str], list[tuple[str, str]]]:
    """The stacks to run: the ones asked for (each must be available), else every available one;
    and the default ones skipped, with why."""
    chosen, skipped = [], []
    for name in names or DEFAULT_STACKS:
        stack = STACKS.get(name)
        if stack is None:
            raise SystemExit(f"unknown stack {name!r}; known: {', '.join(STACKS)}")
        reason = engine_missing(stack.engine) or stack.unavailable()
        if reason is None:
            chosen.append(name)
        elif names:
            raise SystemExit(f"stack {name} cannot run here: {reason}")
        else:
            log(f"{name}: skipped: {reason}")
            skipped.append((name, reason))
    return chosen, skipped


# -- processes ------------------------------------------------------------------------------


@dataclass
class Placement:
    subscriber_cpu: int | None
    publisher_cpu: int | None

    @classmethod
    def choose(cls, pin: bool) -> Placement:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if pin and len(cpus) >= 2:
            return cls(cpus[0], cpus[1])
        return cls(None, None)

    def describe(self) -> str:
        if self.subscriber_cpu is None:
            return "not pinned (fewer than 2 CPUs, or --no-pin)"
        return (
            f"subscriber pinned to CPU {self.subscriber_cpu}, publisher to CPU {self.publisher_cpu}, "
            "engine on any CPU"
        )


class Worker:
    """One pubsub_worker.py process: JSON lines out, commands in; stopped by its PID."""

    def __init__(self, command: list[str]) -> None:
        # own session: Ctrl-C reaches only the bench, which stops its children in order
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        self._buffer = b""

    def read(self, timeout: float, what: str) -> dict[str, Any]:
        """The next JSON line, waiting at most `timeout` seconds."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout:.0f} s")
            readable, _, _ = select.select([fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"exited with code {self.process.wait(5)} before its {what}")
                self._buffer += chunk
            elif self.process.poll() is not None:
                raise RuntimeError(f"exited with code {self.process.returncode} before its {what}")
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        """Close its stdin (it exits on EOF), then SIGTERM, then SIGKILL."""
        process = self.process
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        for sig, wait in ((None, EXIT_TIMEOUT), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                return
            if sig is not None:
                process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(wait)


def _run_timeout(args: argparse.Namespace) -> float:
    """Seconds one run may take: generous, for ~200 msgs/s on a busy machine."""
    return 60.0 + float(args.count) * 0.005


def run_once(
    stack: str,
    engine: EngineProcess,
    window: int,
    run_id: str,
    args: argparse.Namespace,
    placement: Placement,
) -> dict[str, Any]:
    topic, group = f"bench.{run_id}", f"bench-{run_id}"
    bound = _run_timeout(args)
    common = [
        stack, "--url", engine.url, "--topic", topic, "--count", str(args.count),
        "--loop", args.loop, "--max-seconds", str(bound + READY_TIMEOUT * 2),
    ]  # fmt: skip

    def cpu(n: int | None) -> list[str]:
        return [] if n is None else ["--cpu", str(n)]

    def profile(role: str) -> list[str]:
        if not args.profile:
            return []
        return ["--profile", os.path.join(args.profile, f"{run_id}.{role}.pstats")]

    subscriber = Worker(
        [
            *(sys.executable, str(WORKER), "subscribe", *common, "--group", group, "--idle", str(args.idle)),
            *cpu(placement.subscriber_cpu),
            *profile("sub"),
        ]
    )
    publisher: Worker | None = None
    try:
        try:
            loop = subscriber.read(READY_TIMEOUT, "ready line").get("loop", "?")
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"subscriber: {exc}") from None
        publisher = Worker(
            [
                *(sys.executable, str(WORKER), "publish", *common, "--window", str(window)),
                *cpu(placement.publisher_cpu),
                *profile("pub"),
            ]
        )
        try:
            publisher.read(READY_TIMEOUT, "ready line")
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"publisher: {exc}") from None
        broker_pid = engine.cpu_pid
        broker_cpu = cpu_seconds(broker_pid) if broker_pid else None
        machine_cpu = machine_busy_seconds()
        began = time.monotonic()
        subscriber.send("go")
        publisher.send("go")
        try:
            published = publisher.read(bound, "result")
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"publisher: {exc}") from None
        subscriber.send(f"published {published['published']}")
        try:
            consumed = subscriber.read(bound, "result")
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"subscriber: {exc}") from None
        elapsed = time.monotonic() - began
        machine_cpu = machine_busy_seconds() - machine_cpu
        if broker_cpu is not None and broker_pid is not None:
            broker_cpu = cpu_seconds(broker_pid) - broker_cpu
    finally:
        if publisher is not None:
            publisher.stop()
        subscriber.stop()

    received, sent = consumed["received"], published["published"]
    span = (consumed["last_consume_ns"] - published["first_publish_ns"]) / 1e9
    publish_span = (published["flushed_ns"] - published["first_publish_ns"]) / 1e9
    ours = published["cpu_s"] + consumed["cpu_s"] + (broker_cpu or 0.0)
    return {
        "stack": stack,
        "window": window,
        "count": args.count,
        "loop": loop,
        "msgs_per_s": received / span if received and span > 0 else 0.0,
        "publish_per_s": sent / publish_span if publish_span > 0 else None,
        "p50_ms": consumed["p50_ms"],
        "p99_ms": consumed["p99_ms"],
        "max_ms": consumed["max_ms"],
        "pub_us_per_msg": published["cpu_s"] / sent * 1e6 if sent else None,
        "sub_us_per_msg": consumed["cpu_s"] / received * 1e6 if received else None,
        "broker_us_per_msg": broker_cpu / received * 1e6 if broker_cpu is not None and received else None,
        "other_cpu": max(0.0, machine_cpu - ours) / elapsed,
        "received": received,
        "lost": consumed["lost"],
        "duplicates": consumed["duplicates"],
        "errors": published["errors"],
    }


def settle(max_wait: float, sample: float = 0.25) -> float:
    """Wait (at most `max_wait` s) until other processes leave the CPUs alone; the load seen last."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(sample)
        busy = (machine_busy_seconds() - before) / sample
        if busy < NOISY or time.monotonic() >= deadline:
            return busy


class Engines:
    """One engine of each kind the stacks need, started on first use, stopped by PID at the end."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.running: dict[str, EngineProcess] = {}
        self.failed: dict[str, str] = {}

    def get(self, kind: str) -> EngineProcess:
        if kind in self.failed:
            raise RuntimeError(self.failed[kind])
        if kind not in self.running:
            log(f"starting {kind}...")
            try:
                engine = start_engine(kind, os.path.join(self.directory, kind))
            except (OSError, RuntimeError) as exc:
                self.failed[kind] = f"{kind} did not start: {exc}"
                raise RuntimeError(self.failed[kind]) from None
            self.running[kind] = engine
            pid = f" (pid {engine.pid})" if engine.pid else ""
            log(f"{kind} ready on {re.sub(r'//[^@/]*@', '//', engine.url)}{pid}")
        return self.running[kind]

    def stop_all(self) -> None:
        running, self.running = self.running, {}
        for kind, engine in reversed(running.items()):
            engine.stop()
            if engine.pid:
                log(f"{kind} (pid {engine.pid}) stopped")

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def plan(stacks: list[str], args: argparse.Namespace) -> list[tuple[int, int, str]]:
    """(round, window, stack) in run order: stacks interleaved, their order rotated per round."""
    steps = []
    for round_ in range(args.rounds):
        shift = round_ % len(stacks)
        order = stacks[shift:] + stacks[:shift]
        for window in args.windows:
            steps += [(round_, window, stack) for stack in order]
    return steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, each in STACKS.items():
            reason = engine_missing(each.engine) or each.unavailable()
            status = "" if reason is None else f"  [unavailable: {reason}]"
            print(f"{name:<22} {each.description}{status}")
        return 0
    stacks, skipped = choose_stacks(args.stacks)
    if not stacks:
        raise SystemExit("no stack to run")
    placement = Placement.choose(not args.no_pin)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        log(f"profiling into {args.profile} (python -m pstats FILE): the figures below are slowed down")
    steps = plan(stacks, args)
    log(f"{len(steps)} runs of {args.count:,} messages; {placement.describe()}")

    # SIGTERM unwinds like Ctrl-C, so the engines and workers are stopped on the way out
    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    cases: dict[tuple[str, int], Case] = {}
    loops: set[str] = set()
    directory = tempfile.mkdtemp(prefix="microweave-bench-pubsub-")
    try:
        with Engines(directory) as engines:
            # start every engine first (RabbitMQ takes 10-40 s): the runs then follow each other
            for kind in dict.fromkeys(STACKS[s].engine for s in stacks):
                with contextlib.suppress(RuntimeError):
                    engines.get(kind)
            for i, (round_, window, stack) in enumerate(steps, 1):
                case = cases.setdefault((stack, window), Case(stack, window))
                label = f"[{i}/{len(steps)}] round {round_ + 1} {stack} window={window}"
                try:
                    engine = engines.get(STACKS[stack].engine)
                except RuntimeError as exc:
                    case.failures.append(str(exc))
                    log(f"{label}: FAILED: {exc}")
                    continue
                if args.settle > 0:
                    busy = settle(args.settle)
                    if busy >= NOISY:
                        log(f"{label}: the machine is busy ({busy:.2f} CPUs of other work), measuring anyway")
                run_id = f"{stack.replace('-', '')}.r{round_}.w{window}.{os.getpid()}"
                try:
                    result = run_once(stack, engine, window, run_id, args, placement)
                except (RuntimeError, ValueError, KeyError) as exc:
                    case.failures.append(str(exc))
                    log(f"{label}: FAILED: {exc}")
                    continue
                case.rounds[round_] = result
                loops.add(result["loop"])
                log(_progress(label, result))
    except KeyboardInterrupt:
        log("interrupted; engines and workers stopped")
        return 130
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    if args.json:
        for name, reason in skipped:
            sys.stdout.write(json.dumps({"stack": name, "skipped": reason}) + "\n")
        for case in cases.values():
            sys.stdout.write(json.dumps(case.summary()) + "\n")
    else:
        engines_used = [STACKS[s].engine for s in stacks]
        env_line = (
            f"{versions(engines_used)}; event loop: {', '.join(sorted(loops)) or '-'}; {placement.describe()}"
        )
        print(render(cases, stacks, args, env_line, skipped))
    return 1 if any(case.failures for case in cases.values()) else 0


def _progress(label: str, r: dict[str, Any]) -> str:
    def us(key: str) -> str:
        return "-" if r.get(key) is None else f"{r[key]:.0f}"

    text = (
        f"{label}: {r['msgs_per_s']:,.0f} msgs/s (published at {r['publish_per_s'] or 0:,.0f}/s), "
        f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms; us/msg pub {us('pub_us_per_msg')}, "
        f"sub {us('sub_us_per_msg')}, engine {us('broker_us_per_msg')} (other cpu {r['other_cpu']:.2f})"
    )
    for key in ("lost", "duplicates", "errors"):
        if r.get(key):
            text += f", {r[key]:,} {key}"
    return text


if __name__ == "__main__":
    sys.exit(main())
