"""A microweave service called by plain grpcio, the way any gRPC program in any language would.

This module does not import microweave: the service runs as a process (examples/greeter), its
address is read from the local registry's files, and calls go through a bare grpc channel.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import ServiceProcesses

SAY_HELLO = "/greeter.Greeter/SayHello"


@pytest.fixture(scope="module")
def greeter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """examples/greeter as a process on a private local registry, shared by this module."""
    root = tmp_path_factory.mktemp("interop")
    processes = ServiceProcesses(root / "registry", root)
    try:
        node = processes.start("examples/greeter/service.py", name="greeter").node
        yield node
    finally:
        processes.stop_all()
    assert [p.proc.returncode for p in processes.started] == [0]


@pytest.fixture
def channel(greeter: dict[str, Any]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(greeter["address"]) as channel:
        yield channel


def test_registered_the_go_micro_way(greeter: dict[str, Any]) -> None:
    # go-micro's node shape: the gRPC address in `address`, protocol=grpc in the metadata
    assert set(greeter) == {"id", "address", "metadata", "_version"}
    assert greeter["metadata"]["protocol"] == "grpc"
    assert greeter["_version"] == "1.0.0"
    host, _, port = greeter["address"].rpartition(":")
    assert host and port.isdigit()


def _error(info: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, dict[str, object]]:
    err = info.value
    return err.code(), json.loads(err.details())  # type: ignore[attr-defined]


def test_unary_json(channel: grpc.Channel) -> None:
    reply = channel.unary_unary(SAY_HELLO)(b'{"name": "x"}', timeout=10)
    assert json.loads(reply) == {"message": "Hello x"}


def test_server_stream(channel: grpc.Channel) -> None:
    replies = channel.unary_stream("/greeter.Greeter/SayHelloStream")(b'{"name": "ab"}', timeout=10)
    assert [json.loads(r) for r in replies] == [{"message": "Hello a"}, {"message": "Hello b"}]


def test_bad_field_is_invalid_argument_with_go_micro_error(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(SAY_HELLO)(b'{"name": 1}', timeout=10)
    code, error = _error(info)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error) == {"id", "code", "detail", "status"}
    assert error["id"] == "greeter"
    assert error["code"] == 400
    assert error["status"] == "Bad Request"
    assert "$.name" in str(error["detail"])


def test_malformed_json_is_invalid_argument(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(SAY_HELLO)(b'{"name": ', timeout=10)
    code, error = _error(info)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert error["code"] == 400


@pytest.mark.parametrize("path", ["/greeter.Greeter/Nope", "/nobody.Else/Method"])
def test_unknown_method_is_unimplemented_with_go_micro_error(channel: grpc.Channel, path: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(path)(b"{}", timeout=10)
    code, error = _error(info)
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert set(error) == {"id", "code", "detail", "status"}
    assert error["code"] == 501
    assert error["status"] == "Not Implemented"
    assert "Greeter.SayHello" in str(error["detail"])  # names what does exist
    # and the server keeps serving
    assert json.loads(channel.unary_unary(SAY_HELLO)(b'{"name": "y"}', timeout=10)) == {"message": "Hello y"}


def test_health_check(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "greeter.Greeter"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
