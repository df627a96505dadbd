"""The table, ratios and targets `pubsub.py` prints from its runs.

Every ratio is paired: a's consumed msgs/s over b's within one round (run back to back, same
publish window), then the median over rounds, so a noisy machine moves both sides alike.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rpc_report import NOISY, _fmt, _fmt_ratio

__all__ = ["NOISY", "RATIOS", "TARGETS", "Case", "Cases", "paired_ratios", "render", "versions"]

#: ratios printed (numerator, denominator) when both were measured
RATIOS = (
    ("microweave-nats", "raw-nats"),
    ("microweave-nats", "faststream-nats"),
    ("microweave-rabbitmq", "raw-aio-pika"),
    ("microweave-rabbitmq", "faststream-rabbit"),
    ("microweave-redis", "raw-redis"),
)
#: the goals (issue 10): numerator >= factor x denominator, consumed msgs/s
TARGETS = (
    ("microweave-nats", "raw-nats", 0.5),
    ("microweave-nats", "faststream-nats", 8.0),
    ("microweave-rabbitmq", "raw-aio-pika", 0.8),
)


@dataclass
class Case:
    stack: str
    window: int
    #: round number -> the run's result
    rounds: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.rounds.values() if r.get(key) is not None]
        return statistics.median(values) if values else None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stack": self.stack, "window": self.window}
        for key in COLUMNS_KEYS:
            value = self.median(key)
            digits = 3 if key.endswith("_ms") else 2 if key == "other_cpu" else 1
            out[key] = None if value is None else round(value, digits)
        for key in ("lost", "duplicates", "errors"):
            out[key] = sum(r.get(key, 0) for r in self.rounds.values())
        out["count"] = self.median("count")
        out["rounds"] = len(self.rounds)
        if self.failures:
            out["failed"] = self.failures
        return out


Cases = dict[tuple[str, int], Case]

#: (key, title, format, width)
COLUMNS = (
    ("msgs_per_s", "msgs/s", ",.0f", 10),
    ("publish_per_s", "pub/s", ",.0f", 10),
    ("p50_ms", "p50 ms", ",.2f", 10),
    ("p99_ms", "p99 ms", ",.2f", 10),
    ("pub_us_per_msg", "pub us/msg", ",.1f", 12),
    ("sub_us_per_msg", "sub us/msg", ",.1f", 12),
    ("broker_us_per_msg", "brk us/msg", ",.1f", 12),
    ("other_cpu", "other cpu", ".2f", 11),
)
COLUMNS_KEYS = tuple(key for key, *_ in COLUMNS)


def paired_ratios(cases: Cases, a: str, b: str, window: int) -> list[float]:
    num, den = cases.get((a, window)), cases.get((b, window))
    if num is None or den is None:
        return []
    return [
        num.rounds[r]["msgs_per_s"] / den.rounds[r]["msgs_per_s"]
        for r in sorted(num.rounds.keys() & den.rounds.keys())
        if den.rounds[r]["msgs_per_s"]
    ]


def cpu_capacity(result: dict[str, Any]) -> float | None:
    """Msgs/s the stack's CPU cost allows on two otherwise idle CPUs: bounded by its busier
    pinned process (publisher or subscriber) and by all its CPU time (broker included) over two."""
    pub, sub = result.get("pub_us_per_msg"), result.get("sub_us_per_msg")
    if not pub or not sub:
        return None
    broker = float(result.get("broker_us_per_msg") or 0.0)
    pub, sub = float(pub), float(sub)
    return 1e6 / max(pub, sub, (pub + sub + broker) / 2)


def capacity_ratios(cases: Cases, a: str, b: str, window: int) -> list[float]:
    num, den = cases.get((a, window)), cases.get((b, window))
    if num is None or den is None:
        return []
    ratios = []
    for r in sorted(num.rounds.keys() & den.rounds.keys()):
        x, y = cpu_capacity(num.rounds[r]), cpu_capacity(den.rounds[r])
        if x is not None and y:
            ratios.append(x / y)
    return ratios


def _table(cases: Cases, stacks: list[str], windows: list[int]) -> list[str]:
    width = max(len(s) for s in stacks) + 2
    head = f"{'window':>6}  {'stack':<{width}}" + "".join(f"{t:>{w}}" for _, t, _, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for window in windows:
        for stack in stacks:
            case = cases.get((stack, window))
            if case is None:
                continue
            row = f"{window:>6}  {stack:<{width}}"
            if not case.rounds:
                lines.append(row + f"failed: {case.failures[0] if case.failures else '?'}")
                continue
            row += "".join(f"{_fmt(case.median(key), spec):>{w}}" for key, _, spec, w in COLUMNS)
            notes = []
            lost = sum(r.get("lost", 0) for r in case.rounds.values())
            dups = sum(r.get("duplicates", 0) for r in case.rounds.values())
            errors = sum(r.get("errors", 0) for r in case.rounds.values())
            if lost:
                notes.append(f"{lost:,} lost")
            if dups:
                notes.append(f"{dups:,} duplicates")
            if errors:
                notes.append(f"{errors:,} publish errors")
            if case.failures:
                notes.append(f"{len(case.failures)} round(s) failed")
            if notes:
                row += "  (" + ", ".join(notes) + ")"
            lines.append(row)
    return lines


def _ratios(cases: Cases, windows: list[int]) -> list[str]:
    lines = []
    for a, b in RATIOS:
        shown = [(w, paired_ratios(cases, a, b, w)) for w in windows]
        if any(r for _, r in shown):
            text = "  ".join(f"window={w}: {_fmt_ratio(r)}" for w, r in shown)
            lines.append(f"ratio {a} / {b} (msgs/s): {text}")
    return lines


def _targets(cases: Cases, stacks: list[str], windows: list[int]) -> list[str]:
    lines = []
    for a, b, factor in TARGETS:
        for window in windows:
            ratios = paired_ratios(cases, a, b, window)
            goal = f"target: {a} >= {factor:g}x {b} (window {window})"
            if ratios:
                verdict = "PASS" if statistics.median(ratios) >= factor else "FAIL"
                by_cpu = _fmt_ratio(capacity_ratios(cases, a, b, window))
                lines.append(f"{goal}: {verdict} ({_fmt_ratio(ratios)}; from CPU per msg {by_cpu})")
            elif a not in stacks or b not in stacks:
                missing = a if a not in stacks else b
                lines.append(f"{goal}: not measured ({missing} did not run)")
                break
    return lines


def render(
    cases: Cases,
    stacks: list[str],
    args: argparse.Namespace,
    env: str,
    skipped: Sequence[tuple[str, str]] = (),
) -> str:
    lines = [
        f"microweave pub/sub bench: {args.rounds} round(s) x {args.count:,} messages of ~64 bytes per stack "
        f"and window; publisher and subscriber in separate processes; medians over rounds",
        env,
        "",
        *_table(cases, stacks, args.windows),
        "",
        *_ratios(cases, args.windows),
        *_targets(cases, stacks, args.windows),
        "",
        "msgs/s: distinct messages consumed / (last consume - first publish)",
        "pub/s: messages published / (publisher's last publish, flushed - its first publish)",
        "p50/p99: consume time - publish time (CLOCK_MONOTONIC stamped in the body), over every message",
        "window: publishes in flight in the publisher (1: each awaited before the next)",
        "pub/sub us: CPU time of the publisher / subscriber process per message; brk us: the engine's",
        "other cpu: CPUs' worth of work other processes did meanwhile (noise; 0 on a quiet machine)",
        "from CPU per msg: the ratio of 1e6 / max(pub, sub, (pub + sub + brk) / 2) us per msg",
        "ratios: median over rounds of the ratio within each round [min-max]",
    ]
    lines += [f"skipped: {name}: {reason}" for name, reason in skipped]
    noisy = max(
        (r.get("other_cpu") or 0.0 for case in cases.values() for r in case.rounds.values()), default=0
    )
    if noisy > NOISY:
        lines.append(
            f"warning: other processes used up to {noisy:.2f} CPUs during some runs; "
            "compare ratios, and rerun on a quieter machine for absolute figures"
        )
    return "\n".join(lines)


def _engine_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else None


def versions(engines: Sequence[str] = ()) -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {sys.version.split()[0]}"]
    for name in ("microweave", "uvloop", "msgspec", "nats-py", "aio-pika", "redis", "faststream", "pydantic"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    probes = {
        "nats": ["nats-server", "--version"],
        "redis": ["redis-server", "--version"],
        "rabbitmq": ["dpkg-query", "-W", "-f", "rabbitmq-server ${Version}", "rabbitmq-server"],
    }
    for kind in dict.fromkeys("nats" if e == "jetstream" else e for e in engines):
        found = _engine_version(probes[kind]) if kind in probes else None
        if found:
            parts.append(found)
    return ", ".join(parts)
