"""A call's body encoding by default: protobuf when a side of the call is a protobuf message."""

from __future__ import annotations

from typing import Any

import msgspec
from google.protobuf.wrappers_pb2 import StringValue

from microweave import Client
from microweave.codec import JSON, PROTO
from microweave.testing import MockRequest, MockTransport


class Hello(msgspec.Struct):
    name: str = ""
    message: str = ""


async def _content_types(calls: list[tuple[str, Any, Any, dict[str, Any]]]) -> list[str]:
    seen: list[str] = []

    async def answer(request: MockRequest) -> bytes:
        seen.append(request.content_type)
        if request.content_type == PROTO:
            return StringValue(value="hi").SerializeToString()
        return b'{"message": "hi"}' if request.path.endswith("Struct") else b'"hi"'

    async with Client(transports=[MockTransport(answer)]) as client:
        for method, request, response, options in calls:
            await client.call("greeter", f"Greeter.{method}", request, response=response, **options)
    return seen


async def test_protobuf_requests_and_replies_go_as_protobuf_others_as_json() -> None:
    pb_request = StringValue(value="ada")
    seen = await _content_types(
        [
            ("Proto", pb_request, StringValue, {}),
            ("Proto", b"\x0a\x03ada", StringValue, {}),  # encoded already: the reply type says
            ("Struct", Hello(name="ada"), Hello, {}),
            ("Struct", {"name": "ada"}, None, {}),
            ("Proto", pb_request, StringValue, {"content_type": JSON}),  # said explicitly: kept
        ]
    )
    assert seen == [PROTO, PROTO, JSON, JSON, JSON]
