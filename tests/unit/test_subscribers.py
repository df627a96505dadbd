"""`@service.subscriber`: an event runs through the same server pipeline as a call.

memory:// carries the events here (in process, no engine); the conformance suite holds every
backend to the same broker contract, and each backend's integration tests repeat the typed
subscriber on its engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid

import msgspec
import pydantic
import pytest

from microweave import Call, Context, MessageContext, ServerMiddleware, Service
from microweave.broker import Event
from microweave.errors import ConfigurationError
from microweave.middleware import UnaryNext
from microweave.testing import capture_logs


class UserCreated(msgspec.Struct):
    id: int


@dataclasses.dataclass
class Shipped:
    order: str


class Paid(pydantic.BaseModel):
    amount: int


class Seen(ServerMiddleware):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def unary(self, call: Call, call_next: UnaryNext[Call]) -> bytes:
        self.calls.append((call.endpoint, call.transport, type(call.ctx).__name__))
        return await call_next(call)


def service(**kwargs: object) -> Service:
    unique = uuid.uuid4().hex
    return Service("shop", registry=f"memory://{unique}", broker=f"memory://{unique}", **kwargs)  # type: ignore[arg-type]


async def wait_for(items: list[object], count: int) -> None:
    async with asyncio.timeout(10):
        while len(items) < count:  # noqa: ASYNC110 - plain handlers fill the lists
            await asyncio.sleep(0.01)


async def test_typed_payloads_and_the_message_context() -> None:
    seen = Seen()
    svc = service(middleware=[seen])
    got: list[object] = []

    @svc.subscriber("user.created", queue="mailer")
    async def welcome(user: UserCreated, ctx: MessageContext) -> None:
        got.append(
            (user, ctx.topic, ctx.id, ctx.attempt, ctx.queue, ctx.endpoint, ctx.headers.get("X-Tenant"))
        )

    @svc.subscriber("order.shipped")
    def shipped(event: Shipped) -> None:  # sync subscribers run on the worker threads
        got.append(event)

    @svc.subscriber("order.paid")
    async def paid(event: Paid) -> None:
        got.append(event)

    @svc.subscriber("raw")
    async def raw(event: Event) -> None:
        got.append(event.body)

    async with svc:
        sent = await svc.client.publish("user.created", UserCreated(id=1), headers={"X-Tenant": "acme"})
        await svc.client.publish("order.shipped", Shipped(order="o-1"))
        await svc.client.publish("order.paid", Paid(amount=3))
        await svc.client.publish("raw", b"\x01\x02")
        await wait_for(got, 4)
    assert (UserCreated(id=1), "user.created", sent, 1, "mailer", "Subscriber.Welcome", "acme") in got
    assert Shipped(order="o-1") in got and Paid(amount=3) in got and b"\x01\x02" in got
    assert ("Subscriber.Welcome", "memory", "MessageContext") in seen.calls, "middleware sees events too"


async def test_the_record_lists_subscribers_as_go_micro_does() -> None:
    svc = service()

    @svc.subscriber("user.created", queue="mailer")
    async def welcome(user: UserCreated) -> None: ...

    async with svc:
        [endpoint] = svc.record().endpoints
    assert endpoint.name == "Subscriber.Welcome"
    assert endpoint.metadata == {"topic": "user.created", "subscriber": "true", "queue": "mailer"}
    assert endpoint.request is not None and endpoint.request.type == "UserCreated"


async def test_a_raising_subscriber_is_logged_with_a_correlation_id_and_the_next_event_flows() -> None:
    svc = service()
    got: list[int] = []

    @svc.subscriber("user.created")
    async def fragile(user: UserCreated) -> None:
        if user.id == 1:
            raise RuntimeError("secret detail")
        got.append(user.id)

    with capture_logs(logging.WARNING) as logs:
        async with svc:
            failed = await svc.client.publish("user.created", UserCreated(id=1))
            poison = await svc.client.publish("user.created", b'{"id": "not a number"}')
            await svc.client.publish("user.created", UserCreated(id=2))
            await wait_for(got, 1)  # type: ignore[arg-type]
    messages = [entry["message"] for entry in logs]
    assert got == [2]
    assert any(failed in m and "correlation id" in m for m in messages)
    assert any(poison in m and "does not decode" in m for m in messages)
    assert not any("secret detail" in m for m in messages if failed in m), (
        "the broker line has no exception text"
    )


async def test_manual_ack_through_the_context() -> None:
    svc = service()
    settled: list[str] = []

    @svc.subscriber("jobs", ack="manual")
    async def job(user: UserCreated, ctx: MessageContext) -> None:
        await ctx.ack()
        settled.append(ctx.event.settled)

    async with svc:
        await svc.client.publish("jobs", UserCreated(id=5))
        await wait_for(settled, 1)  # type: ignore[arg-type]
    assert settled == ["ack"]


async def test_a_call_made_by_a_subscriber_carries_the_trace_context_but_not_the_event_headers() -> None:
    ctx = MessageContext(
        Event(
            "t", b"{}", {"traceparent": "00-abc-def-01", "Micro-Id": "m1", "Micro-Topic": "t", "X-User": "u"}
        )
    )
    assert ctx.propagated_metadata() == {"traceparent": "00-abc-def-01", "x-user": "u"}
    assert isinstance(ctx, Context)


def test_bad_subscribers_are_refused_at_declaration() -> None:
    svc = service()
    with pytest.raises(TypeError, match="annotate"):

        @svc.subscriber("t")
        async def untyped(event) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(TypeError, match="MessageContext"):

        @svc.subscriber("t")
        async def wrong_ctx(event: UserCreated, ctx: int) -> None: ...

    @svc.subscriber("t")
    async def once(event: UserCreated) -> None: ...

    with pytest.raises(ValueError, match="twice"):
        svc.subscriber("t2")(once)


async def test_bad_subscription_options_fail_the_start_clearly() -> None:
    svc = service()

    @svc.subscriber("t", max_in_flight=0)
    async def handler(event: UserCreated) -> None: ...

    with pytest.raises(ConfigurationError, match="max_in_flight"):
        await svc.start()
    assert not svc.running


async def test_a_closed_broker_does_not_reconnect_behind_its_owner() -> None:
    from microweave import BrokerError
    from microweave._backends import load_broker

    broker = load_broker(f"memory://{uuid.uuid4().hex}")
    async with broker:
        await broker.publish("t", b"{}")
    with pytest.raises(BrokerError, match="closed"):
        await broker.publish("t", b"{}")
    with pytest.raises(BrokerError, match="closed"):
        await broker.subscribe("t", lambda event: asyncio.sleep(0))


async def test_handlers_cut_short_by_the_grace_are_logged_with_their_event_ids() -> None:
    svc = service(grace=0.3)
    started = asyncio.Event()

    @svc.subscriber("slow")
    async def slow(user: UserCreated) -> None:
        started.set()
        await asyncio.sleep(3600)

    with capture_logs(logging.WARNING, logger="microweave.broker") as logs:
        await svc.start()
        sent = await svc.client.publish("slow", UserCreated(id=1))
        await asyncio.wait_for(started.wait(), 10)
        await svc.stop()
    [line] = [e["message"] for e in logs if "grace" in e["message"]]
    assert sent in line and "lost" in line


async def test_content_type_goes_out_under_go_micros_exact_key_whatever_case_was_given() -> None:
    from microweave._backends import load_broker

    got: list[Event] = []

    async def keep(event: Event) -> None:
        got.append(event)

    async with load_broker(f"memory://{uuid.uuid4().hex}") as broker:
        await broker.subscribe("t", keep)
        await broker.publish("t", b"{}", headers={"content-type": "application/json", "X-A": "1"})
        await broker.publish("t", b"{}")
        await wait_for(got, 2)  # type: ignore[arg-type]
    first, second = got
    assert first.headers["Content-Type"] == "application/json" and "content-type" not in first.headers
    assert first.headers["X-A"] == "1" and len(first.id) == 32 and first.id != second.id
    assert set(second.headers) == {"Content-Type", "Micro-Id", "Micro-Topic"}
