"""The go-micro v5 pub/sub peer (`broker`, built by scripts/peers/gomicro from
tests/interop/gomicro/broker) as the tests drive it: publish N events, or run a subscriber and
read what its handler got.

Deliberately free of microweave imports: what is checked with it is what go-micro itself does.

Every subscriber publishes readiness probes on its topic (header `Micro-Peer-Probe`, body `{}`)
until one comes back to it, so start go-micro subscribers before any raw consumer of the same
topic, or let that consumer drop messages carrying that header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gomicro_peers import built_peers
from helpers import REPO, async_wait_until

__all__ = ["PROBE_HEADER", "BrokerTarget", "GoSubscriber", "broker_binary", "go_publish", "go_subscriber"]

#: the header of the peers' readiness probes (tests/interop/gomicro/broker/main.go)
PROBE_HEADER = "Micro-Peer-Probe"


def broker_binary() -> Path:
    """The built `broker` peer (a usage error naming scripts/peers/gomicro when it is not)."""
    return built_peers() / "broker"


@dataclass(frozen=True)
class BrokerTarget:
    """Which go-micro broker the peer uses, and where: nats://host:port or amqp://u:p@host:port/."""

    kind: str  # nats | rabbitmq
    url: str

    def args(self) -> list[str]:
        return ["-broker", self.kind, "-address", self.url]


async def go_publish(
    target: BrokerTarget,
    topic: str,
    *,
    count: int = 1,
    headers: Mapping[str, str] | None = None,
    text: str | None = None,
    binary: Path | None = None,
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """Publish `count` events {"n": i, "from": "go-micro", "text": ...} the way go-micro users
    do (micro.NewEvent(topic, client).Publish), `headers` in the context metadata; the peer's
    {"published": i, "topic": T} lines. Fails unless the peer exits 0."""
    argv = [str(binary or broker_binary()), *target.args(), "-mode", "publish", "-topic", topic]
    argv += ["-count", str(count)]
    for key, value in (headers or {}).items():
        argv += ["-header", f"{key}={value}"]
    if text is not None:
        argv += ["-text", text]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the go-micro publisher did not finish within {timeout} s: {argv}") from None
    assert process.returncode == 0, (
        f"the go-micro publisher exited {process.returncode}:\n{out.decode()}\n{err.decode()[-3000:]}"
    )
    return _json_lines(out.decode())


class GoSubscriber:
    """A running `broker -mode subscribe`: its stdout (one JSON line per event its handler got)
    and stderr (go-micro's log) in files under `logs`."""

    def __init__(self, process: asyncio.subprocess.Process, stdout: Path, stderr: Path) -> None:
        self.process = process
        self.stdout = stdout
        self.stderr = stderr

    def lines(self) -> list[dict[str, Any]]:
        return _json_lines(self.stdout.read_text(errors="replace"))

    def events(self) -> list[dict[str, Any]]:
        """What the handler got so far: {"topic", "headers", "body"[, "raw"]} each."""
        return [line for line in self.lines() if "ready" not in line]

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]

    def _check_alive(self) -> None:
        if self.process.returncode is not None:
            raise AssertionError(f"the go-micro subscriber exited {self.process.returncode}:\n{self.log()}")

    async def ready(self, timeout: float = 60) -> None:
        async def live() -> bool:
            self._check_alive()
            return any(line.get("ready") is True for line in self.lines())

        await async_wait_until(live, timeout=timeout, what="the go-micro subscriber to be live")

    async def wait_for(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        """All events so far, once one with body.n == `n` is among them."""

        async def arrived() -> list[dict[str, Any]]:
            self._check_alive()
            events = self.events()
            return events if any((e.get("body") or {}).get("n") == n for e in events) else []

        found: list[dict[str, Any]] = await async_wait_until(
            arrived, timeout=timeout, what=f"event n={n} at the go-micro subscriber"
        )
        return found

    async def stop(self, timeout: float = 20) -> None:
        """SIGTERM (go-micro unsubscribes and deregisters), SIGKILL if it lingers."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@contextlib.asynccontextmanager
async def go_subscriber(
    target: BrokerTarget,
    topic: str,
    logs: Path,
    *,
    queue: str | None = None,
    handler: str = "typed",
    binary: Path | None = None,
) -> AsyncIterator[GoSubscriber]:
    """A go-micro service subscribed to `topic` (micro.RegisterSubscriber with
    server.SubscriberQueue(queue) when given; `handler="broker"`: the broker's own Subscribe),
    live when entered, stopped by PID on exit."""
    argv = [str(binary or broker_binary()), *target.args(), "-mode", "subscribe", "-topic", topic]
    argv += ["-handler", handler]
    if queue is not None:
        argv += ["-queue", queue]
    name = f"gomicro-sub-{topic}-{handler}-{uuid.uuid4().hex[:6]}"
    stdout, stderr = logs / f"{name}.out", logs / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO
        )
    subscriber = GoSubscriber(process, stdout, stderr)
    try:
        await subscriber.ready()
        yield subscriber
    finally:
        await subscriber.stop()


def _json_lines(text: str) -> list[dict[str, Any]]:
    # only whole lines: a subscriber may be writing the last one right now
    return [
        json.loads(line)
        for line in text.splitlines(keepends=True)
        if line.endswith("\n") and line.startswith("{")
    ]
