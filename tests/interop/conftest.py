"""Fixtures of the go-micro interop tests: the Go peers, the protobuf messages both sides speak,
and the engines both sides register in (etcd and Consul, from tests/engines)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from gomicro_peers import Engine, Peers, built_peers, generate_pb2, peers_on

ENGINES = ["etcd", "consul", "nats"]


@pytest.fixture(scope="session")
def greeter_pb2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("greeter_pb2")
    generate_pb2(out)
    return out


@pytest.fixture(scope="session")
def greeter_pb2(greeter_pb2_dir: Path) -> ModuleType:
    return generate_pb2(greeter_pb2_dir)


@pytest.fixture(scope="session")
def gomicro_bin() -> Path:
    """Where scripts/peers/gomicro put the Go peers built from the current sources."""
    return built_peers()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Engine:
    """A registry engine go-micro and microweave both use (etcd's and Consul's are the
    session's; a NATS server per test)."""
    if request.param == "etcd":
        server = request.getfixturevalue("etcd_server")
        return Engine("etcd", server.address, server)
    if request.param == "consul":
        server = request.getfixturevalue("consul_server")
        return Engine("consul", server.address, server)
    server = request.getfixturevalue("nats_engine")
    return Engine("nats", server.address, server)


@pytest.fixture
def peers(engine: Engine, gomicro_bin: Path, greeter_pb2_dir: Path, tmp_path: Path) -> Iterator[Peers]:
    yield from peers_on(engine, gomicro_bin, greeter_pb2_dir, tmp_path)
