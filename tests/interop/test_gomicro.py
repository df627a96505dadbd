"""microweave and real go-micro v5.12.0 services, both ways, on etcd, Consul and NATS.

The go-micro side is the Go server and client of tests/interop/gomicro (built by
scripts/peers/gomicro); the microweave side is tests/interop/gomicro_service.py as a process.
Both find each other through the engine alone, each configured the go-micro way
(MICRO_REGISTRY, MICRO_REGISTRY_ADDRESS).
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import ModuleType
from typing import Any

import msgspec
import pytest
from gomicro_peers import REPO, Engine, Peers, unique, unpack, unpack_raw

from microweave import Client
from microweave.errors import BadRequest, InternalServerError
from microweave.registry import from_url
from microweave.transport.grpc.named import NamedGrpcClient

MW_ENDPOINTS = {"Greeter.Add", "Greeter.Hello", "Greeter.Sleep"}
GO_ENDPOINTS = {"Greeter.Hello", "Plain.Add"}
#: node metadata go-micro's gRPC server writes, and microweave's nodes too
GRPC_NODE = {"protocol": "grpc", "server": "grpc", "transport": "grpc"}


# -- a go-micro client calls microweave ----------------------------------------------------------


def test_go_micro_client_calls_typed_handlers_with_json_and_protobuf(peers: Peers) -> None:
    name = unique("mw")
    peers.microweave(name)
    call = ("-service", name, "-endpoint")
    # JSON to a msgspec-typed handler (x-content-type application/json)
    assert peers.go_client(*call, "Greeter.Add", "-codec", "json", "-body", '{"a": 2, "b": 40}') == (
        0,
        {"reply": {"sum": 42}},
    )
    hello = {"reply": {"message": "Hello go", "by": "microweave"}}
    # protobuf to a protobuf-typed handler (application/grpc+proto), and JSON to the same one
    assert peers.go_client(*call, "Greeter.Hello", "-codec", "proto", "-body", '{"name": "go"}') == (0, hello)
    assert peers.go_client(*call, "Greeter.Hello", "-codec", "json", "-body", '{"name": "go"}') == (0, hello)


def test_go_micro_client_gets_our_errors_as_go_micro_errors(peers: Peers) -> None:
    name = unique("mw")
    peers.microweave(name)
    code, out = peers.go_client("-service", name, "-endpoint", "Greeter.Add", "-body", '{"a": "x", "b": 1}')
    assert code == 1
    error = out["error"]
    assert (error["id"], error["code"], error["status"]) == (name, 400, "Bad Request")
    assert "$.a" in error["detail"]


def test_go_micro_timeout_expires_as_408(peers: Peers) -> None:
    name = unique("mw")
    peers.microweave(name)
    args = ("-service", name, "-endpoint", "Greeter.Sleep", "-body", '{"seconds": 30}', "-timeout", "500ms")
    code, out = peers.go_client(*args)
    assert code == 1 and out["error"]["code"] == 408
    # the node is not left busy with it: the next call is answered at once
    assert peers.go_client("-service", name, "-endpoint", "Greeter.Add", "-body", '{"a": 1, "b": 1}')[0] == 0


# -- microweave calls go-micro -------------------------------------------------------------------


async def _hello(client: Client, service: str, pb2: ModuleType, who: str) -> Any:
    """Greeter.Hello: a protobuf request is sent as protobuf without being told (grpcio sends
    application/grpc, which go-micro decodes as protobuf)."""
    request = pb2.HelloRequest(name=who)
    return await client.call(service, "Greeter.Hello", request, response=pb2.HelloReply, timeout=10)


async def test_microweave_calls_go_micro_protobuf_handler(peers: Peers, greeter_pb2: ModuleType) -> None:
    name = unique("go")
    peers.go_server(name)
    pb2 = greeter_pb2
    async with Client(registry=peers.engine.url) as client:
        reply = await _hello(client, name, pb2, "py")
        assert reply == pb2.HelloReply(message="Hello py", by="go-micro")
        # go-micro's error, as go-micro said it
        with pytest.raises(BadRequest) as info:
            await _hello(client, name, pb2, "")
        assert (info.value.id, info.value.detail, info.value.remote) == (
            "gogreeter",
            "name is required",
            True,
        )


async def test_json_to_go_micro_over_grpcio_is_a_clear_error(peers: Peers) -> None:
    """grpcio always sends content-type application/grpc, and go-micro decodes by that header
    (not x-content-type): a JSON body reaches its protobuf codec. The caller gets go-micro's
    500 saying so at once; no hang."""
    name = unique("go")
    peers.go_server(name)
    async with Client(registry=peers.engine.url) as client:
        for endpoint, body in (("Plain.Add", {"a": 1, "b": 2}), ("Greeter.Hello", {"name": "js"})):
            with pytest.raises(InternalServerError) as info:
                await client.call(name, endpoint, body, timeout=10)
            assert info.value.remote and "failed to unmarshal" in info.value.detail


async def test_named_grpc_client_reaches_plain_struct_handlers(peers: Peers, greeter_pb2: ModuleType) -> None:
    """NamedGrpcClient sends application/grpc+json: go-micro's plain Go struct handler answers,
    and its protobuf handler takes JSON and protobuf alike."""
    name = unique("go")
    peers.go_server(name)
    pb2 = greeter_pb2
    async with Client(registry=peers.engine.url, transports=[NamedGrpcClient()]) as client:
        assert await client.call(name, "Plain.Add", {"a": 20, "b": 22}, timeout=10) == {"sum": 42}
        assert await client.call(name, "Greeter.Hello", {"name": "js"}, timeout=10) == {
            "message": "Hello js",
            "by": "go-micro",
        }
        reply = await _hello(client, name, pb2, "pb")
        assert reply == pb2.HelloReply(message="Hello pb", by="go-micro")
        with pytest.raises(BadRequest) as info:
            await client.call(name, "Greeter.Hello", {"name": ""}, timeout=10)
        assert (info.value.id, info.value.detail, info.value.remote) == (
            "gogreeter",
            "name is required",
            True,
        )


# -- records: each side reads what the other wrote -----------------------------------------------


def _normal(record: dict[str, Any]) -> dict[str, Any]:
    """A Service JSON as both sides mean it: Go's null for an empty map or list as empty,
    endpoints by name, Value lists without null."""
    return {
        "name": record["name"],
        "version": record.get("version") or "",
        "metadata": record.get("metadata") or {},
        "endpoints": sorted(
            (
                {
                    "name": e["name"],
                    "request": e.get("request"),
                    "response": e.get("response"),
                    "metadata": e.get("metadata") or {},
                }
                for e in record.get("endpoints") or ()
            ),
            key=lambda e: str(e["name"]),
        ),
        "nodes": [
            {"id": n["id"], "address": n["address"], "metadata": n.get("metadata") or {}}
            for n in record.get("nodes") or ()
        ],
    }


async def _microweave_reads(engine: Engine, name: str) -> list[dict[str, Any]]:
    async with from_url(engine.url) as registry:
        return [_normal(msgspec.to_builtins(r)) for r in await registry.get_service(name)]


def _go_micro_reads(peers: Peers, name: str) -> list[dict[str, Any]]:
    code, out = peers.go_client("-service", name, "-lookup")
    assert code == 0, out
    return [_normal(r) for r in out["services"]]


def _check_raw(engine: Engine, name: str, node_id: str, version: str, endpoints: set[str]) -> None:
    """The stored form, read as go-micro's registry code reads it (NATS stores nothing: its
    records travel in the answers to queries, which go-micro's client decoded already)."""
    if not engine.stores:
        return
    raw = engine.raw(name)
    assert len(raw) == 1
    if engine.kind == "etcd":
        (entry,) = raw
        # key /micro/registry/<service>/<node id>, on a lease (the TTL), one node per value
        assert entry["key"] == f"/micro/registry/{name}/{node_id}"
        assert entry["lease"] != 0
        value = entry["value"]
        assert (value["name"], value["version"]) == (name, version)
        assert {e["name"] for e in value["endpoints"]} == endpoints
        assert [n["id"] for n in value["nodes"]] == [node_id]
        return
    (entry,) = raw
    service = entry["Service"]
    # the node id is the service ID; version, node metadata and endpoints in e-/t-/v- tags
    assert (service["ID"], service["Service"]) == (node_id, name)
    tags = service["Tags"]
    assert [unpack_raw(t[2:]) for t in tags if t.startswith("v-")] == [version]
    assert {unpack(t[2:])["name"] for t in tags if t.startswith("e-")} == endpoints
    metadata: dict[str, str] = {}
    for tag in tags:
        if tag.startswith("t-"):
            metadata.update(unpack(tag[2:]))
    assert metadata["protocol"] == "grpc"
    # one TTL check per node, passing while the node heartbeats
    check = next(c for c in entry["Checks"] if c["CheckID"] == f"service:{node_id}")
    assert check["Status"] == "passing"


async def test_microweave_record_as_go_micro_reads_it(peers: Peers) -> None:
    name = unique("mw")
    peers.microweave(name)
    (ours,) = await _microweave_reads(peers.engine, name)
    (theirs,) = _go_micro_reads(peers, name)
    assert theirs == ours  # name, version, endpoints with their Values, nodes with metadata
    assert theirs["version"] == "2.0.0"
    assert {e["name"] for e in theirs["endpoints"]} == MW_ENDPOINTS
    hello = next(e for e in theirs["endpoints"] if e["name"] == "Greeter.Hello")
    assert hello["request"]["type"] == "HelloRequest"
    assert [v["name"] for v in hello["request"]["values"]] == ["name", "times"]
    (node,) = theirs["nodes"]
    assert node["metadata"]["peer"] == "microweave"
    assert {k: node["metadata"][k] for k in GRPC_NODE} == GRPC_NODE
    _check_raw(peers.engine, name, node["id"], "2.0.0", MW_ENDPOINTS)


async def test_go_micro_record_as_microweave_reads_it(peers: Peers) -> None:
    name = unique("go")
    _, started = peers.go_server(name)
    (theirs,) = _go_micro_reads(peers, name)
    (ours,) = await _microweave_reads(peers.engine, name)
    assert ours == theirs
    assert ours["version"] == "1.2.3"
    assert {e["name"] for e in ours["endpoints"]} == GO_ENDPOINTS
    add = next(e for e in ours["endpoints"] if e["name"] == "Plain.Add")
    assert add["request"] == {
        "name": "AddRequest",
        "type": "AddRequest",
        "values": [
            {"name": "a", "type": "int", "values": None},
            {"name": "b", "type": "int", "values": None},
        ],
    }
    (node,) = ours["nodes"]
    assert (node["id"], node["address"]) == (started["id"], started["address"])
    assert node["metadata"]["peer"] == "go-micro"
    assert {k: node["metadata"][k] for k in GRPC_NODE} == GRPC_NODE
    _check_raw(peers.engine, name, node["id"], "1.2.3", GO_ENDPOINTS)


# -- the CLI -------------------------------------------------------------------------------------


def _cli(engine: Engine, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "microweave.cli", *args, "--registry", engine.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def test_cli_lists_and_describes_a_go_micro_service(peers: Peers) -> None:
    name = unique("go")
    _, started = peers.go_server(name)
    listed = json.loads(_cli(peers.engine, "services", "--json"))
    (record,) = [r for r in listed if r["name"] == name]
    assert record["version"] == "1.2.3" and len(record["nodes"]) == 1
    table = _cli(peers.engine, "services")
    (row,) = [line for line in table.splitlines() if f" {name} " in line]
    assert "1.2.3" in row and row.rstrip("│ ").endswith("1")

    described = _cli(peers.engine, "describe", name)
    for text in (
        started["id"],
        started["address"],
        "protocol=grpc",
        "Greeter.Hello",
        "HelloRequest {name: string, times: int32}",
        "HelloReply {message: string, by: string}",
        "Plain.Add",
        "AddRequest {a: int, b: int}",
        "AddReply {sum: int}",
    ):
        assert text in described, f"{text!r} not in:\n{described}"
