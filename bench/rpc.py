"""Unary echo and server streaming: microweave against raw grpc.aio, raw TCP, and NATS request/reply.

    python bench/rpc.py                 # 3 rounds x 5 s per case, after 1 s of warm-up
    python bench/rpc.py --quick         # 1 round x 2 s
    python bench/rpc.py --json          # one JSON object per measurement on stdout
    python bench/rpc.py --stacks microweave-grpc,grpc-aio --concurrency 64 --kinds unary

Each stack's server runs in its own process pinned to the first CPU, each measurement's load
generator in another pinned to the second (when there are two), both on uvloop when installed.
Load is closed loop: `concurrency` workers each wait for a reply before sending the next call.
Rounds interleave the stacks (rotating their order), and each figure is the median over rounds,
so ratios compare stacks measured under the same conditions on a noisy machine. The NATS stacks
(faststream and raw nats-py) get a nats-server each, started here and stopped by its PID; a
stack whose server or packages are missing is skipped with what to install.

Progress goes to stderr; stdout gets the table, or with --json only the JSON lines. See
bench/README.md for what each stack is and how to add one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "rpc_worker.py"
sys.path.insert(0, str(HERE))

from rpc_nats import NATS_URL_ENV, NatsServer, start_nats_server  # noqa: E402
from rpc_report import NOISY, Case, render, versions  # noqa: E402
from rpc_stacks import STACKS  # noqa: E402
from rpc_worker import machine_busy_seconds  # noqa: E402

DEFAULT_STACKS = (
    "microweave-grpc",
    "microweave-tcp",
    "microweave-tcp-mw3",
    "grpc-aio",
    "raw-tcp",
    "faststream-nats",
    "nats-py",
)
READY_TIMEOUT = 30.0
CASE_SLACK = 60.0  # seconds a load process may take beyond warm-up + duration (start, connect)


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
        prog="bench/rpc.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per case (0.5 s warm-up)")
    parser.add_argument("--json", action="store_true", help="one JSON object per measurement on stdout")
    parser.add_argument("--stacks", type=_csv, default=None, help="comma-separated; default: all available")
    parser.add_argument("--concurrency", type=_csv_ints, default=[1, 16, 64], help="default 1,16,64")
    parser.add_argument("--kinds", type=_csv, default=["unary", "stream"], help="unary,stream (default both)")
    parser.add_argument(
        "--stream-concurrency", type=_csv_ints, default=[1], help="parallel streams; default 1"
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per case (default 5, quick 2)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before measuring (1, quick 0.5)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds, medians taken (default 3, quick 1)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvloop if installed")
    parser.add_argument(
        "--settle", type=float, default=None, help="max seconds to wait for a quiet machine before each case"
    )
    parser.add_argument(
        "--retries", type=int, default=None, help="re-measure a noisy case up to N times (default 2, quick 0)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load to CPUs")
    parser.add_argument(
        "--broker-cpu",
        choices=("any", "server", "load"),
        default="any",
        help="where nats-server runs: any CPU (default), or the server's or load generator's",
    )
    parser.add_argument("--list", action="store_true", help="list the stacks and exit")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    args.settle = args.settle if args.settle is not None else (1.0 if args.quick else 5.0)
    unknown_kinds = set(args.kinds) - {"unary", "stream"}
    if unknown_kinds:
        parser.error(f"unknown kinds {sorted(unknown_kinds)}; choose from unary, stream")
    return args


def choose_stacks(names: list[str] | None) -> tuple[list[str], list[tuple[str, str]]]:
    """The stacks to run: the ones asked for (each must be available), else every available one;
    and the default ones skipped, with why."""
    chosen, skipped = [], []
    for name in names or DEFAULT_STACKS:
        stack = STACKS.get(name)
        if stack is None:
            raise SystemExit(f"unknown stack {name!r}; known: {', '.join(STACKS)}")
        reason = stack.unavailable()
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
    server_cpu: int | None
    load_cpu: int | None
    #: the CPUs a broker (nats-server) may run on; None: wherever we may
    broker_cpus: set[int] | None = None

    @classmethod
    def choose(cls, pin: bool, broker: str = "any") -> Placement:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if pin and len(cpus) >= 2:
            broker_cpus = {"any": None, "server": {cpus[0]}, "load": {cpus[1]}}[broker]
            return cls(cpus[0], cpus[1], broker_cpus)
        return cls(None, None)

    def describe(self) -> str:
        if self.server_cpu is None:
            return "not pinned (fewer than 2 CPUs, or --no-pin)"
        text = f"server pinned to CPU {self.server_cpu}, load generator to CPU {self.load_cpu}"
        if self.broker_cpus is not None:
            text += f", nats-server to CPU {','.join(map(str, sorted(self.broker_cpus)))}"
        return text


def _cpu_args(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["--cpu", str(cpu)]


@dataclass
class RunningServer:
    stack: str
    process: subprocess.Popen[bytes]
    address: str
    loop: str
    #: the environment of the server and of its load generators (its own registry)
    env: dict[str, str]
    #: the stack's own nats-server, when it needs one
    broker: NatsServer | None = None


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first stdout line of `process`, waiting at most `timeout` seconds."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no ready line within {timeout:.0f} s")
        readable, _, _ = select.select([fd], [], [], min(left, 0.5))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"exited with code {process.wait(5)} before it was ready")
            data += chunk
        elif process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before it was ready")
    return data.partition(b"\n")[0]


class Servers:
    """The stacks' server processes; every one is stopped by its PID on the way out."""

    def __init__(self, registry: str, placement: Placement, loop: str, max_seconds: float) -> None:
        self.registry = registry
        self.placement = placement
        self.loop = loop
        self.max_seconds = max_seconds
        self.running: dict[str, RunningServer] = {}

    def start(self, stack: str) -> RunningServer:
        # A registry of its own per stack: two stacks serving `echo` in one registry would have
        # their clients balance calls across both servers.
        registry = os.path.join(self.registry, stack)
        os.makedirs(registry, exist_ok=True)
        env = {**os.environ, "MICRO_REGISTRY": "local", "MICRO_REGISTRY_ADDRESS": registry}
        broker = None
        if STACKS[stack].broker == "nats":
            try:
                broker = start_nats_server(registry + ".nats", self.placement.broker_cpus)
            except (OSError, RuntimeError) as exc:
                raise RuntimeError(f"{stack}: {exc}") from None
            env[NATS_URL_ENV] = broker.url
            log(f"{stack}: nats-server ready on {broker.url} (pid {broker.pid})")
        command = [
            sys.executable,
            str(WORKER),
            "serve",
            stack,
            "--loop",
            self.loop,
            "--max-seconds",
            str(self.max_seconds),
            *_cpu_args(self.placement.server_cpu),
        ]
        try:
            # Own session: Ctrl-C reaches only us, and we stop the servers in order.
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True
            )
        except BaseException:
            if broker is not None:
                broker.stop()
            raise
        try:
            ready = json.loads(_read_line(process, READY_TIMEOUT))
            if ready.get("event") != "ready":
                raise RuntimeError(f"unexpected first line {ready!r}")
        except BaseException as exc:
            self._stop(process)
            if broker is not None:
                broker.stop()
            if isinstance(exc, Exception):
                raise RuntimeError(f"{stack} server: {exc}") from None
            raise
        server = RunningServer(stack, process, ready["address"], ready.get("loop", "?"), env, broker)
        self.running[stack] = server
        log(f"{stack} server ready on {server.address} (pid {process.pid}, {server.loop})")
        return server

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def stop_all(self) -> None:
        running, self.running = self.running, {}
        for server in running.values():
            self._stop(server.process)
            log(f"{server.stack} server (pid {server.process.pid}) stopped")
            if server.broker is not None:
                server.broker.stop()
                log(f"{server.stack} nats-server (pid {server.broker.pid}) stopped")

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def settle(max_wait: float, sample: float = 0.25) -> float:
    """Wait (at most `max_wait` s) until other processes leave the CPUs alone; the load seen last."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(sample)
        busy = (machine_busy_seconds() - before) / sample
        if busy < NOISY or time.monotonic() >= deadline:
            return busy


def run_case(
    server: RunningServer, kind: str, concurrency: int, args: argparse.Namespace, cpu: int | None
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(WORKER),
        "load",
        server.stack,
        "--address",
        server.address,
        "--kind",
        kind,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(args.duration),
        "--warmup",
        str(args.warmup),
        "--server-pid",
        str(server.process.pid),
        *(["--broker-pid", str(server.broker.pid)] if server.broker else []),
        "--loop",
        args.loop,
        "--max-seconds",
        str(args.warmup + args.duration + CASE_SLACK),
        *_cpu_args(cpu),
    ]
    # run() kills the load generator if we are interrupted or it overruns
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=server.env,
        timeout=args.warmup + args.duration + CASE_SLACK,
        start_new_session=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator exited with code {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def measure(
    server: RunningServer,
    kind: str,
    concurrency: int,
    args: argparse.Namespace,
    placement: Placement,
    label: str,
) -> dict[str, Any] | str:
    """One case: the quietest of up to 1 + `--retries` tries (retrying only noisy ones), or why it failed."""
    best: dict[str, Any] | None = None
    for attempt in range(1 + args.retries):
        if args.settle > 0:
            busy = settle(args.settle)
            if busy >= NOISY:
                log(f"{label}: the machine is busy ({busy:.2f} CPUs of other work), measuring anyway")
        try:
            result = run_case(server, kind, concurrency, args, placement.load_cpu)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            log(f"{label}: FAILED: {exc}")
            return str(exc)
        per = "call" if kind == "unary" else "msg"
        if kind == "unary":
            p50, p99 = result["p50_ms"], result["p99_ms"]
            shown = f"{result['rps']:,.0f} rps, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        else:
            shown = f"{result['msgs_per_s']:,.0f} msgs/s"
        server_us = result.get(f"server_cpu_us_per_{per}")
        broker_us = result.get(f"broker_cpu_us_per_{per}")
        if broker_us is not None:
            shown += f", nats-server {broker_us:.0f} us/{per}"
        log(
            f"{label}: {shown}, server {'-' if server_us is None else format(server_us, '.0f')} us/{per}"
            f" (other cpu {result['other_cpu']:.2f}{f', retry {attempt}' if attempt else ''})"
        )
        if best is None or result["other_cpu"] < best["other_cpu"]:
            best = result
        if best["other_cpu"] < NOISY:
            break
    assert best is not None
    return best


# -- the plan -------------------------------------------------------------------------------


def plan(stacks: list[str], args: argparse.Namespace) -> Iterator[tuple[int, str, str, int]]:
    """(round, kind, stack, concurrency) in run order: stacks interleaved, order rotated per round."""
    for round_ in range(args.rounds):
        shift = round_ % len(stacks)
        order = stacks[shift:] + stacks[:shift]
        if "unary" in args.kinds:
            for concurrency in args.concurrency:
                for stack in order:
                    yield round_, "unary", stack, concurrency
        if "stream" in args.kinds:
            for concurrency in args.stream_concurrency:
                for stack in order:
                    if STACKS[stack].streams:
                        yield round_, "stream", stack, concurrency


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, each in STACKS.items():
            reason = each.unavailable()
            status = "" if reason is None else f"  [unavailable: {reason}]"
            print(f"{name:<20} {each.description}{status}")
        return 0
    stacks, skipped = choose_stacks(args.stacks)
    if not stacks:
        raise SystemExit("no stack to run")
    placement = Placement.choose(not args.no_pin, args.broker_cpu)
    cases: dict[tuple[str, str, int], Case] = {}
    steps = list(plan(stacks, args))
    estimate = len(steps) * (args.duration + args.warmup + 1.0)
    log(f"{len(steps)} measurements, about {estimate / 60:.1f} min; {placement.describe()}")

    # SIGTERM unwinds like Ctrl-C, so the servers are stopped by the `with` below
    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    registry = tempfile.mkdtemp(prefix="microweave-bench-registry-")
    loops: set[str] = set()
    not_started: dict[str, str] = {}
    try:
        with Servers(registry, placement, args.loop, max_seconds=estimate * 2 + 600) as servers:
            for stack in stacks:
                try:
                    loops.add(servers.start(stack).loop)
                except RuntimeError as exc:  # its cases fail; the other stacks still run
                    log(f"{stack}: FAILED to start: {exc}")
                    not_started[stack] = f"server did not start: {exc}"
            for i, (round_, kind, stack, concurrency) in enumerate(steps, 1):
                case = cases.setdefault((kind, stack, concurrency), Case(kind, stack, concurrency))
                if stack in not_started:
                    case.failures.append(not_started[stack])
                    continue
                label = f"[{i}/{len(steps)}] round {round_ + 1} {kind} {stack} c={concurrency}"
                result = measure(servers.running[stack], kind, concurrency, args, placement, label)
                if isinstance(result, str):
                    case.failures.append(result)
                else:
                    case.rounds[round_] = result
                    loops.add(result.get("loop", "?"))
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    finally:
        shutil.rmtree(registry, ignore_errors=True)

    ordered = [cases[(k, s, c)] for (_, k, s, c) in steps if (k, s, c) in cases]
    seen: set[tuple[str, str, int]] = set()
    if args.json:
        for name, reason in skipped:
            sys.stdout.write(json.dumps({"stack": name, "skipped": reason}) + "\n")
        for case in ordered:
            key = (case.kind, case.stack, case.concurrency)
            if key not in seen:
                seen.add(key)
                sys.stdout.write(json.dumps(case.summary()) + "\n")
    else:
        env_line = f"{versions()}; event loop: {', '.join(sorted(loops))}; {placement.describe()}"
        print(render(cases, stacks, args, env_line, skipped))
    return 1 if any(case.failures for case in cases.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
