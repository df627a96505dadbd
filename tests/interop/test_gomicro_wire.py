"""What go-micro's gRPC client puts on the wire, sent by hand to a microweave node: paths with
any package prefix, the body's codec in `x-content-type`, the `timeout` header in nanoseconds.
(tests/interop/test_gomicro.py has the real go-micro client; these pin each rule on its own.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from gomicro_peers import unique
from gomicro_service import build

from microweave.testing import serve


@pytest.fixture
async def channel(greeter_pb2: ModuleType) -> AsyncIterator[tuple[str, grpc.aio.Channel]]:
    service = build(unique("mw"), greeter_pb2)
    async with serve(service, transport="grpc"), grpc.aio.insecure_channel(service.addresses["grpc"]) as ch:
        yield service.name, ch


async def _call(
    ch: grpc.aio.Channel, path: str, body: bytes, *, deadline: float = 10, **metadata: str
) -> bytes:
    reply: bytes = await ch.unary_unary(path)(body, timeout=deadline, metadata=tuple(metadata.items()))
    return reply


async def _error(
    ch: grpc.aio.Channel, path: str, body: bytes, **kw: Any
) -> tuple[grpc.StatusCode, dict[str, Any]]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(ch, path, body, **kw)
    return info.value.code(), json.loads(info.value.details() or "{}")


JSON_CT = {"x-content-type": "application/json"}


async def test_any_package_prefix_routes_to_the_handler(channel: tuple[str, grpc.aio.Channel]) -> None:
    name, ch = channel
    # go-micro's server keeps only the last `.` segment of the service part: so do we
    for path in (f"/{name}.Greeter/Add", "/Greeter/Add", "/go.micro.srv.other.Greeter/Add"):
        assert json.loads(await _call(ch, path, b'{"a": 1, "b": 2}', **JSON_CT)) == {"sum": 3}
    code, error = await _error(ch, "/any.Greeter/Nope", b"{}")
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert error["code"] == 501 and "Greeter.Add" in error["detail"]


async def test_a_name_two_endpoints_share_routes_nowhere(
    greeter_pb2_dir: Path, greeter_pb2: ModuleType
) -> None:
    """A grpcio servicer's /greeter.Greeter/Hello beside a typed Greeter.Hello: go-micro's rule
    cannot tell them apart, so only their exact paths reach them."""
    sys.path.insert(0, str(greeter_pb2_dir))
    try:
        import greeter_pb2_grpc
    finally:
        sys.path.remove(str(greeter_pb2_dir))

    class Servicer(greeter_pb2_grpc.GreeterServicer):  # type: ignore[misc]
        async def Hello(self, request: Any, context: Any) -> Any:
            return greeter_pb2.HelloReply(message="servicer", by="grpcio")

    service = build(unique("mw"), greeter_pb2)
    service.add_servicer(Servicer(), greeter_pb2_grpc.add_GreeterServicer_to_server)
    body = greeter_pb2.HelloRequest(name="x").SerializeToString()
    proto = {"x-content-type": "application/grpc+proto"}
    async with serve(service, transport="grpc"), grpc.aio.insecure_channel(service.addresses["grpc"]) as ch:
        typed = await _call(ch, f"/{service.name}.Greeter/Hello", body, **proto)
        assert greeter_pb2.HelloReply.FromString(typed).by == "microweave"
        servicer = await _call(ch, "/greeter.Greeter/Hello", body, **proto)
        assert greeter_pb2.HelloReply.FromString(servicer).by == "grpcio"
        code, _ = await _error(ch, "/other.Greeter/Hello", body, **proto)
        assert code is grpc.StatusCode.UNIMPLEMENTED
        # the typed handler's other endpoints are nobody else's: they still route
        assert json.loads(await _call(ch, "/other.Greeter/Add", b'{"a": 1, "b": 1}', **JSON_CT)) == {"sum": 2}


@pytest.mark.parametrize(
    "content_type", ["application/grpc+proto", "application/grpc", "application/protobuf"]
)
async def test_protobuf_content_types(
    channel: tuple[str, grpc.aio.Channel], greeter_pb2: ModuleType, content_type: str
) -> None:
    name, ch = channel
    body = greeter_pb2.HelloRequest(name="go").SerializeToString()
    reply = await _call(ch, f"/{name}.Greeter/Hello", body, **{"x-content-type": content_type})
    assert greeter_pb2.HelloReply.FromString(reply) == greeter_pb2.HelloReply(
        message="Hello go", by="microweave"
    )


@pytest.mark.parametrize("content_type", ["application/json", "application/grpc+json"])
async def test_json_content_types_on_a_protobuf_handler(
    channel: tuple[str, grpc.aio.Channel], content_type: str
) -> None:
    name, ch = channel
    reply = await _call(ch, f"/{name}.Greeter/Hello", b'{"name": "js"}', **{"x-content-type": content_type})
    assert json.loads(reply) == {"message": "Hello js", "by": "microweave"}


async def test_protobuf_to_a_json_handler_is_a_clear_400(channel: tuple[str, grpc.aio.Channel]) -> None:
    name, ch = channel
    code, error = await _error(
        ch, f"/{name}.Greeter/Add", b"\x08\x01", **{"x-content-type": "application/grpc+proto"}
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert error["code"] == 400 and "application/protobuf" in error["detail"]


def _ns(seconds: float) -> str:
    return str(int(seconds * 1e9))


async def _sleep(ch: grpc.aio.Channel, name: str, *, deadline: float, **metadata: str) -> Any:
    """Greeter.Sleep for 0 s: what the handler saw (its time left, its metadata)."""
    reply = await _call(
        ch, f"/{name}.Greeter/Sleep", b'{"seconds": 0}', deadline=deadline, **JSON_CT, **metadata
    )
    return json.loads(reply)


async def test_timeout_header_is_the_deadline_when_sooner(channel: tuple[str, grpc.aio.Channel]) -> None:
    name, ch = channel
    # the header leaves 2 s, gRPC's deadline 60 s: the handler sees at most 2 s
    seen = await _sleep(ch, name, deadline=60, **{"timeout": _ns(2), "trace": "t1"})
    assert 0 < seen["remaining"] <= 2
    # neither go-micro header is left for the handler's own outbound calls to carry on
    assert seen["metadata"]["trace"] == "t1"
    assert "timeout" not in seen["metadata"] and "x-content-type" not in seen["metadata"]


async def test_grpc_deadline_wins_when_sooner(channel: tuple[str, grpc.aio.Channel]) -> None:
    name, ch = channel
    seen = await _sleep(ch, name, deadline=2, **{"timeout": _ns(60)})
    # gRPC carries its deadline as a rounded-up timeout header: a few ms over 2 s is gRPC's 2 s
    assert 0 < seen["remaining"] <= 2.1


@pytest.mark.parametrize("header", ["soon", "-5", "1.5", "9" * 30])
async def test_a_timeout_header_that_is_no_count_of_nanoseconds_is_ignored(
    channel: tuple[str, grpc.aio.Channel], header: str
) -> None:
    name, ch = channel
    seen = await _sleep(ch, name, deadline=60, **{"timeout": header})
    assert seen["remaining"] > 2  # gRPC's 60 s, untouched


@pytest.mark.parametrize("seconds", [0.2, 0])
async def test_an_expired_timeout_header_is_408(
    channel: tuple[str, grpc.aio.Channel], seconds: float
) -> None:
    """At the header's deadline the call is cancelled and answered 408; "0" is already expired
    (as in go-micro's server)."""
    name, ch = channel
    body = b'{"seconds": 30}'
    code, error = await _error(
        ch, f"/{name}.Greeter/Sleep", body, deadline=60, **JSON_CT, **{"timeout": _ns(seconds)}
    )
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert error["code"] == 408 and error["id"] == name


# -- absurd headers and paths from a go-micro-shaped caller ----------------------------------


async def test_the_largest_timeout_header_is_a_far_deadline(channel: tuple[str, grpc.aio.Channel]) -> None:
    """20 digits (about 3,000 years) with no gRPC deadline: the call runs, far from its end."""
    name, ch = channel
    reply = await ch.unary_unary(f"/{name}.Greeter/Sleep")(
        b'{"seconds": 0}', metadata=(("timeout", "9" * 20), *JSON_CT.items())
    )
    assert json.loads(reply)["remaining"] > 1e9
    seen = await _sleep(ch, name, deadline=60, **{"timeout": "0" * 20 + "1"})  # 21 digits: ignored
    assert seen["remaining"] > 2


@pytest.mark.parametrize("content_type", ["text/html", "application/" + "x" * 4000, "application/json; x=1"])
async def test_an_unknown_x_content_type_is_a_short_clear_400(
    channel: tuple[str, grpc.aio.Channel], content_type: str
) -> None:
    name, ch = channel
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(ch, f"/{name}.Greeter/Add", b'{"a": 1, "b": 2}', **{"x-content-type": content_type})
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    error = json.loads(details)
    assert error["code"] == 400 and "content type" in error["detail"]
    assert len(details) < 600  # the caller's header is not echoed back whole


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        ("/" + "a." * 3000 + "Greeter/Add", True),  # any package prefix, however long
        ("/" + "." * 500 + "/Add", False),
        ("/Greeter/Add/extra", False),
        ("/Greeter", False),
        ("/", False),
    ],
)
async def test_paths_with_many_dots_or_parts(
    channel: tuple[str, grpc.aio.Channel], path: str, routed: bool
) -> None:
    _, ch = channel
    if routed:
        assert json.loads(await _call(ch, path, b'{"a": 1, "b": 2}', **JSON_CT)) == {"sum": 3}
        return
    code, error = await _error(ch, path, b"{}", **JSON_CT)
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert error["code"] == 501
