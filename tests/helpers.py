"""Helpers for tests that run services as real processes.

Deliberately free of microweave imports: the interop tests use them to find a service the way
any other program would, by reading the local registry's files.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

if TYPE_CHECKING:
    from microweave import Client

__all__ = [
    "REPO",
    "LoggedProcess",
    "ServiceProcess",
    "ServiceProcesses",
    "async_wait_until",
    "free_port",
    "local_nodes",
    "say_hello_until",
    "wait_until",
]

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
SERVICES = Path(__file__).resolve().parent / "integration" / "services"


def _port_range() -> range:
    """This test process's own ports: below the kernel's ephemeral range, one slice per xdist
    worker.

    A port the kernel picks for `bind(0)` or for an outgoing connection comes from the ephemeral
    range, so a server restarted on a port from here never finds it taken by some client
    socket meanwhile (an etcd restarted on 57191 once did), and two workers never share one.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        ephemeral_low = int(ranges.read().split()[0])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw-1")  # "gw0", "gw1", ...; -1 without xdist
    slot, size, base = int(worker.removeprefix("gw")) + 1, 1500, 10000
    start = base + slot * size
    if start + size > ephemeral_low:  # no room below it (a host that lowered it): none of our own
        return range(0)
    return range(start, start + size)


_PORTS = _port_range()
_first = random.randrange(len(_PORTS)) if _PORTS else 0
# handed out in turn from a random start, so one process never gives a port out twice soon
_next_ports = itertools.cycle([*_PORTS[_first:], *_PORTS[:_first]])


def free_port() -> int:
    """A 127.0.0.1 TCP port nobody listens on right now: from this process's own slice, else
    (none free, or no slice) one the kernel picks."""
    for _ in range(len(_PORTS)):
        port = next(_next_ports)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll until `condition()` is truthy and return it; fail after `timeout` seconds."""
    limit = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > limit:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float = 15.0,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """The async twin of `wait_until`, for conditions that must be awaited."""
    limit = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > limit:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def local_nodes(root: Path, service: str) -> list[dict[str, Any]]:
    """Live nodes of `service` in a local:// registry directory, read straight from its files.

    The layout is `<root>/<service>/<node-id>.json` holding `{"expires": <unix time>, "service":
    <go-micro Service JSON>}`; each node dict gets the record's `version` added under `_version`.
    """
    nodes: list[dict[str, Any]] = []
    directory = root / service
    try:
        files = sorted(directory.glob("*.json"))
    except FileNotFoundError:
        return nodes
    now = time.time()
    for path in files:
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # removed or being replaced between glob and read
        if record["expires"] <= now:
            continue
        for node in record["service"]["nodes"]:
            nodes.append({**node, "_version": record["service"]["version"]})
    return nodes


class LoggedProcess:
    """A child process started from the repository root, its output in a log file; stopped
    by PID (SIGTERM, then SIGKILL if it lingers)."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=REPO,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; the exit code."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class ServiceProcess(LoggedProcess):
    """One service script running as `python script.py ...`, its output in a log file."""

    def __init__(
        self,
        script: Path,
        args: Sequence[str],
        *,
        name: str,
        registry: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.script = script
        self.name = name
        self.registry = registry
        self.node: dict[str, Any] = {}
        full_env = {
            **os.environ,
            "MICRO_REGISTRY": "local",
            "MICRO_REGISTRY_ADDRESS": str(registry),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        super().__init__([sys.executable, str(script), *args], env=full_env, log_path=log_path)

    @property
    def node_id(self) -> str:
        return str(self.node["id"])

    @property
    def address(self) -> str:
        return str(self.node["address"])

    def wait_registered(self, known: set[str], timeout: float = 30.0) -> dict[str, Any]:
        """Wait for a node of this service whose id is not in `known`: the one this process
        registered (each test has a private registry, so nobody else adds nodes to it)."""

        def new_node() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(
                    f"{self.script.name} exited with {self.proc.returncode} before registering:\n"
                    + self.output()
                )
            fresh = [n for n in local_nodes(self.registry, self.name) if n["id"] not in known]
            assert len(fresh) <= 1, f"more than one new node of {self.name}: {fresh}"
            return fresh[0] if fresh else None

        self.node = wait_until(new_node, timeout=timeout, what=f"{self.name} to register")
        return self.node

    def registered(self) -> bool:
        return any(n["id"] == self.node_id for n in local_nodes(self.registry, self.name))


class ServiceProcesses:
    """Starts service scripts against one private registry and stops them all at teardown."""

    def __init__(self, registry: Path, logs: Path) -> None:
        self.registry = registry
        self.logs = logs
        self.started: list[ServiceProcess] = []

    def start(
        self,
        script: str | Path,
        *args: str,
        name: str,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> ServiceProcess:
        """Run `python script args...` and (by default) wait until it is in the registry.

        `script` is a path, or a file name under tests/integration/services/.
        """
        path = Path(script)
        if not path.is_absolute():
            path = path if (REPO / path).exists() else SERVICES / path
            path = path if path.is_absolute() else REPO / path
        known = {n["id"] for n in local_nodes(self.registry, name)}
        log_path = self.logs / f"{name}-{len(self.started)}.log"
        process = ServiceProcess(path, args, name=name, registry=self.registry, log_path=log_path, env=env)
        self.started.append(process)
        if wait:
            process.wait_registered(known)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()


class _HelloRequest(msgspec.Struct):
    name: str


class _Greeting(Protocol):
    message: str


G = TypeVar("G", bound=_Greeting)


async def say_hello_until(
    stop: asyncio.Event,
    client: Client,
    caller: int,
    failures: list[str],
    reply_type: type[G],
    on_reply: Callable[[G], None],
) -> None:
    """One caller of a load: Greeter.SayHello with a name of its own per call until `stop`;
    an error or a reply to another name goes into `failures`, every good reply to `on_reply`."""
    n = 0
    while not stop.is_set():
        name = f"{caller}-{n}"
        try:
            reply = await client.call(
                "greeter", "Greeter.SayHello", _HelloRequest(name=name), response=reply_type
            )
        except Exception as exc:
            failures.append(repr(exc))
        else:
            if reply.message != f"Hello {name}":
                failures.append(f"wrong reply {reply!r} to {name}")
            on_reply(reply)
        n += 1
