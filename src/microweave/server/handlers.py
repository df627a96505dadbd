"""Turning a user's handler class (or a grpcio servicer) into endpoint descriptions."""

from __future__ import annotations

import collections.abc
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

from ..codec import type_codec
from ..context import Context
from . import Kind, Method, ServicerEntry, grpc_path

__all__ = ["camel", "describe_class", "endpoint_name", "idempotent", "introspect", "record_servicer", "snake"]

F = typing.TypeVar("F", bound=Callable[..., Any])
_IDEMPOTENT = "__microweave_idempotent__"


def idempotent(fn: F) -> F:
    """Declare an endpoint safe to run twice: callers may then retry it after errors that
    leave it unclear whether it ran (the node answered `Unavailable`, the connection broke).
    The registry record carries the declaration (`idempotent: "true"` in endpoint metadata)."""
    setattr(fn, _IDEMPOTENT, True)
    return fn


_STREAM_ORIGINS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)


def camel(snake: str) -> str:
    """`say_hello` → `SayHello`; names already in CamelCase stay as they are."""
    if "_" not in snake and snake[:1].isupper():
        return snake
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_") if part)


def snake(name: str) -> str:
    """`SayHello` → `say_hello` (for typed proxies)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def endpoint_name(handler_name: str, method_name: str) -> str:
    return f"{handler_name}.{camel(method_name)}"


def _stream_item(annotation: Any) -> Any | None:
    """`AsyncIterator[X]` → X; anything else → None."""
    if typing.get_origin(annotation) in _STREAM_ORIGINS:
        args = typing.get_args(annotation)
        return args[0] if args else Any
    return None


def _public_methods(handler: object) -> list[tuple[str, Callable[..., Any]]]:
    out = []
    for attr in dir(type(handler)):
        if attr.startswith("_"):
            continue
        raw = inspect.getattr_static(type(handler), attr)
        if isinstance(raw, staticmethod | classmethod | property) or not callable(raw):
            continue
        out.append((attr, getattr(handler, attr)))
    return out


def introspect(handler: object, *, package: str, name: str | None = None) -> list[Method]:
    """Every public method of the handler becomes an endpoint `Handler.Method`."""
    if isinstance(handler, type):
        handler = handler()
    handler_name = name or type(handler).__name__
    methods = [_describe(fn, handler_name, attr, package) for attr, fn in _public_methods(handler)]
    if not methods:
        raise TypeError(f"handler {handler_name} has no public methods to serve")
    return methods


def describe_class(cls: type, *, package: str, name: str | None = None) -> dict[str, Method]:
    """The endpoints a handler class would serve, without instantiating it (for proxies)."""
    handler_name = name or cls.__name__
    out = {}
    for attr in dir(cls):
        raw = inspect.getattr_static(cls, attr)
        if attr.startswith("_") or not inspect.isfunction(raw):
            continue
        out[attr] = _describe(raw, handler_name, attr, package)
    return out


def _describe(fn: Callable[..., Any], handler_name: str, attr: str, package: str) -> Method:
    where = f"{handler_name}.{attr}"
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:
        raise TypeError(f"{where}: cannot resolve type annotations: {exc}") from None
    params = list(inspect.signature(fn).parameters.values())
    if params and params[0].name == "self" and not inspect.ismethod(fn):
        params = params[1:]  # a function read off the class (typed proxies), not a bound method
    if not params:
        raise TypeError(f"{where} must take a request argument")
    request_annotation = hints.get(params[0].name)
    if request_annotation is None:
        raise TypeError(f"{where}: annotate the request parameter {params[0].name!r} with its type")
    takes_context = len(params) > 1
    if len(params) > 2:
        raise TypeError(f"{where} must take (request) or (request, ctx: Context)")
    if takes_context and hints.get(params[1].name, Context) is not Context:
        raise TypeError(f"{where}: the second parameter must be annotated `Context`")

    request_item = _stream_item(request_annotation)
    request_type = request_item if request_item is not None else request_annotation
    return_annotation = hints.get("return", type(None))
    response_streaming = inspect.isasyncgenfunction(fn)
    if response_streaming:
        response_type = _stream_item(return_annotation)
        if response_type is None:
            raise TypeError(f"{where}: annotate the return as AsyncIterator[ReplyType]")
    else:
        response_type = return_annotation
    is_async = inspect.iscoroutinefunction(fn) or response_streaming
    kind = Kind.of(request_item is not None, response_streaming)
    if not is_async and kind is not Kind.UNARY:
        raise TypeError(f"{where}: streaming endpoints must be `async def`")
    endpoint = endpoint_name(handler_name, attr)
    return Method(
        name=endpoint,
        path=grpc_path(package, endpoint),
        kind=kind,
        fn=fn,
        request_type=request_type,
        response_type=response_type,
        request_codec=type_codec(request_type),
        response_codec=type_codec(response_type),
        takes_context=takes_context,
        is_async=is_async,
        metadata={
            **({"stream": kind.value} if kind is not Kind.UNARY else {}),
            **({"idempotent": "true"} if getattr(fn, _IDEMPOTENT, False) else {}),
        },
    )


class _Recorder:
    """Stands in for a grpc server while `add_XServicer_to_server` runs, to learn its methods."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, Any]] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers[service] = dict(handlers)

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        # Older generated code only calls this; grpc's generic handler keeps name and methods.
        for generic in generic_handlers:
            service = getattr(generic, "_name", None)
            methods = getattr(generic, "_method_handlers", None)
            if service and isinstance(methods, dict):
                prefix = f"/{service}/"
                self.handlers.setdefault(service, {k.removeprefix(prefix): v for k, v in methods.items()})


def record_servicer(servicer: object, add_to_server: Callable[[Any, Any], None]) -> ServicerEntry:
    recorder = _Recorder()
    add_to_server(servicer, recorder)
    if not recorder.handlers:
        raise TypeError(f"{add_to_server!r} registered no methods for {servicer!r}")
    return ServicerEntry(servicer, add_to_server, recorder.handlers)
