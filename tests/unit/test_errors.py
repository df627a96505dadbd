"""The error tree, its go-micro wire form and its mapping to gRPC status codes."""

from __future__ import annotations

import json
import pickle

import grpc
import pytest

import microweave
from microweave import errors
from microweave.errors import (
    BadRequest,
    Cancelled,
    ConfigurationError,
    Conflict,
    Forbidden,
    InternalServerError,
    MicroError,
    NotFound,
    NotImplementedError_,
    PreconditionFailed,
    RegistryError,
    ServiceNotFound,
    Timeout,
    Unauthorized,
    Unavailable,
    error_for_code,
    from_grpc,
    from_wire,
    grpc_to_code,
)

# class, code, gRPC status, go-micro status text
TABLE = [
    (BadRequest, 400, grpc.StatusCode.INVALID_ARGUMENT, "Bad Request"),
    (Unauthorized, 401, grpc.StatusCode.UNAUTHENTICATED, "Unauthorized"),
    (Forbidden, 403, grpc.StatusCode.PERMISSION_DENIED, "Forbidden"),
    (NotFound, 404, grpc.StatusCode.NOT_FOUND, "Not Found"),
    (Timeout, 408, grpc.StatusCode.DEADLINE_EXCEEDED, "Request Timeout"),
    (Conflict, 409, grpc.StatusCode.ALREADY_EXISTS, "Conflict"),
    (PreconditionFailed, 412, grpc.StatusCode.FAILED_PRECONDITION, "Precondition Failed"),
    (Cancelled, 499, grpc.StatusCode.CANCELLED, "Client Closed Request"),
    (InternalServerError, 500, grpc.StatusCode.INTERNAL, "Internal Server Error"),
    (NotImplementedError_, 501, grpc.StatusCode.UNIMPLEMENTED, "Not Implemented"),
    (Unavailable, 503, grpc.StatusCode.UNAVAILABLE, "Service Unavailable"),
]
ALL_ERRORS = [
    *(row[0] for row in TABLE),
    ServiceNotFound,
    RegistryError,
    ConfigurationError,
]


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_every_error_is_a_micro_error(cls: type[MicroError]) -> None:
    assert issubclass(cls, MicroError) and issubclass(cls, Exception)
    assert cls.__name__ in microweave.__all__  # users catch them: importable from the top


def test_tree_shape() -> None:
    assert issubclass(ServiceNotFound, NotFound)
    assert ServiceNotFound("x").code == 404
    assert RegistryError("x").code == 503
    # the tree is drawn in the module docstring; every class in it is named there
    for cls in ALL_ERRORS:
        assert cls.__name__ in (errors.__doc__ or "")


@pytest.mark.parametrize(("cls", "code", "status_code", "text"), TABLE)
def test_codes_and_status(cls: type[MicroError], code: int, status_code: grpc.StatusCode, text: str) -> None:
    err = cls("boom", id="svc")
    assert (err.code, err.status, err.grpc_code) == (code, text, status_code)
    assert err.detail == "boom" and err.id == "svc"


@pytest.mark.parametrize(("cls", "code", "status_code", "text"), TABLE)
def test_grpc_code_mapping_both_ways(
    cls: type[MicroError], code: int, status_code: grpc.StatusCode, text: str
) -> None:
    assert grpc_to_code(status_code) == code
    back = from_grpc(status_code, "plain words")
    assert type(back) is cls
    assert back.code == code and back.detail == "plain words"


@pytest.mark.parametrize(
    ("status_code", "code"),
    [
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ],
)
def test_other_grpc_codes(status_code: grpc.StatusCode, code: int) -> None:
    assert grpc_to_code(status_code) == code


def test_every_grpc_code_maps_somewhere() -> None:
    for status_code in grpc.StatusCode:
        if status_code is grpc.StatusCode.OK:
            continue
        assert isinstance(from_grpc(status_code, None), MicroError)


@pytest.mark.parametrize(("cls", "code", "status_code", "text"), TABLE)
def test_wire_json_round_trip(
    cls: type[MicroError], code: int, status_code: grpc.StatusCode, text: str
) -> None:
    err = cls("went wrong", id="greeter")
    data = json.loads(err.to_json())
    assert data == {"id": "greeter", "code": code, "detail": "went wrong", "status": text}
    assert err.to_dict() == data
    for payload in (err.to_json(), err.to_json().encode(), data):
        back = from_wire(payload)
        assert type(back) is cls
        assert (back.id, back.code, back.detail, back.status) == ("greeter", code, "went wrong", text)


def test_grpc_details_carrying_go_micro_json() -> None:
    # go-micro puts its error JSON in the status message; the code inside wins
    details = json.dumps({"id": "go.micro.srv", "code": 404, "detail": "no such user", "status": "Not Found"})
    err = from_grpc(grpc.StatusCode.UNKNOWN, details)
    assert type(err) is NotFound
    assert (err.id, err.code, err.detail) == ("go.micro.srv", 404, "no such user")


def test_from_wire_with_text_that_is_not_error_json() -> None:
    err = from_wire("connection reset by peer", fallback_code=503)
    assert type(err) is Unavailable and err.detail == "connection reset by peer"
    assert from_wire(b"\xff oops").detail == "\ufffd oops"
    assert type(from_wire('{"unrelated": 1}')) is InternalServerError
    assert from_wire("[1, 2]", fallback_code=400).code == 400
    # a missing or nonsense code falls back
    assert from_wire({"detail": "x", "code": "nan"}, fallback_code=408).code == 408
    assert from_wire({"detail": "x", "code": -1}).code == 500


def test_from_grpc_without_details_names_the_status() -> None:
    err = from_grpc(grpc.StatusCode.DEADLINE_EXCEEDED, None)
    assert type(err) is Timeout and err.detail == "deadline_exceeded"


def test_unknown_code_keeps_its_number() -> None:
    err = error_for_code(418, "teapot", id="kitchen")
    assert type(err) is MicroError
    assert (err.code, err.status, err.grpc_code) == (418, "Unknown", grpc.StatusCode.UNKNOWN)
    assert from_wire(err.to_json()).code == 418
    assert error_for_code(429, "slow down").status == "Too Many Requests"


def test_code_can_be_overridden() -> None:
    err = MicroError("x", code=409)
    assert err.code == 409 and err.grpc_code is grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_pickling_keeps_type_and_fields(cls: type[MicroError]) -> None:
    err = cls("detail here", id="svc-1", code=cls.default_code)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.detail, back.id, back.code) == ("detail here", "svc-1", cls.default_code)
    assert str(back) == str(err)


def test_str_and_repr() -> None:
    err = BadRequest("missing name", id="greeter")
    assert str(err) == "greeter: missing name (400 Bad Request)"
    assert repr(err) == "BadRequest(detail='missing name', id='greeter', code=400)"
    assert str(BadRequest("missing name")) == "missing name (400 Bad Request)"


def test_raise_and_catch_by_base() -> None:
    with pytest.raises(NotFound) as info:
        raise ServiceNotFound("gone", id="microweave.client")
    assert info.value.id == "microweave.client"
