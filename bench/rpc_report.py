"""The tables, ratios and targets `rpc.py` prints from its measurements.

Every ratio is paired: a's throughput over b's within one round (measured back to back), then
the median over rounds, so a noisy machine moves both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NOISY", "RATIOS", "TARGETS", "Case", "Cases", "paired_ratios", "render", "versions"]

NOISY = 0.25  # CPUs' worth of other processes' work that makes a measurement noisy
#: ratios printed (numerator, denominator), when both stacks were measured
RATIOS = (
    ("microweave-grpc", "grpc-aio"),
    ("microweave-tcp", "grpc-aio"),
    ("microweave-tcp", "raw-tcp"),
    ("microweave-tcp-mw3", "microweave-tcp"),
    # metrics on (the default) over metrics off; tracing to nowhere over OTel absent
    ("microweave-tcp", "microweave-tcp-nometrics"),
    ("microweave-tcp-otel", "microweave-tcp"),
    ("microweave-tcp", "faststream-nats"),
    ("microweave-tcp", "nats-py"),
)
#: the goals (issue 6): numerator >= factor x denominator at this concurrency, unary echo
TARGETS = (
    ("microweave-grpc", "grpc-aio", 64, 0.90),
    ("microweave-tcp", "grpc-aio", 64, 6.0),
    ("microweave-tcp", "raw-tcp", 64, 0.35),
    # three no-op middlewares on each side cost at most 10%
    ("microweave-tcp-mw3", "microweave-tcp", 64, 0.90),
    # Prometheus metrics on both sides cost at most 10% (issue 11)
    ("microweave-tcp", "microweave-tcp-nometrics", 64, 0.90),
    ("microweave-tcp", "faststream-nats", 64, 5.0),
    # ahead of raw nats-py
    ("microweave-tcp", "nats-py", 64, 1.0),
)
#: stacks whose rows carry a broker's CPU time
BROKERED = ("faststream-nats", "nats-py")


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
        if self.median(f"broker_cpu_us_per_{self.per}") is not None:
            keys.append(f"broker_cpu_us_per_{self.per}")
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


def capacity(result: dict[str, Any], per: str = "call") -> float | None:
    """Calls/s a stack's CPU time per call allows on two otherwise idle CPUs: bounded by its busier
    pinned process (server or load generator) and by its total CPU time (broker included) over
    two CPUs. Steadier than throughput when other processes share the machine."""
    server = result.get(f"server_cpu_us_per_{per}")
    client = result.get(f"client_cpu_us_per_{per}")
    if not server or not client:
        return None
    broker = result.get(f"broker_cpu_us_per_{per}") or 0.0
    return 1e6 / max(server, client, (server + client + broker) / 2)


def capacity_ratios(cases: Cases, kind: str, a: str, b: str, c: int) -> list[float]:
    """a's CPU capacity over b's, one ratio per round that measured both."""
    num, den = cases.get((kind, a, c)), cases.get((kind, b, c))
    if num is None or den is None:
        return []
    ratios = []
    for r in sorted(num.rounds.keys() & den.rounds.keys()):
        x, y = capacity(num.rounds[r], num.per), capacity(den.rounds[r], den.per)
        if x is not None and y:
            ratios.append(x / y)
    return ratios


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
    ]
    broker = f"broker_cpu_us_per_{per}"
    rows = (r for (k, _, _), case in cases.items() if k == kind for r in case.rounds.values())
    if any(r.get(broker) is not None for r in rows):
        columns.append((broker, f"brk us/{per}", ",.1f", 13))
    columns.append(("other_cpu", "other cpu", ".2f", 11))
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


def _targets(cases: Cases, stacks: list[str], concurrencies: list[int]) -> list[str]:
    lines = []
    for a, b, c, factor in TARGETS:
        ratios = paired_ratios(cases, "unary", a, b, c)
        goal = f"target: {a} >= {factor:.2f}x {b} at c={c}"
        if ratios:
            verdict = "PASS" if statistics.median(ratios) >= factor else "FAIL"
            by_cpu = capacity_ratios(cases, "unary", a, b, c)
            lines.append(f"{goal}: {verdict} ({_fmt_ratio(ratios)}; from CPU per call {_fmt_ratio(by_cpu)})")
        elif a in stacks and b in stacks and c not in concurrencies:
            lines.append(f"{goal}: not measured (add {c} to --concurrency)")
    return lines


def render(
    cases: Cases,
    stacks: list[str],
    args: argparse.Namespace,
    env: str,
    skipped: Sequence[tuple[str, str]] = (),
) -> str:
    lines = [
        f"microweave RPC bench: {args.rounds} round(s) x {args.duration:g} s per case "
        f"(+{args.warmup:g} s warm-up), closed loop, 64-byte bodies; medians over rounds",
        env,
        "",
    ]
    if "unary" in args.kinds:
        lines += ["unary echo", *_table(cases, stacks, "unary", args.concurrency)]
        lines += _targets(cases, stacks, args.concurrency)
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
    lines += [
        "from CPU per call: the same ratio, of 1e6 / max(srv, cli, (srv + cli + brk) / 2) us per call:",
        "  the rate each stack's CPU cost allows on two idle CPUs (steadier than rps on a busy machine)",
    ]
    if any(stack in stacks for stack in BROKERED):
        lines.append("brk us: CPU time of the stack's nats-server per call (not counted in other cpu)")
    lines += [f"skipped: {name}: {reason}" for name, reason in skipped]
    noisy = max(
        (r.get("other_cpu") or 0.0 for case in cases.values() for r in case.rounds.values()), default=0
    )
    if noisy > NOISY:
        lines.append(
            f"warning: other processes used up to {noisy:.2f} CPUs during some measurements; "
            "compare ratios, and rerun on a quieter machine for absolute figures"
        )
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {sys.version.split()[0]}"]
    for name in ("microweave", "grpcio", "uvloop", "msgspec", "faststream", "nats-py"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)
