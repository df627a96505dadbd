"""Handler classes become endpoints: names, call kinds, and clear errors for bad signatures."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import msgspec
import pytest

from microweave import Context, Service
from microweave.server import Kind, Router, grpc_path
from microweave.server.handlers import camel, describe_class, endpoint_name, introspect, snake


class Req(msgspec.Struct):
    name: str


class Rep(msgspec.Struct):
    message: str


class Greeter:
    async def say_hello(self, req: Req, ctx: Context) -> Rep:
        return Rep(message=req.name)

    async def no_context(self, req: Req) -> Rep:
        return Rep(message=req.name)

    async def count(self, req: Req) -> AsyncIterator[Rep]:
        yield Rep(message=req.name)

    async def total(self, reqs: AsyncIterator[Req]) -> Rep:
        return Rep(message="".join([r.name async for r in reqs]))

    async def chat(self, reqs: AsyncIterable[Req], ctx: Context) -> AsyncIterator[Rep]:
        async for r in reqs:
            yield Rep(message=r.name)

    def blocking(self, req: Req) -> Rep:
        return Rep(message=req.name)

    def _private(self, req: Req) -> Rep:
        raise AssertionError

    @staticmethod
    def helper(x: int) -> int:
        return x

    @property
    def prop(self) -> int:
        return 1


def by_name(handler: object, **kwargs: Any) -> dict[str, Any]:
    return {m.name: m for m in introspect(handler, package="greeter", **kwargs)}


@pytest.mark.parametrize(
    ("snake_name", "camel_name"),
    [
        ("say_hello", "SayHello"),
        ("hello", "Hello"),
        ("get_user_by_id", "GetUserById"),
        ("SayHello", "SayHello"),
        ("say_hello_", "SayHello"),
        ("x", "X"),
    ],
)
def test_camel(snake_name: str, camel_name: str) -> None:
    assert camel(snake_name) == camel_name


def test_snake() -> None:
    assert snake("SayHello") == "say_hello"
    assert snake("Hello") == "hello"


def test_names_and_paths() -> None:
    assert endpoint_name("Greeter", "say_hello") == "Greeter.SayHello"
    assert grpc_path("greeter", "Greeter.SayHello") == "/greeter.Greeter/SayHello"
    methods = by_name(Greeter)
    assert set(methods) == {
        "Greeter.SayHello",
        "Greeter.NoContext",
        "Greeter.Count",
        "Greeter.Total",
        "Greeter.Chat",
        "Greeter.Blocking",
    }
    assert methods["Greeter.SayHello"].path == "/greeter.Greeter/SayHello"


def test_handler_name_can_be_chosen() -> None:
    methods = by_name(Greeter(), name="Hello")
    assert "Hello.SayHello" in methods
    assert methods["Hello.SayHello"].path == "/greeter.Hello/SayHello"


def test_kinds() -> None:
    methods = by_name(Greeter)
    kinds = {name.split(".")[1]: m.kind for name, m in methods.items()}
    assert kinds == {
        "SayHello": Kind.UNARY,
        "NoContext": Kind.UNARY,
        "Count": Kind.SERVER_STREAM,
        "Total": Kind.CLIENT_STREAM,
        "Chat": Kind.BIDI,
        "Blocking": Kind.UNARY,
    }
    assert methods["Greeter.Chat"].metadata == {"stream": "bidi"}
    assert methods["Greeter.SayHello"].metadata == {}


def test_types_context_and_sync() -> None:
    methods = by_name(Greeter)
    hello = methods["Greeter.SayHello"]
    assert (hello.request_type, hello.response_type) == (Req, Rep)
    assert hello.takes_context and hello.is_async
    assert not methods["Greeter.NoContext"].takes_context
    assert (methods["Greeter.Total"].request_type, methods["Greeter.Count"].response_type) == (Req, Rep)
    blocking = methods["Greeter.Blocking"]
    assert not blocking.is_async and blocking.kind is Kind.UNARY


def test_kind_flags() -> None:
    assert Kind.of(False, False) is Kind.UNARY
    assert Kind.of(False, True) is Kind.SERVER_STREAM
    assert Kind.of(True, False) is Kind.CLIENT_STREAM
    assert Kind.of(True, True) is Kind.BIDI
    assert [k.request_streaming for k in Kind] == [False, False, True, True]
    assert [k.response_streaming for k in Kind] == [False, True, False, True]


def test_instance_state_is_kept() -> None:
    class Counter:
        def __init__(self) -> None:
            self.prefix = "n="

        async def get(self, req: Req) -> Rep:
            return Rep(message=self.prefix + req.name)

    instance = Counter()
    [method] = introspect(instance, package="c")
    assert method.fn.__self__ is instance


def test_describe_class_for_proxies() -> None:
    methods = describe_class(Greeter, package="greeter")
    assert set(methods) == {"say_hello", "no_context", "count", "total", "chat", "blocking"}
    assert methods["say_hello"].name == "Greeter.SayHello"
    assert methods["chat"].kind is Kind.BIDI


# -- bad signatures ----------------------------------------------------------------------------


class NoRequest:
    async def ping(self) -> Rep:
        return Rep(message="")


class Unannotated:
    async def ping(self, req):  # type: ignore[no-untyped-def]
        return req


class TooMany:
    async def ping(self, req: Req, ctx: Context, extra: int) -> Rep:
        return Rep(message="")


class WrongContext:
    async def ping(self, req: Req, ctx: int) -> Rep:
        return Rep(message="")


class StreamWithoutType:
    async def ping(self, req: Req) -> Rep:  # type: ignore[misc]
        yield Rep(message="")


class SyncStream:
    def ping(self, reqs: AsyncIterator[Req]) -> Rep:
        return Rep(message="")


class Unresolvable:
    async def ping(self, req: DoesNotExist) -> Rep:  # type: ignore[name-defined]  # noqa: F821
        return Rep(message="")


class Empty:
    def _hidden(self, req: Req) -> Rep:
        return Rep(message="")


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (NoRequest, "NoRequest.ping must take a request argument"),
        (Unannotated, "Unannotated.ping: annotate the request parameter 'req'"),
        (TooMany, "TooMany.ping must take (request) or (request, ctx: Context)"),
        (WrongContext, "WrongContext.ping: the second parameter must be annotated `Context`"),
        (StreamWithoutType, "StreamWithoutType.ping: annotate the return as AsyncIterator[ReplyType]"),
        (SyncStream, "SyncStream.ping: streaming endpoints must be `async def`"),
        (Unresolvable, "Unresolvable.ping: cannot resolve type annotations"),
        (Empty, "handler Empty has no public methods to serve"),
    ],
)
def test_bad_signatures_raise_type_error(handler: type, message: str) -> None:
    with pytest.raises(TypeError) as info:
        introspect(handler, package="bad")
    assert message in str(info.value)


def test_bad_handler_fails_at_decoration() -> None:
    service = Service("bad", registry="memory://handlers-unit")
    with pytest.raises(TypeError, match=r"TooMany\.ping"):

        @service.handler
        class TooMany:
            async def ping(self, req: Req, ctx: Context, extra: int) -> Rep:
                return Rep(message="")


def test_router_refuses_duplicates_and_looks_up_both_ways() -> None:
    router = Router(package="greeter")
    router.add_handler(Greeter)
    with pytest.raises(ValueError, match=r"endpoint Greeter\.\w+ is registered twice"):
        router.add_handler(Greeter)
    assert router.lookup("Greeter.SayHello") is router.lookup("/greeter.Greeter/SayHello")
    assert router.lookup("Greeter.Nope") is None
