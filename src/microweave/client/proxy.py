"""Typed proxies: call a remote handler through its own class's signatures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..server import Kind
from ..server.handlers import describe_class

if TYPE_CHECKING:
    from . import Client

__all__ = ["make_proxy"]

T = TypeVar("T")


def make_proxy(client: Client, handler: type[T], *, service: str, name: str | None = None) -> T:
    """An object with the handler's method names; each call goes to `service` over the wire."""
    attrs: dict[str, Any] = {
        "__slots__": (),
        "__repr__": lambda self: f"<proxy {service} {handler.__name__}>",
    }
    for attr, method in describe_class(handler, package=service, name=name).items():
        attrs[attr] = _bind(client, service, method.name, method.kind, method.response_type)
    proxy_type = type(f"{handler.__name__}Proxy", (), attrs)
    return cast(T, proxy_type())


def _bind(client: Client, service: str, endpoint: str, kind: Kind, response: Any) -> Any:
    if kind is Kind.UNARY:

        async def unary(self: Any, request: Any, **options: Any) -> Any:
            return await client.call(service, endpoint, request, response=response, **options)

        return unary

    if kind is Kind.CLIENT_STREAM:

        async def client_stream(self: Any, requests: Any, **options: Any) -> Any:
            async for reply in client.stream(
                service, endpoint, requests, response=response, kind=kind, **options
            ):
                return reply
            raise RuntimeError(f"{endpoint} closed the call without a reply")

        return client_stream

    def streaming(self: Any, request: Any, **options: Any) -> Any:
        return client.stream(service, endpoint, request, response=response, kind=kind, **options)

    return streaming
