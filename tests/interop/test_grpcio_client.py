"""A microweave service called by plain grpcio, the way any gRPC program in any language would.

This module does not import microweave: the service runs as a process (examples/greeter), its
address is read from the local registry's files, and calls go through a bare grpc channel.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import ServiceProcess, ServiceProcesses

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


# -- a typed handler whose types are protobuf messages, and a servicer that fails ----------------

INTEROP_PROTO = """
syntax = "proto3";
package mwinterop;
message Msg { string text = 1; int64 n = 2; }
service Pipe {
  rpc Echo (Msg) returns (Msg);
  rpc Count (Msg) returns (stream Msg);
}
service Faulty {
  rpc Boom (Msg) returns (Msg);
  rpc Where (Msg) returns (Msg);
}
"""


@dataclass
class ProtoNode:
    process: ServiceProcess
    pb2: ModuleType
    pb2_grpc: ModuleType


@pytest.fixture(scope="module")
def proto_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProtoNode]:
    """tests/integration/services/proto_typed.py as a process, with modules generated here by
    grpc_tools from INTEROP_PROTO: the same ones this test's stubs use."""
    root = tmp_path_factory.mktemp("interop-proto")
    generated = root / "generated"
    generated.mkdir()
    (generated / "mwinterop.proto").write_text(INTEROP_PROTO)
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{generated}", f"--python_out={generated}",
            f"--grpc_python_out={generated}", str(generated / "mwinterop.proto"),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    sys.path.insert(0, str(generated))
    processes = ServiceProcesses(root / "registry", root)
    try:
        process = processes.start("proto_typed.py", "--proto-dir", str(generated), name="mwinterop")
        yield ProtoNode(
            process, importlib.import_module("mwinterop_pb2"), importlib.import_module("mwinterop_pb2_grpc")
        )
    finally:
        processes.stop_all()
        sys.path.remove(str(generated))
    assert [p.proc.returncode for p in processes.started] == [0]


def test_protobuf_typed_handler_answers_a_generated_stub(proto_node: ProtoNode) -> None:
    """No content type is said by a plain grpcio stub: the endpoint's codec (protobuf) is used."""
    pb2 = proto_node.pb2
    with grpc.insecure_channel(proto_node.process.address) as channel:
        stub = proto_node.pb2_grpc.PipeStub(channel)
        reply = stub.Echo(pb2.Msg(text="abc"), timeout=10)
        assert (reply.text, reply.n) == ("cba", 3)
        replies = list(stub.Count(pb2.Msg(text="t", n=3), timeout=10))
        assert [(r.text, r.n) for r in replies] == [("t", 0), ("t", 1), ("t", 2)]


def test_failing_servicer_answers_internal_with_a_correlation_id_only(proto_node: ProtoNode) -> None:
    pb2 = proto_node.pb2
    with grpc.insecure_channel(proto_node.process.address) as channel:
        stub = proto_node.pb2_grpc.FaultyStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Boom(pb2.Msg(text="x"), timeout=10)
        code, error = _error(info)
        # and it keeps serving, with the call's context set inside the servicer
        assert stub.Where(pb2.Msg(), timeout=10).text == "/mwinterop.Faulty/Where"
    assert code is grpc.StatusCode.INTERNAL
    assert error["id"] == "mwinterop" and error["code"] == 500
    detail = str(error["detail"])
    for leak in ("Traceback", ".py", "hunter2", "ValueError", "Unexpected"):
        assert leak not in detail, detail
    correlation = detail.rsplit(" ", 1)[-1]
    assert "correlation id" in detail and len(correlation) >= 8
    # the node's log holds the traceback under the same id
    log = proto_node.process.output()
    logged = log[log.index(correlation) :]
    assert "Traceback" in logged and "ValueError: hunter2" in logged, log
