"""Real engines (etcd, Consul, NATS, ...) started by the tests, one module per engine.

Each engine module in this package is loaded as a pytest plugin by tests/conftest.py, so its
fixtures are available everywhere. An engine runs as a child process on free 127.0.0.1 ports
with a temporary data directory, and is stopped by PID. A module that can back a registry adds
a factory to `REGISTRY_BACKENDS` with `@registry_backend("scheme")`; the registry conformance
suite runs against every factory there. One that can hold configuration adds a factory to
`CONFIG_BACKENDS` with `@config_backend("scheme")`, for the config sources' conformance suite.
One that can carry events adds a factory to `BROKER_BACKENDS` with `@broker_backend("scheme")`.

A binary that is missing is an error that says how to get it, never a skip: a skipped engine
test is a feature nobody checked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, LoggedProcess, free_port

__all__ = [
    "BROKER_BACKENDS",
    "CONFIG_BACKENDS",
    "PEERS",
    "REGISTRY_BACKENDS",
    "Engine",
    "broker_backend",
    "config_backend",
    "find_binary",
    "free_port",
    "registry_backend",
    "run",
]

#: where scripts/peers/* cache the Go-built peers (keep in step with scripts/peers/lib.sh)
PEERS = Path(
    os.environ.get("MICROWEAVE_PEERS")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "microweave" / "peers"
)

RegistryFactory = Callable[..., contextlib.AbstractAsyncContextManager[Any]]
#: scheme -> async context manager factory(request, **options) yielding a fresh Registry
REGISTRY_BACKENDS: dict[str, RegistryFactory] = {}


def registry_backend(scheme: str) -> Callable[[RegistryFactory], RegistryFactory]:
    def add(factory: RegistryFactory) -> RegistryFactory:
        REGISTRY_BACKENDS[scheme] = factory
        return factory

    return add


#: scheme -> async context manager factory(request) yielding a fresh, empty, writable config
#: Source of its own (e.g. a new prefix per test)
CONFIG_BACKENDS: dict[str, RegistryFactory] = {}


def config_backend(scheme: str) -> Callable[[RegistryFactory], RegistryFactory]:
    def add(factory: RegistryFactory) -> RegistryFactory:
        CONFIG_BACKENDS[scheme] = factory
        return factory

    return add


#: scheme -> async context manager factory(request) yielding the URL (a str) of a broker for
#: this test alone: a fresh server, or a fresh namespace on a shared one (then the test keeps
#: to names of its own)
BROKER_BACKENDS: dict[str, RegistryFactory] = {}


def broker_backend(scheme: str) -> Callable[[RegistryFactory], RegistryFactory]:
    def add(factory: RegistryFactory) -> RegistryFactory:
        BROKER_BACKENDS[scheme] = factory
        return factory

    return add


def find_binary(name: str, *, debian: str | None = None, peer: tuple[str, str] | None = None) -> str:
    """The path of an engine's binary: PATH (and /usr/sbin), else the peer cache.

    `debian` names the package that provides it; `peer` is (script under scripts/peers, cached
    path relative to PEERS) for binaries built from Go modules.
    """
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if peer is not None:
        cached = PEERS / peer[1]
        if cached.is_file():
            return str(cached)
        hint = f"run scripts/peers/{peer[0]} (./scripts/test does it for you)"
    else:
        hint = f"apt-get install {debian or name} (./scripts/test does it for you when root)"
    raise pytest.UsageError(f"{name} is needed by these tests and was not found: {hint}")


class Engine:
    """One engine process: started with fixed ports so it can be stopped and started again
    on the same address and data (an outage, as callers see it), or SIGKILLed."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready: Callable[[], bool],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._ready = ready
        self.log_dir = log_dir
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout = ready_timeout
        self.process: LoggedProcess | None = None
        self._starts = 0

    def start(self) -> Engine:
        self._starts += 1
        log = self.log_dir / f"{self.name}-{self._starts}.log"
        self.process = LoggedProcess(self.argv, env=self.env, log_path=log)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if not self.process.alive():
                raise RuntimeError(f"{self.name} exited at start:\n{self.process.output()[-3000:]}")
            with contextlib.suppress(OSError, ValueError):
                if self._ready():
                    return self
            if time.monotonic() > deadline:
                output = self.process.output()[-3000:]
                self.process.stop()
                raise RuntimeError(f"{self.name} not ready after {self.ready_timeout} s:\n{output}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it lingers) and wait: the engine is down until `start()`."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.proc.kill()
            self.process.proc.wait()
            self.process.stop()
            self.process = None

    def output(self) -> str:
        return self.process.output() if self.process is not None else ""

    def __repr__(self) -> str:
        return f"<Engine {self.name} {'up' if self.process else 'down'}>"


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A short command (a CLI of an engine), from the repository root, output captured."""
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, check=False, **kwargs)
