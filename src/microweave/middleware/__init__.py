"""Middleware: code that wraps every call, on the server side and on the client side.

    class Timing(ServerMiddleware):
        async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
            started = time.perf_counter()
            try:
                return await call_next(call)
            finally:
                log.info("%s took %.1f ms", call.endpoint, (time.perf_counter() - started) * 1e3)

    service = Service("greeter", middleware=[Timing()])

A middleware sees one call as a typed object (`server.call.Call` on the server,
`client.call.ClientCall` on the client) with its encoded body, and passes it on with
`call_next`. `unary` wraps every call that has one reply (unary and client-streaming); `stream`
wraps every call with a stream of replies (server-streaming and bidi); `call.kind` says which.
A method left as it is here costs nothing: the chain skips it.

Order, as grpc interceptors and starlette's middleware list: the first middleware in the list is
the outermost. Each side runs, outermost first:

- server: error boundary (the framework's, always outermost) -> the defaults (tracing when
  configured, metrics, the access log when on: `middleware.defaults`) -> your middleware ->
  `CallChecks` (call kind, request size) -> `Deadline` -> decode -> handler -> encode.
- client: retry -> the defaults (tracing, metrics) -> your middleware -> `Deadline` ->
  `PropagateMetadata` -> select a node -> transport. Retries happen outside your middleware, so
  it sees every attempt.

The built-in stages are middlewares too (`microweave.middleware.builtin`), and so is the
optional `AccessLog`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from ..client.call import ClientCall
from ..server.call import Call

__all__ = ["Before", "ClientMiddleware", "Middleware", "ServerMiddleware", "StreamNext", "UnaryNext", "chain"]

C = TypeVar("C")

#: the rest of the chain, for a call with one reply
UnaryNext = Callable[[C], Awaitable[bytes]]
#: the rest of the chain, for a call with a stream of replies
StreamNext = Callable[[C], AsyncIterator[bytes]]


class Middleware(Generic[C]):
    """The shape shared by both sides; subclass `ServerMiddleware` or `ClientMiddleware`."""

    async def unary(self, call: C, call_next: UnaryNext[C]) -> bytes:
        return await call_next(call)

    def stream(self, call: C, call_next: StreamNext[C]) -> AsyncIterator[bytes]:
        return call_next(call)


class Before(Middleware[C]):
    """A middleware that only checks (or fills in) the call before passing it on: override
    `before`. The chain runs it as a plain function call, with no coroutine of its own, so a
    check costs what its code costs (the framework's deadline and metadata stages are these)."""

    def before(self, call: C) -> None:
        raise NotImplementedError

    async def unary(self, call: C, call_next: UnaryNext[C]) -> bytes:
        self.before(call)
        return await call_next(call)

    def stream(self, call: C, call_next: StreamNext[C]) -> AsyncIterator[bytes]:
        self.before(call)
        return call_next(call)


class ServerMiddleware(Middleware[Call]):
    """Wraps calls a node serves, on every transport and for every kind of handler."""


class ClientMiddleware(Middleware[ClientCall]):
    """Wraps calls a client makes, once per attempt."""


def _overrides(mw: Middleware[Any], name: str) -> bool:
    return getattr(type(mw), name) is not getattr(Middleware, name)


def chain(
    middleware: Sequence[Middleware[C]], unary: UnaryNext[C], stream: StreamNext[C]
) -> tuple[UnaryNext[C], StreamNext[C]]:
    """Wrap `unary` and `stream` in `middleware`, the first one outermost; built once per
    pipeline, so a call pays one function call per middleware that does something."""
    befores: list[Callable[[C], None]] = []  # consecutive Before stages, run as one step
    for mw in reversed(middleware):
        if isinstance(mw, Before) and not _overrides_before(mw):
            befores.insert(0, mw.before)
            continue
        if befores:
            unary, stream = _wrap_before(befores, unary), _wrap_before(befores, stream)
            befores = []
        if _overrides(mw, "unary"):
            unary = _wrap_unary(mw, unary)
        if _overrides(mw, "stream"):
            stream = _wrap_stream(mw, stream)
    if befores:
        unary, stream = _wrap_before(befores, unary), _wrap_before(befores, stream)
    return unary, stream


def _overrides_before(mw: Before[Any]) -> bool:
    """Whether a `Before` subclass also overrides `unary` or `stream` (then it is run as is)."""
    return type(mw).unary is not Before.unary or type(mw).stream is not Before.stream


N = TypeVar("N", UnaryNext[Any], StreamNext[Any])


def _wrap_before(befores: list[Callable[[C], None]], call_next: N) -> N:
    if len(befores) == 1:
        (before,) = befores

        def wrapped(call: C) -> Any:
            before(call)  # raises before the rest of the chain is even called
            return call_next(call)

        return wrapped
    first, *rest = befores

    def wrapped_all(call: C) -> Any:
        first(call)
        for before in rest:
            before(call)
        return call_next(call)

    return wrapped_all


def _wrap_unary(mw: Middleware[C], call_next: UnaryNext[C]) -> UnaryNext[C]:
    method = mw.unary

    def wrapped(call: C) -> Awaitable[bytes]:
        return method(call, call_next)

    return wrapped


def _wrap_stream(mw: Middleware[C], call_next: StreamNext[C]) -> StreamNext[C]:
    method = mw.stream

    def wrapped(call: C) -> AsyncIterator[bytes]:
        return method(call, call_next)

    return wrapped
