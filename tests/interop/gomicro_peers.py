"""go-micro v5 peers for the interop tests: the Go server and client built by
scripts/peers/gomicro, the registry engines they share with microweave, and raw reads of what
each side wrote there.

Deliberately free of microweave imports: what is checked here is read the way go-micro reads it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import urllib.request
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import REPO, LoggedProcess, wait_until

GO_SOURCES = REPO / "tests" / "interop" / "gomicro"
PROTO = GO_SOURCES / "proto" / "greeter.proto"
SERVICE_SCRIPT = REPO / "tests" / "interop" / "gomicro_service.py"


def built_peers() -> Path:
    """The directory holding the built `server` and `client`. Not built here: a cold build
    (~2 min) would eat a test's timeout; scripts/test builds them first, as for Consul."""
    done = subprocess.run(
        [str(REPO / "scripts" / "peers" / "gomicro"), "--path"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise pytest.UsageError(
            "the go-micro peers these tests run are not built for the current sources: "
            f"run scripts/peers/gomicro (./scripts/test does it for you)\n{done.stderr[-2000:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def generate_pb2(out: Path) -> ModuleType:
    """greeter_pb2 (and greeter_pb2_grpc beside it) from the .proto go-micro's peers are built
    from, generated into `out`."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO.parent}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO),
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("greeter_pb2")
    finally:
        sys.path.remove(str(out))


def unique(name: str) -> str:
    """Service names are per test: the engines are shared and go-micro's etcd prefix is fixed."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def unpack(tag_value: str) -> Any:
    """go-micro's Consul tag encoding: hex(zlib(json)) (`e-`, `t-` tags)."""
    return json.loads(unpack_raw(tag_value))


def unpack_raw(tag_value: str) -> str:
    """hex(zlib(text)): the `v-` tag holds the version itself, not JSON."""
    return zlib.decompress(bytes.fromhex(tag_value)).decode()


# -- the engines, as both sides see them ---------------------------------------------------------


@dataclass
class Engine:
    """A registry engine shared by go-micro and microweave: how each side is pointed at it, and
    a raw read of the records on it."""

    kind: str  # etcd | consul | nats
    address: str  # host:port
    server: Any  # the engine fixture's own object (EtcdServer, ...)

    @property
    def stores(self) -> bool:
        """Whether records are stored (NATS keeps none: nodes answer queries themselves)."""
        return self.kind != "nats"

    @property
    def url(self) -> str:
        return f"{self.kind}://{self.address}"

    @property
    def env(self) -> dict[str, str]:
        """go-micro's variables, read by microweave and by the Go peers alike."""
        return {"MICRO_REGISTRY": self.kind, "MICRO_REGISTRY_ADDRESS": self.address}

    def raw(self, service: str) -> list[dict[str, Any]]:
        """What is stored for `service`, undecoded: etcd {key, value(JSON)} per node, or
        Consul's /v1/health/service entries."""
        if not self.stores:
            return []
        if self.kind == "etcd":
            out = self.server.ctl("get", "--prefix", f"/micro/registry/{service}/", "-w", "json")
            kvs = json.loads(out).get("kvs") or []
            return [
                {"key": _b64(kv["key"]), "value": json.loads(_b64(kv["value"])), "lease": kv.get("lease", 0)}
                for kv in kvs
            ]
        with urllib.request.urlopen(f"http://{self.address}/v1/health/service/{service}", timeout=5) as reply:
            entries: list[dict[str, Any]] = json.loads(reply.read())
            return entries


def _b64(text: str) -> str:
    import base64

    return base64.b64decode(text).decode()


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Peers:
    """Go peers and microweave service processes on one engine; all stopped at teardown."""

    bin: Path
    engine: Engine
    logs: Path
    pb2_dir: Path
    started: list[LoggedProcess] = field(default_factory=list)

    def _start(self, argv: Sequence[str], name: str) -> LoggedProcess:
        log = self.logs / f"{name}-{len(self.started)}.log"
        process = LoggedProcess(
            argv, env={**os.environ, **self.engine.env, "PYTHONUNBUFFERED": "1"}, log_path=log
        )
        self.started.append(process)
        return process

    def go_server(self, name: str, *, ttl: str = "6s") -> tuple[LoggedProcess, dict[str, str]]:
        """The go-micro server registered as `name`; its {"id", "address"} line."""
        process = self._start([str(self.bin / "server"), "-name", name, "-ttl", ttl], name)

        def started() -> dict[str, str] | None:
            if not process.alive():
                raise AssertionError(f"go-micro server exited:\n{process.output()}")
            for line in process.output().splitlines():
                if line.startswith("{"):
                    node: dict[str, str] = json.loads(line)
                    return node
            return None

        return process, wait_until(started, timeout=30, what="the go-micro server to register")

    def microweave(self, name: str) -> LoggedProcess:
        """gomicro_service.py registered as `name`, waited for in the engine's raw records."""
        process = self._start(
            [sys.executable, str(SERVICE_SCRIPT), "--proto-dir", str(self.pb2_dir), "--name", name], name
        )

        def registered() -> bool:
            if not process.alive():
                raise AssertionError(f"microweave service exited:\n{process.output()}")
            if self.engine.stores:
                return bool(self.engine.raw(name))
            code, out = self.go_client("-service", name, "-lookup")
            return code == 0 and bool(out["services"])

        wait_until(registered, timeout=30, what=f"{name} to register")
        return process

    def go_client(self, *args: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
        """Run the go-micro client; its exit code and its one JSON line."""
        done = subprocess.run(
            [str(self.bin / "client"), *args],
            env={**os.environ, **self.engine.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        assert lines, (
            f"go-micro client printed no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
        result: dict[str, Any] = json.loads(lines[-1])
        return done.returncode, result

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


def peers_on(engine: Engine, bin_dir: Path, pb2_dir: Path, logs: Path) -> Iterator[Peers]:
    peers = Peers(bin_dir, engine, logs, pb2_dir)
    try:
        yield peers
    finally:
        peers.stop_all()
