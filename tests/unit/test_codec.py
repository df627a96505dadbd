"""Codecs by handler type: msgspec Structs, dataclasses and pydantic models, JSON and msgpack."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
import pydantic
import pytest
from grpc_health.v1 import health_pb2

from microweave import BadRequest
from microweave.codec import JSON, MSGPACK, PROTO, describe, type_codec


class Address(msgspec.Struct):
    city: str
    zip: str = ""


class StructUser(msgspec.Struct):
    name: str
    age: int
    tags: list[str] = []
    address: Address | None = None


@dataclasses.dataclass
class DataUser:
    name: str
    age: int
    tags: list[str] = dataclasses.field(default_factory=list)


class PydanticUser(pydantic.BaseModel):
    name: str
    age: int
    tags: list[str] = []


USERS: list[Any] = [
    StructUser(name="ada", age=36, tags=["x"], address=Address(city="London")),
    DataUser(name="ada", age=36, tags=["x"]),
    PydanticUser(name="ada", age=36, tags=["x"]),
]
CONTENT_TYPES = [JSON, MSGPACK]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("user", USERS, ids=lambda u: type(u).__name__)
def test_round_trip(user: Any, content_type: str) -> None:
    codec = type_codec(type(user))
    data = codec.encode(user, content_type)
    assert isinstance(data, bytes)
    back = codec.decode(data, content_type)
    assert type(back) is type(user)
    assert back == user


@pytest.mark.parametrize("user", USERS, ids=lambda u: type(u).__name__)
def test_json_is_plain_json(user: Any) -> None:
    data = json.loads(type_codec(type(user)).encode(user, JSON))
    assert data["name"] == "ada" and data["age"] == 36 and data["tags"] == ["x"]


@pytest.mark.parametrize("user", USERS, ids=lambda u: type(u).__name__)
def test_msgpack_is_plain_msgpack(user: Any) -> None:
    data = msgspec.msgpack.decode(type_codec(type(user)).encode(user, MSGPACK))
    assert data["name"] == "ada" and data["age"] == 36


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("tp", [StructUser, DataUser, PydanticUser])
def test_decode_error_is_bad_request_naming_the_field(tp: type, content_type: str) -> None:
    wrong = {"name": "ada", "age": "old"}
    data = json.dumps(wrong).encode() if content_type == JSON else msgspec.msgpack.encode(wrong)
    with pytest.raises(BadRequest) as info:
        type_codec(tp).decode(data, content_type)
    assert info.value.code == 400
    assert "age" in info.value.detail
    assert "invalid request body" in info.value.detail


@pytest.mark.parametrize("tp", [StructUser, DataUser])
def test_msgspec_errors_give_the_json_path(tp: type) -> None:
    with pytest.raises(BadRequest) as info:
        type_codec(tp).decode(b'{"name": 5, "age": 1}')
    assert "$.name" in info.value.detail


def test_nested_field_path() -> None:
    with pytest.raises(BadRequest) as info:
        type_codec(StructUser).decode(b'{"name": "a", "age": 1, "address": {"city": 3}}')
    assert "$.address.city" in info.value.detail


@pytest.mark.parametrize("tp", [StructUser, DataUser, PydanticUser])
def test_missing_field(tp: type) -> None:
    with pytest.raises(BadRequest) as info:
        type_codec(tp).decode(b'{"name": "a"}')
    assert "age" in info.value.detail


@pytest.mark.parametrize("tp", [StructUser, DataUser, PydanticUser])
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_malformed_body(tp: type, content_type: str) -> None:
    with pytest.raises(BadRequest):
        type_codec(tp).decode(b"\xc1{not a body", content_type)


@pytest.mark.parametrize("tp", [StructUser, DataUser, PydanticUser])
def test_unsupported_content_type(tp: type) -> None:
    codec = type_codec(tp)
    with pytest.raises(BadRequest, match="unsupported content type"):
        codec.decode(b"{}", "text/xml")
    with pytest.raises(BadRequest, match="unsupported content type"):
        codec.encode(tp(name="a", age=1), "text/xml")


def test_plain_types_and_dicts() -> None:
    codec = type_codec(dict[str, int])
    assert codec.decode(codec.encode({"a": 1})) == {"a": 1}
    with pytest.raises(BadRequest):
        codec.decode(b'{"a": "x"}')
    assert type_codec(Any).decode(b'{"free": [1, "form"]}') == {"free": [1, "form"]}


def test_codec_is_built_once_per_type() -> None:
    assert type_codec(StructUser) is type_codec(StructUser)


def test_protobuf_messages() -> None:
    codec = type_codec(health_pb2.HealthCheckRequest)
    message = health_pb2.HealthCheckRequest(service="greeter")
    assert codec.decode(codec.encode(message, PROTO), PROTO) == message
    assert json.loads(codec.encode(message, JSON)) == {"service": "greeter"}
    assert codec.decode(b'{"service": "x"}', JSON) == health_pb2.HealthCheckRequest(service="x")
    with pytest.raises(BadRequest):
        codec.decode(b'{"nope": 1}', JSON)
    with pytest.raises(BadRequest):
        codec.decode(b"\xff\xff\xff", PROTO)


def test_describe_gives_go_micro_values() -> None:
    value = describe(StructUser)
    assert value is not None
    assert (value["name"], value["type"]) == ("StructUser", "StructUser")
    fields = {v["name"]: v for v in value["values"]}
    assert list(fields) == ["name", "age", "tags", "address"]
    assert fields["name"]["type"] == "str"
    assert fields["age"]["type"] == "int"
    for tp in (DataUser, PydanticUser):
        described = describe(tp)
        assert described is not None
        assert [v["name"] for v in described["values"]] == ["name", "age", "tags"]
    assert describe(None) is None
    assert describe(type(None)) is None
    proto = describe(health_pb2.HealthCheckRequest)
    assert proto is not None and proto["values"] == [{"name": "service", "type": "string", "values": None}]


@pytest.mark.parametrize(
    ("tp", "body", "content_type", "why"),
    [
        (dict, b'{"name": "\xff\xfe"}', JSON, "UTF-8"),
        (list, b"[" * 100_000, JSON, "invalid request body"),
        (list, b"\x91" * 100_000, MSGPACK, "invalid request body"),
    ],
)
def test_hostile_bodies_are_bad_requests(tp: Any, body: bytes, content_type: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        type_codec(tp).decode(body, content_type)
