"""Unary echo and server streaming through microweave's gRPC path against raw grpc.aio (and raw TCP).

    python bench/rpc.py                 # 3 rounds x 5 s per case, after 1 s of warm-up
    python bench/rpc.py --quick         # 1 round x 2 s
    python bench/rpc.py --json          # one JSON object per measurement on stdout
    python bench/rpc.py --stacks microweave-grpc,grpc-aio --concurrency 64 --kinds unary

Each stack's server runs in its own process pinned to the first CPU, each measurement's load
generator in another pinned to the second (when there are two), both on uvloop when installed.
Load is closed loop: `concurrency` workers each wait for a reply before sending the next call.
Rounds interleave the stacks (rotating their order), and each figure is the median over rounds,
so ratios compare stacks measured under the same conditions on a noisy machine.

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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "rpc_worker.py"
sys.path.insert(0, str(HERE))

from rpc_stacks import STACKS  # noqa: E402
from rpc_worker import machine_busy_seconds  # noqa: E402

DEFAULT_STACKS = ("microweave-grpc", "microweave-tcp", "grpc-aio", "raw-tcp")
#: ratios printed (numerator, denominator), when both stacks were measured
RATIOS = (("microweave-grpc", "grpc-aio"), ("microweave-tcp", "grpc-aio"), ("microweave-tcp", "raw-tcp"))
#: the framework overhead target: numerator >= factor x denominator at this concurrency
TARGET = ("microweave-grpc", "grpc-aio", 64, 0.9)
READY_TIMEOUT = 30.0
NOISY = 0.25  # CPUs' worth of other processes' work that makes a measurement noisy
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


def choose_stacks(names: list[str] | None) -> list[str]:
    """The stacks to run: the ones asked for (each must be available), else every available one."""
    chosen = []
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
            log(f"skipping {name}: {reason}")
    return chosen


# -- processes ------------------------------------------------------------------------------


@dataclass
class Placement:
    server_cpu: int | None
    load_cpu: int | None

    @classmethod
    def choose(cls, pin: bool) -> Placement:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if pin and len(cpus) >= 2:
            return cls(cpus[0], cpus[1])
        return cls(None, None)

    def describe(self) -> str:
        if self.server_cpu is None:
            return "not pinned (fewer than 2 CPUs, or --no-pin)"
        return f"server pinned to CPU {self.server_cpu}, load generator to CPU {self.load_cpu}"


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
        # Own session: Ctrl-C reaches only us, and we stop the servers in order.
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True
        )
        try:
            ready = json.loads(_read_line(process, READY_TIMEOUT))
            if ready.get("event") != "ready":
                raise RuntimeError(f"unexpected first line {ready!r}")
        except BaseException as exc:
            self._stop(process)
            if isinstance(exc, Exception):
                raise RuntimeError(f"{stack} server: {exc}") from None
            raise
        server = RunningServer(stack, process, ready["address"], ready.get("loop", "?"), env)
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
        log(
            f"{label}: {shown}, server {_fmt(server_us, '.0f')} us/{per}"
            f" (other cpu {result['other_cpu']:.2f}{f', retry {attempt}' if attempt else ''})"
        )
        if best is None or result["other_cpu"] < best["other_cpu"]:
            best = result
        if best["other_cpu"] < NOISY:
            break
    assert best is not None
    return best


# -- the plan and the results ---------------------------------------------------------------


@dataclass
class Case:
    kind: str
    stack: str
    concurrency: int
    #: round number -> the load generator's result
    rounds: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def per(self) -> str:
        return "call" if self.kind == "unary" else "msg"

    @property
    def throughput_key(self) -> str:
        return "rps" if self.kind == "unary" else "msgs_per_s"

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.rounds.values() if r.get(key) is not None]
        return statistics.median(values) if values else None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "stack": self.stack, "concurrency": self.concurrency}
        keys = ["rps", "p50_ms", "p99_ms"] if self.kind == "unary" else ["msgs_per_s"]
        keys += [f"server_cpu_us_per_{self.per}", f"client_cpu_us_per_{self.per}", "other_cpu"]
        for key in keys:
            value = self.median(key)
            digits = 4 if key.endswith("_ms") else 2 if key == "other_cpu" else 1
            out[key] = None if value is None else round(value, digits)
        out["rounds"] = len(self.rounds)
        out["errors"] = sum(r.get("errors", 0) for r in self.rounds.values())
        if self.failures:
            out["failed"] = self.failures
        return out


Cases = dict[tuple[str, str, int], Case]


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


def paired_ratios(cases: Cases, kind: str, a: str, b: str, c: int) -> list[float]:
    """a's throughput over b's, one ratio per round that measured both (back to back)."""
    num, den = cases.get((kind, a, c)), cases.get((kind, b, c))
    if num is None or den is None:
        return []
    key = num.throughput_key
    return [
        num.rounds[r][key] / den.rounds[r][key]
        for r in sorted(num.rounds.keys() & den.rounds.keys())
        if den.rounds[r][key]
    ]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fmt_ratio(ratios: list[float]) -> str:
    if not ratios:
        return "-"
    text = f"{statistics.median(ratios):.2f}x"
    if len(ratios) > 1:
        text += f" [{min(ratios):.2f}-{max(ratios):.2f}]"
    return text


def _table(cases: Cases, stacks: list[str], kind: str, concurrencies: list[int]) -> list[str]:
    width = max(len(s) for s in stacks) + 2
    per = "call" if kind == "unary" else "msg"
    if kind == "unary":
        columns = [
            ("rps", "rps", ",.0f", 10),
            ("p50_ms", "p50 ms", ".3f", 10),
            ("p99_ms", "p99 ms", ".3f", 10),
        ]
        label = "c"
    else:
        columns = [("msgs_per_s", "msgs/s", ",.0f", 10)]
        label = "streams"
    columns += [
        (f"server_cpu_us_per_{per}", f"srv us/{per}", ",.1f", 13),
        (f"client_cpu_us_per_{per}", f"cli us/{per}", ",.1f", 13),
        ("other_cpu", "other cpu", ".2f", 11),
    ]
    head = f"{label:>7}  {'stack':<{width}}" + "".join(f"{title:>{w}}" for _, title, _, w in columns)
    lines = [head, "-" * len(head)]
    for concurrency in concurrencies:
        for stack in stacks:
            case = cases.get((kind, stack, concurrency))
            if case is None:
                continue
            row = f"{concurrency:>7}  {stack:<{width}}"
            if not case.rounds:
                lines.append(row + f"failed: {case.failures[0]}")
                continue
            row += "".join(f"{_fmt(case.median(key), spec):>{w}}" for key, _, spec, w in columns)
            if case.failures or any(r.get("errors") for r in case.rounds.values()):
                row += "  (some rounds failed or had errors)"
            lines.append(row)
    lines.append("")
    for a, b in RATIOS:
        shown = [(c, paired_ratios(cases, kind, a, b, c)) for c in concurrencies]
        if any(r for _, r in shown):
            unit = "rps" if kind == "unary" else "msgs/s"
            text = "  ".join(f"{label}={c}: {_fmt_ratio(r)}" for c, r in shown)
            lines.append(f"ratio {a} / {b} ({unit}): {text}")
    return lines


def render(cases: Cases, stacks: list[str], args: argparse.Namespace, env: str) -> str:
    lines = [
        f"microweave RPC bench: {args.rounds} round(s) x {args.duration:g} s per case "
        f"(+{args.warmup:g} s warm-up), closed loop, 64-byte bodies; medians over rounds",
        env,
        "",
    ]
    if "unary" in args.kinds:
        lines += ["unary echo", *_table(cases, stacks, "unary", args.concurrency)]
        a, b, c, factor = TARGET
        ratios = paired_ratios(cases, "unary", a, b, c)
        if ratios:
            ratio = statistics.median(ratios)
            verdict = "PASS" if ratio >= factor else "FAIL"
            lines.append(f"target: {a} >= {factor:.2f}x {b} at c={c}: {verdict} ({_fmt_ratio(ratios)})")
        elif a in stacks and b in stacks and c not in args.concurrency:
            lines.append(
                f"target: {a} >= {factor:.2f}x {b} at c={c}: not measured (add {c} to --concurrency)"
            )
        lines.append("")
    if "stream" in args.kinds:
        lines += [
            "server streaming, 64-byte messages",
            *_table(cases, stacks, "stream", args.stream_concurrency),
        ]
        lines.append("")
    lines += [
        "ratios: median over rounds of the ratio within each round [min-max]",
        "srv/cli us: CPU time of the whole server / load-generator process per call or message",
        "other cpu: CPUs' worth of work other processes did meanwhile (noise; 0 on a quiet machine)",
    ]
    noisy = max(
        (r.get("other_cpu") or 0.0 for case in cases.values() for r in case.rounds.values()), default=0
    )
    if noisy > NOISY:
        lines.append(
            f"warning: other processes used up to {noisy:.2f} CPUs during some measurements; "
            "compare ratios, and rerun on a quieter machine for absolute figures"
        )
    return "\n".join(lines)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {sys.version.split()[0]}"]
    for name in ("microweave", "grpcio", "uvloop", "msgspec"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, stack in STACKS.items():
            reason = stack.unavailable()
            status = "" if reason is None else f"  [unavailable: {reason}]"
            print(f"{name:<16} {stack.description}{status}")
        return 0
    stacks = choose_stacks(args.stacks)
    if not stacks:
        raise SystemExit("no stack to run")
    placement = Placement.choose(not args.no_pin)
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
    try:
        with Servers(registry, placement, args.loop, max_seconds=estimate * 2 + 600) as servers:
            for stack in stacks:
                loops.add(servers.start(stack).loop)
            for i, (round_, kind, stack, concurrency) in enumerate(steps, 1):
                case = cases.setdefault((kind, stack, concurrency), Case(kind, stack, concurrency))
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
        for case in ordered:
            key = (case.kind, case.stack, case.concurrency)
            if key not in seen:
                seen.add(key)
                sys.stdout.write(json.dumps(case.summary()) + "\n")
    else:
        env_line = f"{_versions()}; event loop: {', '.join(sorted(loops))}; {placement.describe()}"
        print(render(cases, stacks, args, env_line))
    return 1 if any(case.failures for case in cases.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
