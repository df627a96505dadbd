"""The Consul agent: `consul agent -dev` on free loopback ports, built by scripts/peers/consul.

- `consul_server` (session): one agent for the conformance suite. Each conformance registry
  starts from an empty agent: every service on it is deregistered before and after the test
  (the suite's names, "greeter" and "billing", are fixed, and a -dev agent holds nothing else).
- `consul_agents` (function): a factory of agents of the test's own (`acl=True` for one in
  default-deny mode with a management token), stopped at teardown; each can be stopped and
  started again on the same ports, an outage as its clients see it. A -dev agent keeps no
  state across a restart: it comes back empty, as after losing its data.
- `consul_persistent` (function): a one-server agent with a data directory, which keeps its
  KV across a restart (the config source's outage test).
- the `consul` config backend: a config source on `consul_server` under a fresh prefix.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engines import Engine, config_backend, find_binary, free_port, registry_backend
from microweave.registry.consul import ConsulRegistry

__all__ = ["MANAGEMENT_TOKEN", "ConsulAgent"]

MANAGEMENT_TOKEN = "a1b2c3d4-0000-4000-8000-5eed5eed5eed"  # of agents started with acl=True


def consul_binary() -> str:
    return find_binary("consul", peer=("consul", "consul-1.14.11/consul"))


class ConsulAgent(Engine):
    """A -dev agent on its own ports (with `data_dir`: a server that keeps its data across a
    restart); `url` is the registry URL of it (no token)."""

    def __init__(self, log_dir: Path, *, acl: bool = False, data_dir: Path | None = None) -> None:
        self.http_port = free_port()
        self.acl = acl
        self.data_dir = data_dir
        # -dev forgets everything on a restart; a one-server cluster with a data directory
        # keeps its KV (raft_multiplier=1: elects itself again in about a second, not five)
        mode = (
            ["-dev"]
            if data_dir is None
            else [
                "-server",
                "-bootstrap-expect=1",
                "-data-dir",
                str(data_dir),
                "-hcl",
                "performance { raft_multiplier = 1 }",
            ]
        )
        argv = [
            consul_binary(),
            "agent",
            *mode,
            "-node",
            "t",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-log-level",
            "warn",
            "-http-port",
            str(self.http_port),
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
            "-grpc-tls-port",
            "-1",
            "-server-port",
            str(free_port()),
            "-serf-lan-port",
            str(free_port()),
            "-serf-wan-port",
            str(free_port()),
        ]
        if acl:
            config = log_dir / f"consul-acl-{self.http_port}.json"
            config.write_text(
                json.dumps(
                    {
                        "acl": {
                            "enabled": True,
                            "default_policy": "deny",
                            "tokens": {"initial_management": MANAGEMENT_TOKEN, "agent": MANAGEMENT_TOKEN},
                        }
                    }
                )
            )
            argv += ["-config-file", str(config)]
        super().__init__(f"consul-{self.http_port}", argv, ready=self._leader, log_dir=log_dir)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"consul://{self.address}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One call to the agent's HTTP API (with the management token on an ACL agent)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://{self.address}{path}", data=data, method=method)
        if self.acl:
            request.add_header("X-Consul-Token", MANAGEMENT_TOKEN)
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read()
        return json.loads(text) if text.strip() else None

    def _leader(self) -> bool:
        return bool(self.api("GET", "/v1/status/leader"))

    def checks(self, service: str) -> dict[str, str]:
        """Service ID -> the status of its TTL check, straight from the agent."""
        return {c["ServiceID"]: c["Status"] for c in self.api("GET", f"/v1/health/checks/{service}")}

    def kv_put(self, key: str, value: bytes) -> None:
        """Store a raw value in the KV store (as `consul kv put` does), checked."""
        request = urllib.request.Request(f"http://{self.address}/v1/kv/{key}", data=value, method="PUT")
        if self.acl:
            request.add_header("X-Consul-Token", MANAGEMENT_TOKEN)
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.read().strip() == b"true", f"PUT {key} was not stored"

    def purge(self) -> None:
        """Deregister every service the agent holds (Consul's own is not among them)."""
        for service_id in self.api("GET", "/v1/agent/services"):
            self.api("PUT", f"/v1/agent/service/deregister/{service_id}")


@pytest.fixture(scope="session")
def consul_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(tmp_path_factory.mktemp("consul"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def consul_agents(tmp_path: Path) -> Iterator[Any]:
    """`consul_agents(acl=False)` starts an agent of this test's own; all stop at teardown."""
    started: list[ConsulAgent] = []

    def start(*, acl: bool = False) -> ConsulAgent:
        agent = ConsulAgent(tmp_path, acl=acl)
        started.append(agent)
        return agent.start()  # type: ignore[return-value]

    try:
        yield start
    finally:
        for agent in started:
            agent.stop()


@pytest.fixture
def consul_persistent(tmp_path: Path) -> Iterator[ConsulAgent]:
    """A one-server Consul of this test's own with a data directory: stopped and started
    again it comes back with its KV, as a production agent does after an outage."""
    agent = ConsulAgent(tmp_path, data_dir=tmp_path / "consul-data")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@config_backend("consul")
@contextlib.asynccontextmanager
async def consul_config_backend(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A Consul config source on the session's agent, under a prefix of this test's own."""
    from microweave._backends import load_config_source

    agent: ConsulAgent = request.getfixturevalue("consul_server")
    source = load_config_source(f"{agent.url}/config-{uuid.uuid4().hex[:12]}")
    try:
        yield source
    finally:
        await source.aclose()


@registry_backend("consul")
@contextlib.asynccontextmanager
async def consul_backend(
    request: pytest.FixtureRequest, share: ConsulRegistry | None = None, **options: Any
) -> AsyncIterator[ConsulRegistry]:
    """A registry on the session's agent, emptied first; with `share`, a second instance on
    the same agent (its own connections), leaving the data alone."""
    agent: ConsulAgent = request.getfixturevalue("consul_server")
    if share is None:
        agent.purge()
    registry = ConsulRegistry(agent.address, **options)
    try:
        yield registry
    finally:
        await registry.aclose()
        if share is None:
            agent.purge()
