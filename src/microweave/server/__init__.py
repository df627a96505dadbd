"""Server side: the router every transport serves, and the description of one endpoint.

A `Router` is transport-neutral: it knows the typed endpoints (`Greeter.SayHello`, with their
request and response types and codecs) and the grpcio servicers, each as a `Target` the
pipeline (`server.pipeline`) can run. Each transport (gRPC, tcp, in-process) turns its wire form
into a `Call` and hands it to the pipeline, so error handling, deadlines, limits and the
handler contract are written once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..codec import TypeCodec
from ..errors import NotImplementedError_

if TYPE_CHECKING:
    from ..broker.subscriber import Subscriber

__all__ = ["Kind", "Method", "Router", "ServicerEntry", "grpc_path"]


class Kind(enum.Enum):
    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"
    BIDI = "bidi"

    @property
    def request_streaming(self) -> bool:
        return self in (Kind.CLIENT_STREAM, Kind.BIDI)

    @property
    def response_streaming(self) -> bool:
        return self in (Kind.SERVER_STREAM, Kind.BIDI)

    @classmethod
    def of(cls, request_streaming: bool, response_streaming: bool) -> Kind:
        if request_streaming:
            return cls.BIDI if response_streaming else cls.CLIENT_STREAM
        return cls.SERVER_STREAM if response_streaming else cls.UNARY


def grpc_path(package: str, endpoint: str) -> str:
    """`("greeter", "Greeter.SayHello")` → `/greeter.Greeter/SayHello` (go-micro's rule)."""
    handler, _, method = endpoint.rpartition(".")
    return f"/{package}.{handler}/{method}"


@dataclass(slots=True)
class Method:
    """One typed endpoint of a handler class."""

    name: str  # Greeter.SayHello
    path: str  # /greeter.Greeter/SayHello
    kind: Kind
    fn: Callable[..., Any]  # the bound method
    request_type: Any
    response_type: Any
    request_codec: TypeCodec
    response_codec: TypeCodec
    takes_context: bool
    is_async: bool
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ServicerEntry:
    """A grpcio-generated servicer and what its `add_XServicer_to_server` registered."""

    servicer: Any
    add_to_server: Callable[[Any, Any], None]
    # full service name (helloworld.Greeter) -> method name -> grpc.RpcMethodHandler
    handlers: dict[str, dict[str, Any]]


class Router:
    """Endpoints by gRPC path and by go-micro name."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.methods: dict[str, Method] = {}  # by path
        self.by_name: dict[str, Method] = {}
        self.servicers: list[ServicerEntry] = []
        self.servicer_handlers: dict[str, Any] = {}  # /pkg.Service/Method -> grpc.RpcMethodHandler
        self.targets: dict[str, Target] = {}  # every endpoint by path, as the pipeline runs it
        self.subscribers: dict[str, Subscriber] = {}  # broker subscribers by path (also in targets)

    def add_handler(self, handler: object, *, name: str | None = None) -> list[Method]:
        from .handlers import introspect

        methods = introspect(handler, package=self.package, name=name)
        for method in methods:
            if method.path in self.methods:
                raise ValueError(f"endpoint {method.name} is registered twice")
        for method in methods:
            self.methods[method.path] = method
            self.by_name[method.name] = method
            self.targets[method.path] = Target.of_method(method)
        return methods

    def add_servicer(self, servicer: object, add_to_server: Callable[[Any, Any], None]) -> None:
        from .handlers import record_servicer

        entry = record_servicer(servicer, add_to_server)
        self.servicers.append(entry)
        for service, handlers in entry.handlers.items():
            for method, handler in handlers.items():
                path = f"/{service}/{method}"
                if path in self.targets:
                    raise ValueError(f"endpoint {path} is registered twice")
                self.servicer_handlers[path] = handler
                self.targets[path] = Target.of_servicer(path, handler)

    def add_subscriber(self, subscriber: Subscriber) -> None:
        path = subscriber.target.path
        if path in self.targets:
            raise ValueError(f"{subscriber.name} is registered twice (name the second one with name=...)")
        self.subscribers[path] = subscriber
        self.targets[path] = subscriber.target

    def servicer_names(self) -> list[str]:
        return [name for entry in self.servicers for name in entry.handlers]

    def lookup(self, endpoint: str) -> Method | None:
        """By `Greeter.SayHello` or by `/greeter.Greeter/SayHello`."""
        return self.methods.get(endpoint) or self.by_name.get(endpoint)

    def unknown(self, path: str) -> NotImplementedError_:
        """501 naming what the caller could have meant (the path it sent is cut short: it is
        the caller's own input, echoed)."""
        shown = path if len(path) <= 200 else f"{path[:200]}..."
        known = ", ".join([*sorted(self.by_name), *sorted(self.servicer_handlers)]) or "none"
        return NotImplementedError_(
            f"unknown endpoint {shown!r} on service {self.package}; known endpoints: {known}", id=self.package
        )


from .call import Target  # noqa: E402 - Target builds on Method and Kind above
