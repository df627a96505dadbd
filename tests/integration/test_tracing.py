"""OpenTelemetry tracing in one process: real services on loopback over every transport a client
can pick (in-process, tcp, gRPC), a real SDK TracerProvider set globally (as an application
does), spans collected by the SDK's in-memory exporter.

A caller (`tester`) calls `relay`, whose handler calls `greeter`: four spans, one trace, each
the child of the one before. The three-process chain exporting over OTLP is in
test_tracing_processes.py; into a real collector, test_tracing_otlp_collector.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Iterator, Sequence

import msgspec
import pytest
from helpers import ServiceProcesses, async_wait_until
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tracing_kit import (
    OtlpReceiver,
    assert_chain,
    global_tracer_provider,
    run_chain,
    tracing_env,
    wait_for_chain,
)

from microweave import BadRequest, Client, Context, InternalServerError, MessageContext, Service
from microweave.broker.memory import MemoryBroker
from microweave.middleware.tracing import ClientTracing, ServerTracing

TRANSPORTS = ["local", "tcp", "grpc"]


class Msg(msgspec.Struct):
    text: str = ""
    endpoint: str = "Greeter.SayHello"


class Seen(msgspec.Struct):
    traceparent: str = ""
    baggage: str = ""
    tenant: str = ""


class Greeter:
    async def say_hello(self, req: Msg) -> Msg:
        return Msg(text=f"Hello {req.text}")

    async def count(self, req: Msg) -> AsyncIterator[Msg]:
        for letter in req.text:
            yield Msg(text=letter)
            await asyncio.sleep(0.01)

    async def boom(self, req: Msg) -> Msg:
        raise ValueError("the database password is hunter2")

    async def refuse(self, req: Msg) -> Msg:
        raise BadRequest("text must not be empty")

    async def seen(self, req: Msg, ctx: Context) -> Seen:
        return Seen(
            traceparent=ctx.metadata.get("traceparent", ""),
            baggage=ctx.metadata.get("baggage", ""),
            tenant=str(baggage.get_baggage("tenant") or ""),
        )


class Relay:
    """Served by `relay`: calls the greeter endpoint the request names, from inside a handler."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def hop(self, req: Msg) -> Seen:
        if req.endpoint == "Greeter.Seen":
            return await self.service.client.call("greeter", "Greeter.Seen", req, response=Seen)
        reply = await self.service.client.call("greeter", req.endpoint, req, response=Msg)
        return Seen(traceparent=reply.text)

    async def stream(self, req: Msg) -> AsyncIterator[Msg]:
        """A stream whose handler calls the greeter after its replies: inside the stream's span."""
        async for reply in self.service.client.stream("greeter", "Greeter.Count", req, response=Msg):
            yield reply
        yield await self.service.client.call("greeter", "Greeter.SayHello", req, response=Msg)


@dataclasses.dataclass
class World:
    client: Client
    relay: Service
    greeter: Service
    transport: str
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # its sampler: OTEL_TRACES_SAMPLER, else parent-based always-on
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with global_tracer_provider(provider):
        yield exporter
    provider.shutdown()


@pytest.fixture(params=TRANSPORTS)
async def world(
    request: pytest.FixtureRequest, registry_dir: object, exporter: InMemorySpanExporter
) -> AsyncIterator[World]:
    transport: str = request.param
    greeter = Service("greeter", drain_delay=0, grace=2)
    greeter.handler(Greeter)
    relay = Service("relay", drain_delay=0, grace=2)
    relay.handler(Relay(relay))
    async with (
        greeter,
        relay,
        Client(transports=(transport,), name="relay", node_id=relay.node_id, timeout=20) as relay_client,
        Client(transports=(transport,), name="tester", timeout=20) as client,
    ):
        relay.client = relay_client  # the hop travels over the transport under test too
        yield World(client, relay, greeter, transport, exporter)


def one(spans: Sequence[ReadableSpan], name: str, kind: SpanKind) -> ReadableSpan:
    found = [s for s in spans if s.name == name and s.kind == kind]
    assert len(found) == 1, (name, kind, [(s.name, s.kind) for s in spans])
    return found[0]


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None, f"{child.name} has no parent"
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent.span_id == parent.context.span_id, f"{child.name} is not a child of {parent.name}"


def chain(world: World, endpoint: str) -> list[ReadableSpan]:
    """tester -> relay -> greeter: the four spans, outermost first, each the child of the last."""
    spans = world.spans()
    out = [
        one(spans, "relay/Relay.Hop", SpanKind.CLIENT),
        one(spans, "relay/Relay.Hop", SpanKind.SERVER),
        one(spans, f"greeter/{endpoint}", SpanKind.CLIENT),
        one(spans, f"greeter/{endpoint}", SpanKind.SERVER),
    ]
    assert out[0].parent is None  # the tester made no span of its own: the client span is the root
    for parent, child in itertools.pairwise(out):
        assert_child(child, parent)
    return out


# -- calls ------------------------------------------------------------------------------------


async def test_a_call_chain_is_one_trace_of_client_and_server_spans(world: World) -> None:
    await world.client.call("relay", "Relay.Hop", Msg(text="x"))
    outer_client, relay_server, inner_client, greeter_server = chain(world, "Greeter.SayHello")

    for span in (outer_client, relay_server, inner_client, greeter_server):
        attributes = span.attributes or {}
        assert attributes["microweave.transport"] == world.transport
        assert attributes["rpc.system"] == ("grpc" if world.transport == "grpc" else "microweave")
        assert attributes["rpc.response.status_code"] == "200"
        assert span.status.status_code is StatusCode.UNSET
        if world.transport == "local":
            assert "network.transport" not in attributes
        else:
            assert attributes["network.transport"] == "tcp"
    assert greeter_server.attributes is not None and inner_client.attributes is not None
    assert greeter_server.attributes["rpc.service"] == "greeter.Greeter"
    assert greeter_server.attributes["rpc.method"] == "SayHello"
    assert inner_client.attributes["rpc.service"] == "greeter.Greeter"
    if world.transport == "local":
        assert "server.address" not in inner_client.attributes  # nothing on the network
    else:
        where = world.greeter.addresses[world.transport]
        assert (
            f"{inner_client.attributes['server.address']}:{inner_client.attributes['server.port']}" == where
        )
    if world.transport == "grpc":
        assert greeter_server.attributes["rpc.grpc.status_code"] == 0


async def test_a_trace_context_the_caller_hands_in_is_continued_not_replaced(world: World) -> None:
    """Outside any span, a `traceparent` in the call's own metadata (a gateway passing one on,
    `microweave call -m traceparent=...`) is the parent of the client span."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await world.client.call(
        "relay", "Relay.Hop", Msg(text="x"), metadata={"traceparent": f"00-{trace_id}-{parent_id}-01"}
    )
    spans = world.spans()
    outer = one(spans, "relay/Relay.Hop", SpanKind.CLIENT)
    assert outer.parent is not None and f"{outer.parent.span_id:016x}" == parent_id
    assert {f"{s.context.trace_id:032x}" for s in spans} == {trace_id}


async def test_a_handler_raising_marks_the_spans_as_errors_with_the_code(world: World) -> None:
    with pytest.raises(InternalServerError) as info:
        await world.client.call("relay", "Relay.Hop", Msg(endpoint="Greeter.Boom"))
    assert "hunter2" not in str(info.value)  # the caller never sees the exception
    spans = chain(world, "Greeter.Boom")
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR, span.name
        assert span.attributes is not None
        assert span.attributes["rpc.response.status_code"] == "500"
        assert span.attributes["error.type"] == "500"
        if world.transport == "grpc":
            assert span.attributes["rpc.grpc.status_code"] == 13  # INTERNAL
    # the node's own span keeps what the handler raised, for whoever reads the node's traces
    [event] = [e for e in spans[3].events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert "hunter2" in str(event.attributes["exception.message"])
    for span in spans[:3]:  # ... and no other span has it
        assert all("hunter2" not in str(e.attributes) for e in span.events)
        assert "hunter2" not in str(span.status.description)


async def test_a_4xx_is_an_error_of_the_client_span_not_of_the_server_span(world: World) -> None:
    with pytest.raises(BadRequest):
        await world.client.call("greeter", "Greeter.Refuse", Msg())
    spans = world.spans()
    client = one(spans, "greeter/Greeter.Refuse", SpanKind.CLIENT)
    server = one(spans, "greeter/Greeter.Refuse", SpanKind.SERVER)
    assert_child(server, client)
    assert client.status.status_code is StatusCode.ERROR
    assert server.status.status_code is StatusCode.UNSET  # the caller's mistake, not the node's
    for span in (client, server):
        assert span.attributes is not None and span.attributes["rpc.response.status_code"] == "400"


async def test_an_unknown_endpoint_is_named_by_the_service_not_by_the_caller_s_path(world: World) -> None:
    with pytest.raises(Exception):  # noqa: B017 - 404 or 501: the span is what is checked
        await world.client.call("greeter", "Greeter.NoSuchThing", Msg())
    server = one(world.spans(), "greeter/unknown", SpanKind.SERVER)
    assert "NoSuchThing" not in str(server.attributes)


async def test_a_stream_is_one_span_covering_every_reply_and_what_its_handler_did(world: World) -> None:
    stream = world.client.stream("relay", "Relay.Stream", Msg(text="abc"), response=Msg)
    replies = [r.text async for r in stream]
    assert replies == ["a", "b", "c", "Hello abc"]
    spans = world.spans()
    outer_client = one(spans, "relay/Relay.Stream", SpanKind.CLIENT)
    relay_server = one(spans, "relay/Relay.Stream", SpanKind.SERVER)
    assert_child(relay_server, outer_client)
    inner_stream = one(spans, "greeter/Greeter.Count", SpanKind.CLIENT)
    after_the_stream = one(spans, "greeter/Greeter.SayHello", SpanKind.CLIENT)
    for inner in (inner_stream, after_the_stream):
        assert_child(inner, relay_server)  # the span was current the whole stream long
        assert relay_server.start_time is not None and inner.end_time is not None
        assert relay_server.end_time is not None and inner.start_time is not None
        assert relay_server.start_time <= inner.start_time and inner.end_time <= relay_server.end_time
    assert_child(one(spans, "greeter/Greeter.Count", SpanKind.SERVER), inner_stream)
    for span in (outer_client, relay_server):
        assert span.attributes is not None and span.attributes["microweave.stream.replies"] == 4
    assert inner_stream.attributes is not None and inner_stream.attributes["microweave.stream.replies"] == 3


# -- context ----------------------------------------------------------------------------------


async def test_baggage_and_the_trace_context_reach_the_last_hop(world: World) -> None:
    tracer = trace.get_tracer("test")
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span("job") as job:
            seen = await world.client.call("relay", "Relay.Hop", Msg(endpoint="Greeter.Seen"), response=Seen)
    finally:
        otel_context.detach(token)
    assert seen.tenant == "acme"  # current in the greeter's handler, two hops away
    assert "tenant=acme" in seen.baggage
    outer_client, _, inner_client, _ = chain_under(world, job)
    version, trace_id, parent_id, flags = seen.traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == job.get_span_context().trace_id
    assert int(parent_id, 16) == inner_client.context.span_id  # the greeter's caller: relay's client span
    assert outer_client.parent is not None and outer_client.parent.span_id == job.get_span_context().span_id


def chain_under(world: World, root: trace.Span) -> list[ReadableSpan]:
    spans = world.spans()
    outer_client = one(spans, "relay/Relay.Hop", SpanKind.CLIENT)
    assert outer_client.parent is not None and outer_client.parent.span_id == root.get_span_context().span_id
    rest = [
        one(spans, "relay/Relay.Hop", SpanKind.SERVER),
        one(spans, "greeter/Greeter.Seen", SpanKind.CLIENT),
        one(spans, "greeter/Greeter.Seen", SpanKind.SERVER),
    ]
    for parent, child in itertools.pairwise([outer_client, *rest]):
        assert_child(child, parent)
    return [outer_client, *rest]


async def test_sampled_out_traces_export_nothing_and_still_carry_the_context(
    registry_dir: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # reads OTEL_TRACES_SAMPLER, as the SDK configured here does
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with global_tracer_provider(provider):
        greeter = Service("greeter", drain_delay=0, grace=2)
        greeter.handler(Greeter)
        relay = Service("relay", drain_delay=0, grace=2)
        relay.handler(Relay(relay))
        async with greeter, relay, Client(transports=("tcp",), timeout=20) as client:
            relay.client = Client(transports=("tcp",), name="relay", timeout=20)
            try:
                with trace.get_tracer("test").start_as_current_span("job") as job:
                    seen = await client.call(
                        "relay", "Relay.Hop", Msg(endpoint="Greeter.Seen"), response=Seen
                    )
            finally:
                await relay.client.aclose()
    provider.shutdown()
    assert not job.is_recording()
    assert exporter.get_finished_spans() == ()
    _, trace_id, _, flags = seen.traceparent.split("-")
    assert int(trace_id, 16) == job.get_span_context().trace_id != 0  # one trace id end to end
    assert not int(flags, 16) & 1  # "not sampled" travels too: no hop records it


# -- events -----------------------------------------------------------------------------------


class Order(msgspec.Struct):
    n: int


@pytest.mark.parametrize("broker_kind", ["memory", "direct", "nats"])
async def test_an_event_is_a_producer_span_and_a_consumer_span_in_one_trace(
    request: pytest.FixtureRequest, registry_dir: object, exporter: InMemorySpanExporter, broker_kind: str
) -> None:
    """The context travels in the event's headers: through a real NATS server's envelope too."""
    broker: MemoryBroker | str | None = None  # direct://, the default
    if broker_kind == "memory":
        broker = MemoryBroker()
    elif broker_kind == "nats":
        broker = request.getfixturevalue("nats_engine").url
    handled: asyncio.Queue[str] = asyncio.Queue()
    shop = Service("shop", drain_delay=0, grace=2, broker=broker)
    greeter = Service("greeter", drain_delay=0, grace=2)
    greeter.handler(Greeter)

    @shop.subscriber("orders.created", queue="shop")
    async def on_order(order: Order, ctx: MessageContext) -> None:
        # a call made by a subscriber is part of the event's trace
        await shop.client.call("greeter", "Greeter.SayHello", Msg(text=str(order.n)))
        await handled.put(ctx.metadata.get("traceparent", ""))

    async with greeter, shop, Client(name="till", broker=broker, timeout=20) as client:
        with trace.get_tracer("test").start_as_current_span("checkout") as checkout:
            message_id = await client.publish("orders.created", Order(n=7))
        traceparent = await asyncio.wait_for(handled.get(), 30)

    spans = exporter.get_finished_spans()
    producer = one(spans, "send orders.created", SpanKind.PRODUCER)
    consumer = one(spans, "process orders.created", SpanKind.CONSUMER)
    assert producer.parent is not None and producer.parent.span_id == checkout.get_span_context().span_id
    assert_child(consumer, producer)  # the event's headers carried the producer's context
    assert int(traceparent.split("-")[2], 16) == producer.context.span_id
    assert_child(one(spans, "greeter/Greeter.SayHello", SpanKind.CLIENT), consumer)
    assert producer.attributes is not None and consumer.attributes is not None
    for span, operation in ((producer, "send"), (consumer, "process")):
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == broker_kind
        assert span.attributes["messaging.destination.name"] == "orders.created"
        assert span.attributes["messaging.operation.type"] == operation
        assert span.attributes["messaging.message.id"] == message_id
    assert consumer.attributes["messaging.consumer.group.name"] == "shop"


async def test_a_failing_subscriber_marks_its_consumer_span(
    registry_dir: object, exporter: InMemorySpanExporter
) -> None:
    broker = MemoryBroker()
    attempts: asyncio.Queue[int] = asyncio.Queue()
    shop = Service("shop", drain_delay=0, grace=2, broker=broker)

    @shop.subscriber("orders.created")
    async def on_order(order: Order) -> None:
        await attempts.put(order.n)
        raise RuntimeError("stock service down")

    async with shop, Client(name="till", broker=broker, timeout=20) as client:
        await client.publish("orders.created", Order(n=1))
        await asyncio.wait_for(attempts.get(), 30)
        for _ in range(100):  # the span ends just after the handler raised
            if any(s.kind == SpanKind.CONSUMER for s in exporter.get_finished_spans()):
                break
            await asyncio.sleep(0.05)
    consumers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert consumers, [s.name for s in exporter.get_finished_spans()]
    assert consumers[0].status.status_code is StatusCode.ERROR
    assert consumers[0].attributes is not None and consumers[0].attributes["error.type"] == "500"


# -- by hand ----------------------------------------------------------------------------------


async def test_the_middlewares_trace_into_a_provider_given_by_hand(registry_dir: object) -> None:
    """Without a global provider nothing traces by itself; the middlewares take one explicitly."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    greeter = Service("greeter", drain_delay=0, grace=2, middleware=[ServerTracing(tracer_provider=provider)])
    greeter.handler(Greeter)
    async with (
        greeter,
        Client(
            transports=("tcp",), timeout=20, middleware=[ClientTracing(tracer_provider=provider)]
        ) as client,
    ):
        await client.call("greeter", "Greeter.SayHello", Msg(text="x"))
    provider.shutdown()
    spans = exporter.get_finished_spans()
    assert_child(
        one(spans, "greeter/Greeter.SayHello", SpanKind.SERVER),
        one(spans, "greeter/Greeter.SayHello", SpanKind.CLIENT),
    )


# -- the must-show: three processes, one trace, exported over OTLP ------------------------------


async def test_a_three_process_chain_is_one_trace_exported_over_otlp(processes: ServiceProcesses) -> None:
    """A -> B (tcp) -> C (gRPC), real processes told to trace only by OTEL_EXPORTER_OTLP_ENDPOINT;
    C fails one of the two calls. Every span arrives over OTLP/HTTP at a receiver here, and
    together they are one trace with the right parents, the failed call an error at every hop."""
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        run = await run_chain(processes, tracing_env(receiver.endpoint))
        spans = await wait_for_chain(lambda: receiver.spans, run.trace_id, what="the chain's spans over OTLP")
    finally:
        await receiver.stop()
    assert_chain(spans, run)
    c_server = [s for s in spans if s.service == "chain-c" and s.status == "error"]
    assert len(c_server) == 1 and c_server[0].attributes["error.type"] == "500"


async def test_an_untraced_node_in_the_middle_passes_the_context_on(registry_dir: object) -> None:
    """tester (traced) -> relay (no tracing at all) -> greeter (traced): the greeter's span is the
    child of the tester's, because the relay carries the metadata its call came with on."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    greeter = Service("greeter", drain_delay=0, grace=2, middleware=[ServerTracing(tracer_provider=provider)])
    greeter.handler(Greeter)
    relay = Service("relay", drain_delay=0, grace=2)
    relay.handler(Relay(relay))
    tracing = ClientTracing(tracer_provider=provider)
    async with greeter, relay, Client(transports=("tcp",), timeout=20, middleware=[tracing]) as client:
        relay.client = Client(transports=("tcp",), name="relay", timeout=20)
        try:
            seen = await client.call("relay", "Relay.Hop", Msg(endpoint="Greeter.Seen"), response=Seen)
        finally:
            await relay.client.aclose()
    provider.shutdown()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans if s.name.startswith("relay/")] == ["relay/Relay.Hop"]  # the client's only
    tester = one(spans, "relay/Relay.Hop", SpanKind.CLIENT)
    assert_child(one(spans, "greeter/Greeter.Seen", SpanKind.SERVER), tester)
    assert int(seen.traceparent.split("-")[2], 16) == tester.context.span_id


async def test_a_service_flushes_its_spans_when_it_stops(processes: ServiceProcesses) -> None:
    """Spans are batched (here: every ten minutes); stopping a Service sends them at once."""
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        env = {**tracing_env(receiver.endpoint), "OTEL_BSP_SCHEDULE_DELAY": "600000"}
        process = processes.start("traced_stop.py", name="lingering", env=env, wait=False)

        async def exported() -> list[str]:
            names = sorted(f"{s.kind} {s.name}" for s in receiver.spans)
            return names if len(names) >= 2 else []

        spans = await async_wait_until(exported, timeout=60, what="the spans of the stopped service")

        # the spans may land a moment before the script prints "stopped": wait for both, then
        # check the process still lives (the spans came from stop's flush, not the exit's)
        async def printed_stopped() -> bool:
            return "stopped" in process.output()

        await async_wait_until(printed_stopped, timeout=30, what="the script's 'stopped'")
        assert process.alive()
    finally:
        await receiver.stop()
    assert spans == ["client lingering/Echo.Ping", "server lingering/Echo.Ping"]
