"""OpenTelemetry spans for calls and events: one SERVER span per call a node serves, one CLIENT
span per attempt a client makes, a PRODUCER span per publish and a CONSUMER span per event a
subscriber runs; the W3C trace context (`traceparent`, `tracestate`) and `baggage` travel in the
call's metadata, which every transport carries (local, tcp, grpc, direct://), and in the
event's headers.

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider(...))   # before the Service starts: it traces

Services and Clients add these middlewares themselves when tracing is configured
(`otel_setup`); add them by hand only to trace into a provider that is not the global one.

Span shape (OpenTelemetry's RPC and messaging conventions):
- name "<service>/<endpoint>" (`greeter/Greeter.SayHello`); events "send <topic>" and
  "process <topic>";
- `rpc.system` is "grpc" for calls carried by gRPC (the wire any gRPC peer speaks, so gRPC-aware
  backends read `rpc.grpc.status_code`), "microweave" for microweave's own tcp protocol and
  in-process calls; `rpc.service`/`rpc.method` from the gRPC path (`greeter.Greeter`,
  `SayHello`), `microweave.transport` names the transport either way;
- `rpc.response.status_code` is the call's code ("200", "404", "500": go-micro's codes). A client
  span is an ERROR for any code but 200; a server span for 5xx and 408 only (a 4xx is the
  caller's mistake, 499 a caller that went away), as the conventions say for servers.

The server span records the exception a handler raised (type, message, traceback) on the node's
own span: the caller never sees it, exactly as with the error boundary's log line.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from ..context import MessageContext
from ..errors import MicroError, code_of, error_for_code

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import extract, inject
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - the otel extra is missing
    from ..errors import ConfigurationError
    from .otel_setup import INSTALL_HINT

    raise ConfigurationError(f"tracing needs the OpenTelemetry API and SDK: run {INSTALL_HINT}") from None

from . import ClientMiddleware, ServerMiddleware, StreamNext, UnaryNext

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from ..client.call import ClientCall
    from ..server.call import Call

__all__ = ["ClientTracing", "ProducerTracing", "ServerTracing"]

SCOPE: Final = "microweave"
#: distinct (service, endpoint) shapes a client keeps: a gateway may call names it was sent
MAX_CLIENT_SHAPES: Final = 1000
_WIRE: Final = {"grpc": "tcp", "tcp": "tcp"}  # network.transport per microweave transport
_RPC_KINDS: Final = (SpanKind.SERVER, SpanKind.CLIENT)


def _tracer(provider: TracerProvider | None) -> Tracer:
    from .. import __version__

    return trace.get_tracer(SCOPE, __version__, tracer_provider=provider)


def _rpc_names(path: str) -> tuple[str, str]:
    """`/greeter.Greeter/SayHello` -> (`greeter.Greeter`, `SayHello`)."""
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


#: W3C baggage limits (OpenTelemetry's propagator drops a header over them, with a warning)
MAX_BAGGAGE: Final = 8192
MAX_BAGGAGE_MEMBERS: Final = 180
_OWS = "[ \t]*"
_KEY = r"[!#-'*+\-.0-9A-Z^-z|~]+"
_VALUE = r"[!#-+\--:<-\[\]-~]*"
#: one list-member, `key=value;property;key=value`, as the W3C Baggage spec writes it
_MEMBER: Final = re.compile(
    rf"{_OWS}{_KEY}{_OWS}={_OWS}{_VALUE}{_OWS}(?:;{_OWS}{_KEY}{_OWS}(?:={_OWS}{_VALUE}{_OWS})?)*"
)


def _screened(metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` whose `baggage` holds only members OpenTelemetry's propagator takes without a
    word: it logs a warning for each member it drops (quoting it) or for a header over the
    limits (quoting it whole), which would put a peer's newlines, escapes and bulk in the node's
    log, hundreds of lines for one call. Those members are dropped here, silently."""
    baggage = metadata.get("baggage")
    if baggage is None:
        return metadata
    members = baggage.split(",")
    kept = [m for m in members if _MEMBER.fullmatch(m)][:MAX_BAGGAGE_MEMBERS]
    while kept and sum(map(len, kept)) + len(kept) - 1 > MAX_BAGGAGE:
        kept.pop()
    if len(kept) == len(members):
        return metadata
    screened = {k: v for k, v in metadata.items() if k != "baggage"}
    if kept:
        screened["baggage"] = ",".join(kept)
    return screened


def _rpc_system(transport: str) -> str:
    return "grpc" if transport == "grpc" else "microweave"


class _Shape:
    """What every span of one endpoint shares, worked out once (per transport: a handful)."""

    __slots__ = ("_by_transport", "attributes", "name")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name = name
        self.attributes = attributes
        self._by_transport: dict[str, dict[str, Any]] = {}

    def on(self, transport: str) -> dict[str, Any]:
        attributes = self._by_transport.get(transport)
        if attributes is None:
            attributes = {**self.attributes, **_transport_attributes(transport)}
            if len(self._by_transport) < 16:
                self._by_transport[transport] = attributes
        return attributes


def _ended(
    span: Span,
    code: int,
    exc: BaseException | None,
    *,
    is_error: bool,
    transport: str,
    replies: int | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Record how a call (or a publish, or an event's handling) ended and end its span; the
    attributes go in one call (each costs the SDK a lock)."""
    if span.is_recording():
        attributes = extra if extra is not None else {}
        if getattr(span, "kind", None) in _RPC_KINDS:  # the SDK's spans say; messaging spans differ
            attributes["rpc.response.status_code"] = str(code)
        if transport == "grpc":
            attributes["rpc.grpc.status_code"] = _grpc_code(code)
        if replies is not None:
            attributes["microweave.stream.replies"] = replies
        if exc is not None:
            if not isinstance(exc, GeneratorExit):
                span.record_exception(exc)
            if is_error:
                attributes["error.type"] = str(code)
                detail = exc.detail if isinstance(exc, MicroError) else type(exc).__name__
                span.set_status(Status(StatusCode.ERROR, detail))
        span.set_attributes(attributes)
    span.end()


def _grpc_code(code: int) -> int:
    if code == 200:
        return 0
    value: int = error_for_code(code, "").grpc_code.value[0]
    return value


# -- server side ------------------------------------------------------------------------------


class ServerTracing(ServerMiddleware):
    """A SERVER span for each call this node serves (CONSUMER for an event a subscriber runs),
    child of the caller's span from the call's metadata. The span is current while the handler
    runs, so calls and publishes it makes are its children; baggage from the caller is current too."""

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = _tracer(tracer_provider)
        self._shapes: dict[str, _Shape] = {}  # by path, only paths this node serves: bounded

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        span, token = self._start(call)
        try:
            reply = await call_next(call)
        except BaseException as exc:
            code = code_of(exc)
            _ended(span, code, exc, is_error=_server_error(code), transport=call.transport)
            raise
        finally:
            _detach(token)
        _ended(span, 200, None, is_error=False, transport=call.transport)
        return reply

    async def stream(self, call: Call, call_next: StreamNext[Call]) -> AsyncIterator[bytes]:
        span, token = self._start(call)
        replies, sent = call_next(call), 0
        try:
            async for reply in replies:
                sent += 1
                yield reply
        except GeneratorExit as exc:  # the caller stopped reading: not this node's failure
            _ended(span, 499, exc, is_error=False, transport=call.transport, replies=sent)
            raise
        except BaseException as exc:
            code = code_of(exc)
            _ended(span, code, exc, is_error=_server_error(code), transport=call.transport, replies=sent)
            raise
        else:
            _ended(span, 200, None, is_error=False, transport=call.transport, replies=sent)
        finally:
            close = getattr(replies, "aclose", None)
            if close is not None:
                await close()
            _detach(token)

    def _start(self, call: Call) -> tuple[Span, _Token]:
        ctx = call.ctx
        # the parent comes from the wire only: a local call's task inherits its caller's context
        parent = extract(_screened(ctx.metadata), context=otel_context.Context())
        if isinstance(ctx, MessageContext):
            span = self.tracer.start_span(
                f"process {ctx.topic}", parent, SpanKind.CONSUMER, _consumer_attributes(ctx, call.transport)
            )
        else:
            shape = self._shapes.get(call.path) or self._shape(call)
            span = self.tracer.start_span(shape.name, parent, SpanKind.SERVER, shape.on(call.transport))
        return span, _attach(trace.set_span_in_context(span, parent))

    def _shape(self, call: Call) -> _Shape:
        target = call.target
        if target is None:  # the path is the caller's to invent: never in a name or a key
            return _Shape(f"{call.service}/unknown", {})
        rpc_service, method = _rpc_names(target.path)
        shape = _Shape(
            f"{call.service}/{target.name.lstrip('/')}", {"rpc.service": rpc_service, "rpc.method": method}
        )
        self._shapes[call.path] = shape
        return shape


def _server_error(code: int) -> bool:
    return code >= 500 or code == 408


def _transport_attributes(transport: str) -> dict[str, Any]:
    out: dict[str, Any] = {"rpc.system": _rpc_system(transport), "microweave.transport": transport}
    wire = _WIRE.get(transport)
    if wire:
        out["network.transport"] = wire
    return out


def _consumer_attributes(ctx: MessageContext, transport: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "messaging.system": transport,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": ctx.topic,
        "messaging.message.id": ctx.id,
        "microweave.transport": transport,
    }
    if ctx.queue:
        out["messaging.consumer.group.name"] = ctx.queue
    return out


# the context a span was made current in, to be restored when it ends
_Token = tuple["contextvars.Token[otel_context.Context]", otel_context.Context]


def _attach(ctx: otel_context.Context) -> _Token:
    return otel_context.attach(ctx), ctx


def _detach(token: _Token) -> None:
    """Restore the context from before the span, unless the stream's end runs in another task
    (a finalizer): there nothing of ours is current, and there is nothing to restore."""
    attached, ctx = token
    if otel_context.get_current() is ctx:
        otel_context.detach(attached)


# -- client side ------------------------------------------------------------------------------


class ClientTracing(ClientMiddleware):
    """A CLIENT span per attempt, child of the current span (the handler's, inside a handler);
    its context goes out in the call's metadata. The node and transport are known once the
    attempt has been routed, so they are recorded when it ends."""

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = _tracer(tracer_provider)
        self._shapes: dict[tuple[str, str], _Shape] = {}

    async def unary(self, call: ClientCall, call_next: UnaryNext[ClientCall]) -> bytes:
        span = self._start(call)
        try:
            reply = await call_next(call)
        except BaseException as exc:
            _ended(
                span, code_of(exc), exc, is_error=True, transport=call.transport, extra=_routed(span, call)
            )
            raise
        _ended(span, 200, None, is_error=False, transport=call.transport, extra=_routed(span, call))
        return reply

    async def stream(self, call: ClientCall, call_next: StreamNext[ClientCall]) -> AsyncIterator[bytes]:
        span = self._start(call)
        replies, received = call_next(call), 0
        try:
            async for reply in replies:
                received += 1
                yield reply
        except GeneratorExit as exc:  # the caller stopped reading early: its choice, not an error
            where = _routed(span, call)
            _ended(span, 499, exc, is_error=False, transport=call.transport, replies=received, extra=where)
            raise
        except BaseException as exc:
            where = _routed(span, call)
            _ended(
                span,
                code_of(exc),
                exc,
                is_error=True,
                transport=call.transport,
                replies=received,
                extra=where,
            )
            raise
        else:
            where = _routed(span, call)
            _ended(span, 200, None, is_error=False, transport=call.transport, replies=received, extra=where)
        finally:
            close = getattr(replies, "aclose", None)
            if close is not None:
                await close()

    def _start(self, call: ClientCall) -> Span:
        key = (call.service, call.endpoint)
        shape = self._shapes.get(key) or self._shape(key, call.path)
        parent = None
        if "traceparent" in call.metadata and not trace.get_current_span().get_span_context().is_valid:
            # outside any span the caller may hand a trace context of its own (`microweave call -m
            # traceparent=...`, a gateway passing one on): continue that trace, not a new one
            parent = extract(_screened(call.metadata))
        span = self.tracer.start_span(
            shape.name, context=parent, kind=SpanKind.CLIENT, attributes=shape.attributes
        )
        inject(call.metadata, context=trace.set_span_in_context(span))
        return span

    def _shape(self, key: tuple[str, str], path: str) -> _Shape:
        service, endpoint = key
        rpc_service, method = _rpc_names(path)
        shape = _Shape(
            f"{service}/{endpoint.lstrip('/')}", {"rpc.service": rpc_service, "rpc.method": method}
        )
        if len(self._shapes) < MAX_CLIENT_SHAPES:
            self._shapes[key] = shape
        return shape


def _routed(span: Span, call: ClientCall) -> dict[str, Any] | None:
    """Where the attempt went (known once it was routed): transport, node address and port."""
    transport = call.transport
    if not transport or not span.is_recording():
        return None
    out = _transport_attributes(transport)
    node = call.node
    if node is not None and transport != "local":
        address = node.address if transport == "grpc" else node.metadata.get(f"{transport}_address")
        host, _, port = (address or "").rpartition(":")
        if host and port.isdigit():
            out["server.address"] = host.strip("[]")
            out["server.port"] = int(port)
    return out


# -- events -----------------------------------------------------------------------------------


class ProducerTracing:
    """A PRODUCER span per publish, its context in the event's headers (the subscriber's CONSUMER
    span is its child); current while the broker sends, so direct://'s delivery calls nest in it."""

    def __init__(self, *, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = _tracer(tracer_provider)

    async def publish(
        self,
        scheme: str,
        topic: str,
        message_id: str,
        headers: dict[str, str],
        send: Callable[[], Awaitable[None]],
    ) -> None:
        """Run `send` (the broker's own publish of `headers` and the body) inside the span."""
        attributes: dict[str, Any] = {
            "messaging.system": scheme,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": topic,
            "messaging.message.id": message_id,
        }
        span = self.tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes)
        ctx = trace.set_span_in_context(span)
        inject(headers, context=ctx)
        token = _attach(ctx)
        try:
            await send()
        except BaseException as exc:
            _ended(span, code_of(exc), exc, is_error=True, transport=scheme)
            raise
        finally:
            _detach(token)
        _ended(span, 200, None, is_error=False, transport=scheme)
