"""Typed proxies: call a remote handler through its own class's signatures.

    greeter = client.proxy(Greeter, service="greeter", timeout=5)
    reply = await greeter.say_hello(HelloRequest(name="Ada"))   # -> HelloReply, for mypy too

The proxy is typed as the handler class, so a method that takes `(self, req)` checks as it is;
call options are given once, when the proxy is made, not per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..selector import Filter
from ..server import Kind
from ..server.handlers import describe_class
from .call import UNSET, Unset

if TYPE_CHECKING:
    from . import Client

__all__ = ["make_proxy"]

T = TypeVar("T")


def make_proxy(
    client: Client,
    handler: type[T],
    *,
    service: str,
    name: str | None = None,
    timeout: float | Unset | None = UNSET,
    metadata: Mapping[str, str] | None = None,
    filters: Sequence[Filter] = (),
) -> T:
    """An object with the handler's method names; each call goes to `service` over the wire."""
    options: dict[str, Any] = {"timeout": timeout, "metadata": metadata, "filters": filters}
    attrs: dict[str, Any] = {
        "__slots__": (),
        "__repr__": lambda self: f"<proxy {service} {handler.__name__}>",
    }
    for attr, method in describe_class(handler, package=service, name=name).items():
        attrs[attr] = _bind(client, service, method.name, method.kind, method.response_type, options)
    proxy_type = type(f"{handler.__name__}Proxy", (), attrs)
    return cast(T, proxy_type())


def _bind(
    client: Client, service: str, endpoint: str, kind: Kind, response: Any, options: dict[str, Any]
) -> Any:
    if kind is Kind.UNARY:

        async def unary(self: Any, request: Any, ctx: Any = None) -> Any:
            return await client.call(service, endpoint, request, response=response, **options)

        return unary

    if kind is Kind.CLIENT_STREAM:

        async def client_stream(self: Any, requests: Any, ctx: Any = None) -> Any:
            async for reply in client.stream(
                service, endpoint, requests, response=response, kind=kind, **options
            ):
                return reply
            raise RuntimeError(f"{endpoint} closed the call without a reply")

        return client_stream

    def streaming(self: Any, request: Any, ctx: Any = None) -> Any:
        return client.stream(service, endpoint, request, response=response, kind=kind, **options)

    return streaming
