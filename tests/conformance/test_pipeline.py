"""One pipeline, every transport: the same call gets the same answer over gRPC, tcp and
in-process, whether a typed handler or a grpcio servicer serves it (issue 6, "Deliver" 4).

Every test runs for each transport and each flavour of endpoint (see `pipeline_kit`).
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import msgspec
import pytest
from pipeline_kit import (
    FLAVOURS,
    LIMIT,
    OF_KIND,
    SECRET,
    Api,
    Book,
    compile_proto,
    make_service,
)

from microweave import (
    BadRequest,
    Client,
    ClientCall,
    ClientMiddleware,
    Context,
    Forbidden,
    InternalServerError,
    MicroError,
    NotDelivered,
    NotImplementedError_,
    Selector,
    ServerMiddleware,
    Service,
    Timeout,
    TooManyRequests,
    Unavailable,
)
from microweave.lifecycle import Listeners
from microweave.middleware import StreamNext, UnaryNext
from microweave.registry import Node, Registry
from microweave.registry import Service as ServiceRecord
from microweave.server import Kind
from microweave.server.call import Call
from microweave.testing import capture_logs

TRANSPORTS = ("grpc", "tcp", "local")
CASES = [(t, f) for t in TRANSPORTS for f in FLAVOURS]
IDS = [f"{t}-{f}" for t, f in CASES]


@pytest.fixture(scope="session")
def pb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    out = tmp_path_factory.mktemp("mwpipe")
    modules = compile_proto(out)
    yield modules
    sys_path_remove(out)


def sys_path_remove(out: Path) -> None:
    import sys

    if str(out) in sys.path:
        sys.path.remove(str(out))


def memory() -> str:
    return f"memory://pipeline-{uuid.uuid4().hex}"


@dataclass
class World:
    api: Api
    book: Book
    service: Service
    transport: str
    flavour: str
    registry: str
    pb: tuple[ModuleType, ModuleType]

    @property
    def name(self) -> str:
        return self.service.name

    async def still_serving(self) -> None:
        assert await self.api.unary("Echo", "again") == ("again", 5)


@pytest.fixture(params=CASES, ids=IDS)
async def world(request: pytest.FixtureRequest, pb: tuple[ModuleType, ModuleType]) -> AsyncIterator[World]:
    transport, flavour = request.param
    registry, book = memory(), Book()
    service = make_service(flavour, pb, book, registry)
    async with service, Client(registry=registry, transports=(transport,), timeout=20) as client:
        yield World(
            Api(client, service.name, flavour, pb[0]), book, service, transport, flavour, registry, pb
        )


def secret_free(err: MicroError) -> None:
    """What a caller may never see: a traceback, a file path, the text of the exception."""
    for said in (err.detail, str(err)):
        for leak in ("Traceback", ".py", "/srv/", "hunter2", "ValueError", "SystemExit", "KeyboardInterrupt"):
            assert leak not in said, f"{leak!r} reached the caller: {said!r}"


# -- 1. wrong call kind ---------------------------------------------------------------------------


async def test_wrong_call_kind_is_501_everywhere_and_never_hangs(world: World) -> None:
    """Each endpoint called as each other kind: 501 from the called service, on gRPC too
    (whose wire does not say the kind: the client knows it from the registry record)."""
    for real, method in OF_KIND.items():
        for called in Kind:
            if called is real:
                continue
            with pytest.raises(NotImplementedError_) as info:
                # generous: the assertion is the error, not the time; a hang fails here
                await asyncio.wait_for(world.api.as_kind(called, method), 15)
            err = info.value
            assert err.code == 501, (real, called, err)
            assert err.id == world.name, (real, called, err)
            assert "called as" in err.detail, (real, called, err)
    for kind, method in OF_KIND.items():  # and the right kind still works
        assert await world.api.as_kind(kind, method)
    await world.still_serving()


# -- 2. oversized request and reply --------------------------------------------------------------


async def test_oversized_request_is_429_everywhere(world: World) -> None:
    with pytest.raises(TooManyRequests) as info:
        await world.api.unary("Echo", "x" * (LIMIT + 1))
    assert info.value.code == 429
    with pytest.raises(TooManyRequests):
        await world.api.stream("Join", Kind.CLIENT_STREAM, requests=[("a", 0), ("x" * (LIMIT + 1), 1)])
    await world.still_serving()


async def test_oversized_reply_is_429_everywhere(world: World) -> None:
    with pytest.raises(TooManyRequests) as info:
        await world.api.unary("Big", n=LIMIT + 1)
    assert info.value.code == 429 and info.value.id == world.name
    got: list[tuple[str, int]] = []
    with pytest.raises(TooManyRequests) as info:
        async for reply in world.api.client.stream_raw(
            world.name, world.api.endpoint("Bigs"), Kind.SERVER_STREAM, world.api.encode(n=LIMIT + 1),
            content_type=world.api.content_type,
        ):  # fmt: skip
            got.append(world.api.decode(reply))
    assert got == [("small", 0)] and info.value.id == world.name
    await world.still_serving()


# -- 3. deadline and cancellation -----------------------------------------------------------------


async def test_timeout_is_the_same_error_everywhere(world: World) -> None:
    with pytest.raises(Timeout) as info:
        await world.api.unary("Slow", n=30_000, timeout=0.3)
    err = info.value
    assert (type(err), err.code, err.id) == (Timeout, 408, world.name)
    await asyncio.wait_for(world.book.cancelled.wait(), 10)  # the handler was stopped too
    await world.still_serving()


async def test_stream_timeout_is_the_same_error_everywhere(world: World) -> None:
    with pytest.raises(Timeout) as info:
        await world.api.stream("Ticks", Kind.SERVER_STREAM, n=100, timeout=0.3)
    assert (type(info.value), info.value.id) == (Timeout, world.name)


async def test_caller_cancellation_reaches_the_handler(world: World) -> None:
    call = asyncio.ensure_future(world.api.unary("Slow", n=30_000))
    await asyncio.wait_for(world.book.started.wait(), 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(world.book.cancelled.wait(), 10)
    await world.still_serving()


# -- 8. no reply carries a traceback, a path or an exception's text -------------------------------


async def test_no_error_leaks_and_500s_are_logged_with_their_correlation_id(world: World) -> None:
    api = world.api
    modes = ["value", "runtime", "exit", "interrupt"]
    with capture_logs("WARNING") as logs:
        for mode in modes:
            with pytest.raises(InternalServerError) as info:
                await api.unary("Fail", mode)
            err = info.value
            secret_free(err)
            assert err.id == world.name and "correlation id" in err.detail
            correlation = err.detail.rsplit(" ", 1)[-1]
            [entry] = [e for e in logs if e.get("correlation_id") == correlation]
            assert "Traceback" in entry["exception"] and SECRET in entry["exception"], mode
            await world.still_serving()  # after SystemExit and KeyboardInterrupt too
    bad_body = b"{not json" if api.typed else b"\xff\xff\xff"
    with pytest.raises(BadRequest) as bad:
        await api.unary("Echo", body=bad_body)
    secret_free(bad.value)
    with pytest.raises(NotImplementedError_) as unknown:
        await api.client.call_raw(
            world.name, api.endpoint("Nope"), api.encode(), content_type=api.content_type
        )
    secret_free(unknown.value)
    assert unknown.value.id == world.name
    if not api.typed:  # a servicer's abort is its answer: code and detail as it said them
        with pytest.raises(Forbidden) as aborted:
            await api.unary("Fail", "abort")
        assert aborted.value.detail == "not for you" and aborted.value.id == world.name
    await world.still_serving()


async def test_current_context_is_set_in_every_handler(world: World) -> None:
    text, _ = await world.api.unary("Where")
    assert text == ("Pipe.Where" if world.api.typed else "/mwpipe.Pipe/Where")


# -- 9. blocking code runs off the event loop -----------------------------------------------------


async def _echo_latency(api: Api, calls: int = 5) -> float:
    started = time.perf_counter()
    for i in range(calls):
        assert await api.unary("Echo", str(i)) == (str(i), 1)
    return time.perf_counter() - started


async def test_sync_handler_does_not_stall_the_loop(world: World) -> None:
    baseline = await _echo_latency(world.api)
    started = time.perf_counter()
    blocked = asyncio.ensure_future(world.api.unary("Block", n=1000))
    assert await asyncio.to_thread(world.book.blocking.wait, 10)
    during = await _echo_latency(world.api)
    await blocked
    block = time.perf_counter() - started
    # stalled, the echoes would wait for the whole block; they take about as long as before it
    assert during < block / 4, (during, block, baseline)


async def test_sync_generator_servicer_does_not_stall_the_loop(world: World) -> None:
    """`Ticks` blocks 0.1 s per item (a sync generator in the servicer, async in the typed)."""
    started = time.perf_counter()
    ticking = asyncio.ensure_future(world.api.stream("Ticks", Kind.SERVER_STREAM, n=10))
    assert await asyncio.to_thread(world.book.blocking.wait, 10)
    during = await _echo_latency(world.api)
    assert len(await ticking) == 10
    ticks = time.perf_counter() - started
    assert during < ticks / 4, (during, ticks)


# -- 11. middleware sees every call kind, on both sides, in the documented order ------------------


class Recording(ServerMiddleware):
    def __init__(self, name: str, seen: list[tuple[str, str, Kind, str]]) -> None:
        self.name, self.seen = name, seen

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        self.seen.append((self.name, "in", call.kind, call.transport))
        try:
            return await call_next(call)
        finally:
            self.seen.append((self.name, "out", call.kind, call.transport))

    async def stream(self, call: Call, call_next: StreamNext[Call]) -> AsyncIterator[bytes]:
        self.seen.append((self.name, "in", call.kind, call.transport))
        try:
            async for reply in call_next(call):
                yield reply
        finally:
            self.seen.append((self.name, "out", call.kind, call.transport))


class ClientRecording(ClientMiddleware):
    def __init__(self, name: str, seen: list[tuple[str, str, Kind, str]]) -> None:
        self.name, self.seen = name, seen

    async def unary(self, call: ClientCall, call_next: UnaryNext[ClientCall]) -> bytes:
        self.seen.append((self.name, "in", call.kind, call.path))
        try:
            return await call_next(call)
        finally:
            self.seen.append((self.name, "out", call.kind, call.transport))

    async def stream(self, call: ClientCall, call_next: StreamNext[ClientCall]) -> AsyncIterator[bytes]:
        self.seen.append((self.name, "in", call.kind, call.path))
        try:
            async for reply in call_next(call):
                yield reply
        finally:
            self.seen.append((self.name, "out", call.kind, call.transport))


@pytest.mark.parametrize(("transport", "flavour"), CASES, ids=IDS)
async def test_middleware_sees_every_call_kind_on_both_sides(
    transport: str, flavour: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    registry, book = memory(), Book()
    served: list[tuple[str, str, Kind, str]] = []
    sent: list[tuple[str, str, Kind, str]] = []
    service = make_service(
        flavour, pb, book, registry, middleware=[Recording("s1", served), Recording("s2", served)]
    )
    client = Client(
        registry=registry,
        transports=(transport,),
        middleware=[ClientRecording("c1", sent), ClientRecording("c2", sent)],
    )
    async with service, client:
        api = Api(client, service.name, flavour, pb[0])
        for kind, method in OF_KIND.items():
            served.clear()
            sent.clear()
            assert await api.as_kind(kind, method)
            # first in the list is outermost, on both sides
            assert served == [
                ("s1", "in", kind, transport), ("s2", "in", kind, transport),
                ("s2", "out", kind, transport), ("s1", "out", kind, transport),
            ], kind  # fmt: skip
            path = api.endpoint(method) if not api.typed else f"/{service.name}.{api.endpoint(method)}"
            path = path.replace(".Pipe.", ".Pipe/") if api.typed else path
            assert sent == [
                ("c1", "in", kind, path), ("c2", "in", kind, path),
                ("c2", "out", kind, transport), ("c1", "out", kind, transport),
            ], kind  # fmt: skip


# -- 13. timeouts at the API boundary -------------------------------------------------------------


async def test_huge_timeouts_mean_no_deadline(world: World) -> None:
    for timeout in (math.inf, 1e300, 1e10):
        _, left = await world.api.unary("Seen", timeout=timeout)
        assert left == -1, timeout  # the handler saw no deadline at all
    _, left = await world.api.unary("Seen", timeout=None)
    assert left == -1


async def test_bad_timeouts_are_refused_at_the_boundary(world: World) -> None:
    for timeout in (math.nan, 0, -1, "5"):
        with pytest.raises(ValueError, match=r"timeout must be .*seconds") as info:
            await world.api.unary("Echo", "x", timeout=timeout)
        assert repr(timeout) in str(info.value)
        with pytest.raises(ValueError, match=r"timeout must be .*seconds"):
            Client(registry=world.registry, timeout=timeout)  # type: ignore[arg-type]
    assert world.book.count("Echo") == 0  # refused before anything was sent


@pytest.mark.parametrize(("transport", "flavour"), CASES, ids=IDS)
async def test_no_deadline_lets_a_stream_outlive_the_default(
    transport: str, flavour: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    registry, book = memory(), Book()
    async with (
        make_service(flavour, pb, book, registry) as service,
        Client(registry=registry, transports=(transport,), timeout=0.5) as client,
    ):
        api = Api(client, service.name, flavour, pb[0])
        with pytest.raises(Timeout):  # the default deadline applies to streams too
            await api.stream("Ticks", Kind.SERVER_STREAM, n=15)
        started = time.perf_counter()
        ticks = await api.stream("Ticks", Kind.SERVER_STREAM, n=15, timeout=None)
        assert [n for _, n in ticks] == list(range(15))
        assert time.perf_counter() - started > client.timeout  # type: ignore[operator]


# -- 4. a handler raising Unavailable -------------------------------------------------------------


async def _nodes(
    flavour: str, pb: tuple[ModuleType, ModuleType], book: Book, registry: str, **options: Any
) -> list[Service]:
    nodes = [make_service(flavour, pb, book, registry, node=n, **options) for n in ("a", "b")]
    for node in nodes:
        await node.start()
    return nodes


@pytest.mark.parametrize(("transport", "flavour"), CASES, ids=IDS)
async def test_unavailable_from_a_handler_runs_once_and_ejects_no_node(
    transport: str, flavour: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    registry, book = memory(), Book()
    nodes = await _nodes(flavour, pb, book, registry)
    try:
        async with Client(registry=registry, transports=(transport,), timeout=20) as client:
            api = Api(client, nodes[0].name, flavour, pb[0])
            for i in range(1, 7):
                with pytest.raises(Unavailable) as info:
                    await api.unary("Down")
                assert not isinstance(info.value, NotDelivered) and info.value.remote
                assert info.value.detail == "down for maintenance" and info.value.id == nodes[0].name
                assert book.count("Down") == i  # once per call: never retried elsewhere
            assert client.selector._ejected == {}
            for i in range(40):
                await api.unary("Echo", str(i))
            assert set(book.by_node("Echo")) == {"a", "b"}, book.runs  # both kept serving
    finally:
        for node in nodes:
            await node.stop()


# -- 5. a call refused by a draining node is retried elsewhere ------------------------------------


class Prefer(Selector):
    """Picks `node` whenever the call has not tried it yet: makes the first attempt land there."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def select(self, name: str, services: list[ServiceRecord], filters: Any = (), exclude: Any = ()) -> Node:
        for record in services:
            for node in record.nodes:
                if node.id == self.node and node.id not in exclude:
                    return node
        return super().select(name, services, filters, exclude)


class Attempts(ClientMiddleware):
    """Records each attempt's node and how it ended (retries happen outside middleware)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def unary(self, call: ClientCall, call_next: UnaryNext[ClientCall]) -> bytes:
        try:
            reply = await call_next(call)
        except MicroError as exc:
            self.seen.append((call.node.id if call.node else "", type(exc).__name__))
            raise
        self.seen.append((call.node.id if call.node else "", "ok"))
        return reply


@pytest.mark.parametrize(("transport", "flavour"), CASES, ids=IDS)
async def test_call_refused_by_a_draining_node_is_retried_on_another(
    transport: str, flavour: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    registry, book = memory(), Book()
    nodes = await _nodes(flavour, pb, book, registry, grace=30)
    draining, other = nodes
    attempts = Attempts()
    try:
        async with Client(
            registry=registry,
            transports=(transport,),
            selector=Prefer(draining.node_id),
            middleware=[attempts],
        ) as client:
            api = Api(client, draining.name, flavour, pb[0])
            assert await api.unary("Echo", "warm") == ("warm", 4)  # a connection to the node is open
            holding = asyncio.ensure_future(api.unary("Slow", n=1500))  # keeps the node draining
            await asyncio.wait_for(book.started.wait(), 10)
            # the node stops listening, still registered (as in a caller's cache); the call
            # already running on it keeps it in its drain
            (listeners,) = [c for c in draining.components if isinstance(c, Listeners)]
            stopping = asyncio.ensure_future(listeners.stop())
            # calls racing the start of the drain: each is answered, and runs once, somewhere
            burst = [f"burst-{i}" for i in range(20)]
            assert await asyncio.gather(*(api.unary("Echo", t) for t in burst)) == [
                (t, len(t)) for t in burst
            ]
            assert book.count("Echo") == 1 + len(burst), book.runs
            await asyncio.sleep(0.1)
            attempts.seen.clear()
            ran_on_a = book.by_node("Echo").get("a", 0)
            assert await api.unary("Echo", "hello") == ("hello", 5)
            # refused by the draining node (never reached its handler), then sent to the other
            assert attempts.seen == [(draining.node_id, "NotDelivered"), (other.node_id, "ok")]
            assert book.by_node("Echo").get("a", 0) == ran_on_a  # ran once, on the other node
            assert await holding == ("a", 0)  # the drain let the running call finish
            await stopping
            assert client.selector._ejected.keys() <= {draining.node_id}
    finally:
        for node in nodes:
            await node.stop()


# -- 6. a call cancelled at the end of a node's grace ---------------------------------------------


@pytest.mark.parametrize(("transport", "flavour"), CASES)
async def test_call_cancelled_at_the_end_of_the_grace_is_reported_not_retried(
    transport: str, flavour: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    registry, book = memory(), Book()
    nodes = await _nodes(flavour, pb, book, registry, grace=0.5)
    try:
        async with Client(registry=registry, transports=(transport,), timeout=30) as client:
            api = Api(client, nodes[0].name, flavour, pb[0])
            with capture_logs("WARNING") as logs:
                call = asyncio.ensure_future(api.unary("Slow", n=20_000))
                await asyncio.wait_for(book.started.wait(), 10)
                ran_on = nodes[0] if book.nodes == ["a"] else nodes[1]
                await ran_on.stop()
                with pytest.raises(Unavailable) as info:
                    await asyncio.wait_for(call, 15)
            err = info.value
            assert type(err) is Unavailable and err.code == 503 and err.id == nodes[0].name, err
            assert "may have run" in err.detail and "cancelled" in err.detail
            assert "127.0.0.1:" not in err.detail
            assert book.count("Slow") == 1, book.runs  # never run again on the other node
            assert book.cancelled.is_set()
            said = [e["message"] for e in logs if e["logger"].startswith("microweave")]
            assert any("cancelled" in m and "Slow" in m and "may have run" in m for m in said), said
    finally:
        for node in nodes:
            await node.stop()


# -- 7 and 12. calls one hop further, over each transport -----------------------------------------


class HopRequest(msgspec.Struct):
    method: str = "Seen"
    text: str = ""


class HopReply(msgspec.Struct):
    text: str = ""
    n: int = 0
    left: int = 0  # milliseconds the relaying handler had left


Next = Callable[[HopRequest], Awaitable[tuple[str, int]]]


class Relay:
    """A service in the middle of a chain: passes the call on with its own client."""

    def __init__(self, book: Book, label: str, next_hop: Next) -> None:
        self.book, self.label, self.next_hop = book, label, next_hop

    async def hop(self, req: HopRequest, ctx: Context) -> HopReply:
        self.book.ran("Hop", self.label)
        left = ctx.time_remaining()
        text, n = await self.next_hop(req)
        return HopReply(text=text, n=n, left=-1 if left is None else int(left * 1000))


def relay(
    name: str, registry: str, transport: str, book: Book, label: str, next_hop: Callable[[Client], Next]
) -> Service:
    """A node of `name` whose handler calls on through `service.client`, over `transport`."""
    service = Service(name, registry=registry, drain_delay=0, grace=5)
    client = Client(registry=registry, transports=(transport,), name=name, node_id=service.node_id)
    service.client = client
    service.handler(Relay(book, label, next_hop(client)))
    return service


def to_pipe(flavour: str, pb2: ModuleType, service: str) -> Callable[[Client], Next]:
    def bind(client: Client) -> Next:
        api = Api(client, service, flavour, pb2)

        async def call(req: HopRequest) -> tuple[str, int]:
            # asks for far more time than its caller gave: the caller's deadline must win
            return await api.unary(req.method, req.text, timeout=60)

        return call

    return bind


def to_relay(service: str) -> Callable[[Client], Next]:
    def bind(client: Client) -> Next:
        async def call(req: HopRequest) -> tuple[str, int]:
            reply = await client.call(service, "Relay.Hop", req, response=HopReply, timeout=60)
            return reply.text, reply.n

        return call

    return bind


@pytest.mark.parametrize(("transport", "flavour"), CASES, ids=IDS)
async def test_a_hop_further_shrinks_the_deadline_and_carries_metadata(
    transport: str, flavour: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    registry, book = memory(), Book()
    inner = make_service(flavour, pb, book, registry)
    outer = relay("outer", registry, transport, book, "outer", to_pipe(flavour, pb[0], inner.name))
    try:
        async with inner, outer, Client(registry=registry, transports=(transport,)) as client:
            reply = await client.call(
                "outer", "Relay.Hop", HopRequest(), response=HopReply, timeout=5, metadata={"x-probe": "v"}
            )
        said = dict(pair.split("=", 1) for pair in reply.text.split(","))
        assert said["x-probe"] == "v"  # the caller's metadata went on with the next hop
        assert said["micro-from-service"] == "outer" and said["micro-from-id"] == outer.node_id
        # the inner call asked for 60 s but had only what the outer handler had left (gRPC
        # rounds its grpc-timeout up to its unit: a sliver of slack)
        assert 0 < reply.n <= reply.left + 100, reply
        assert reply.left <= 5000 + 100  # the outer call's 5 s, gRPC's rounding up aside
    finally:
        await outer.client.aclose()


def _dead_port() -> socket.socket:
    """A port bound but not listening: connecting is refused, and, held for the test, no
    service started meanwhile can be given it (a released port was, once: the "dead" leaf's
    calls then reached another node)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize("leaf_state", ["raises-unavailable", "unreachable"])
@pytest.mark.parametrize(("transport", "flavour"), CASES, ids=IDS)
async def test_unavailable_dependency_runs_each_handler_once_in_a_chain(
    transport: str, flavour: str, leaf_state: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    """caller -> top -> mid (two nodes) -> leaf, and the leaf cannot serve: each handler of the
    chain runs once per call, and the caller hears it from `top`, without any node's address."""
    registry, book = memory(), Book()
    leaf = make_service(flavour, pb, book, registry, name="leaf")
    services = [
        relay("top", registry, transport, book, "top", to_relay("mid")),
        relay("mid", registry, transport, book, "mid-1", to_pipe(flavour, pb[0], "leaf")),
        relay("mid", registry, transport, book, "mid-2", to_pipe(flavour, pb[0], "leaf")),
    ]
    dead = _dead_port()
    if leaf_state == "unreachable":  # registered, but nothing answers at its addresses
        address = f"127.0.0.1:{dead.getsockname()[1]}"
        node = Node(id=f"leaf-{uuid.uuid4()}", address=address, metadata={"tcp_address": address})
        await _registry(registry).register(ServiceRecord(name="leaf", version="1", nodes=[node]), ttl=60)
    else:
        services.append(leaf)
    try:
        for service in services:
            await service.start()
        async with Client(registry=registry, transports=(transport,), timeout=20) as client:
            for i in range(1, 4):
                with pytest.raises(Unavailable) as info:
                    await client.call("top", "Relay.Hop", HopRequest(method="Down"))
                err = info.value
                assert type(err) is Unavailable and err.code == 503, err
                assert err.id == "top" and err.remote, err
                assert "127.0.0.1:" not in err.detail and "127.0.0.1:" not in str(err), err
                assert book.by_node("Hop").get("top") == i, book.runs
                mids = book.by_node("Hop").get("mid-1", 0) + book.by_node("Hop").get("mid-2", 0)
                assert mids == i, book.runs
                assert book.count("Down") == (i if leaf_state == "raises-unavailable" else 0), book.runs
    finally:
        for service in reversed(services):
            await service.stop()
            await service.client.aclose()
        dead.close()


def _registry(url: str) -> Registry:
    from microweave._backends import load_registry

    return load_registry(url)


# -- 10. protobuf-typed handlers: the content type follows the codec ------------------------------


def proto_typed(pb2: ModuleType) -> object:
    """A typed handler whose request and response are protobuf messages, served as
    `mwpipe.Pipe` so the generated stub reaches it."""

    async def echo(self: object, req: Any) -> Any:
        return pb2.Msg(text=req.text[::-1], n=len(req.text))

    echo.__annotations__ = {"req": pb2.Msg, "return": pb2.Msg}
    return type("Pipe", (), {"echo": echo})()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_protobuf_typed_handler_is_called_by_a_grpcio_stub(
    transport: str, pb: tuple[ModuleType, ModuleType]
) -> None:
    pb2, pb2_grpc = pb
    registry = memory()
    service = Service("mwpipe", registry=registry, drain_delay=0, grace=5)
    service.handler(proto_typed(pb2))
    async with service, Client(registry=registry, transports=(transport,)) as client:
        # a generated stub over microweave's discovery channel (protobuf bodies)
        reply = await pb2_grpc.PipeStub(client.channel("mwpipe")).Echo(pb2.Msg(text="abc"))
        assert (reply.text, reply.n) == ("cba", 3)
        # and the same endpoint called with JSON bodies, the codec's other content type
        reply = await client.call("mwpipe", "Pipe.Echo", pb2.Msg(text="xy"), response=pb2.Msg)
        assert (reply.text, reply.n) == ("yx", 2)
        # a plain grpc.aio stub straight at the node: no content type said, protobuf assumed
        async with grpc.aio.insecure_channel(service.addresses["grpc"]) as channel:
            reply = await pb2_grpc.PipeStub(channel).Echo(pb2.Msg(text="plain"), timeout=10)
        assert (reply.text, reply.n) == ("nialp", 5)
