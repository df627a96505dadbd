"""One suite, every transport: what a caller sees must not depend on the wire that carried it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from microweave import (
    BadRequest,
    Client,
    Context,
    InternalServerError,
    NotImplementedError_,
    Service,
    Timeout,
    current_context,
)
from microweave.server import Kind

TRANSPORTS = ["grpc", "tcp", "local"]


class Msg(msgspec.Struct):
    text: str
    n: int = 0


class Probe:
    """Handlers exercising every call kind and failure mode."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def echo(self, req: Msg, ctx: Context) -> Msg:
        for key, value in ctx.metadata.items():
            if key.startswith("x-"):
                ctx.set_response_metadata(key, value.upper())
        return Msg(text=req.text, n=len(req.text))

    async def seen(self, req: Msg, ctx: Context) -> Msg:
        """What the server saw of the call: metadata and time left."""
        left = ctx.time_remaining()
        return Msg(text=ctx.metadata.get("x-probe", ""), n=-1 if left is None else int(left * 1000))

    async def count(self, req: Msg) -> AsyncIterator[Msg]:
        for i in range(req.n):
            yield Msg(text=req.text, n=i)

    async def total(self, reqs: AsyncIterator[Msg]) -> Msg:
        texts = [r.text async for r in reqs]
        return Msg(text="".join(texts), n=len(texts))

    async def shout(self, reqs: AsyncIterator[Msg]) -> AsyncIterator[Msg]:
        async for r in reqs:
            yield Msg(text=r.text.upper(), n=r.n)

    async def fail(self, req: Msg) -> Msg:
        raise RuntimeError("kaboom at /srv/app/secret.py")

    async def reject(self, req: Msg) -> Msg:
        raise BadRequest(f"no {req.text}")

    async def slow(self, req: Msg) -> Msg:
        self.started.set()
        try:
            await asyncio.sleep(req.n / 1000)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return req

    async def fail_midstream(self, req: Msg) -> AsyncIterator[Msg]:
        yield Msg(text="first")
        raise BadRequest("stream broke")

    async def nested_timeout(self, req: Msg) -> Msg:
        """Handlers run in a task of their own, so asyncio.timeout and friends work."""
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        return Msg(text="ok", n=int(asyncio.current_task() is not None))

    async def context(self, req: Msg) -> Msg:
        ctx = current_context()
        return Msg(text=ctx.endpoint if ctx else "")


@pytest.fixture(params=TRANSPORTS)
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Client, Probe, Service]]:
    registry = f"memory://transport-{uuid.uuid4().hex}"
    service = Service("probe", registry=registry, drain_delay=0, grace=5)
    probe = Probe()
    service.handler(probe)
    async with service, Client(registry=registry, transports=(request.param,)) as client:
        yield client, probe, service


async def test_unary(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    assert await client.call("probe", "Probe.Echo", Msg(text="hi"), response=Msg) == Msg("hi", 2)


async def test_unary_plain_json(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    assert await client.call("probe", "Probe.Echo", {"text": "abc"}) == {"text": "abc", "n": 3}


async def test_msgpack_bodies(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    reply = await client.call(
        "probe", "Probe.Echo", Msg(text="mp"), response=Msg, content_type="application/msgpack"
    )
    assert reply == Msg("mp", 2)


async def test_server_stream(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    got = [m async for m in client.stream("probe", "Probe.Count", Msg(text="s", n=5), response=Msg)]
    assert got == [Msg("s", i) for i in range(5)]


async def test_client_stream(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup

    async def parts() -> AsyncIterator[Msg]:
        for text in "abc":
            yield Msg(text=text)

    got = [
        m async for m in client.stream("probe", "Probe.Total", parts(), response=Msg, kind=Kind.CLIENT_STREAM)
    ]
    assert got == [Msg("abc", 3)]


async def test_bidi(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup

    async def parts() -> AsyncIterator[Msg]:
        for i, text in enumerate(["x", "y", "z"]):
            yield Msg(text=text, n=i)

    got = [m async for m in client.stream("probe", "Probe.Shout", parts(), response=Msg)]
    assert got == [Msg("X", 0), Msg("Y", 1), Msg("Z", 2)]


async def test_metadata_in_and_out(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    out: dict[str, str] = {}
    await client.call(
        "probe", "Probe.Echo", Msg(text="m"), metadata={"X-Trace": "abc"}, response_metadata=out
    )
    assert out.get("x-trace") == "ABC"
    seen = await client.call("probe", "Probe.Seen", Msg(text=""), metadata={"x-probe": "v"}, response=Msg)
    assert seen.text == "v"


async def test_deadline_travels(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    seen = await client.call("probe", "Probe.Seen", Msg(text=""), timeout=5.0, response=Msg)
    # gRPC's grpc-timeout header rounds up to its unit, so allow a sliver above 5 s
    assert 0 < seen.n <= 5100


async def test_deadline_exceeded(setup: tuple[Client, Probe, Service]) -> None:
    client, probe, _ = setup
    with pytest.raises(Timeout) as info:
        await client.call("probe", "Probe.Slow", Msg(text="", n=10_000), timeout=0.2)
    assert info.value.code == 408
    # the server gave up on the handler too
    await asyncio.wait_for(probe.cancelled.wait(), 5)


async def test_caller_cancellation_reaches_handler(setup: tuple[Client, Probe, Service]) -> None:
    client, probe, _ = setup
    call = asyncio.ensure_future(client.call("probe", "Probe.Slow", Msg(text="", n=10_000), timeout=30))
    await asyncio.wait_for(probe.started.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(probe.cancelled.wait(), 5)


async def test_handler_error_is_internal_without_traceback(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    with pytest.raises(InternalServerError) as info:
        await client.call("probe", "Probe.Fail", Msg(text=""))
    err = info.value
    assert err.code == 500 and err.id == "probe"
    assert "correlation id" in err.detail
    assert "Traceback" not in err.detail and ".py" not in err.detail and "kaboom" not in err.detail
    assert await client.call("probe", "Probe.Echo", Msg(text="ok"), response=Msg) == Msg("ok", 2)


async def test_raised_micro_error_keeps_code(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    with pytest.raises(BadRequest) as info:
        await client.call("probe", "Probe.Reject", Msg(text="way"))
    assert info.value.detail == "no way" and info.value.code == 400


async def test_unknown_endpoint(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    with pytest.raises(NotImplementedError_) as info:
        await client.call("probe", "Probe.Missing", Msg(text=""))
    assert "Probe.Echo" in info.value.detail  # names what exists


async def test_bad_body_names_the_field(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    with pytest.raises(BadRequest) as info:
        await client.call("probe", "Probe.Echo", {"text": 5})
    assert "$.text" in info.value.detail
    with pytest.raises(BadRequest):
        await client.call("probe", "Probe.Echo", b"{not json")


async def test_error_mid_stream(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    got = []
    with pytest.raises(BadRequest) as info:
        async for m in client.stream("probe", "Probe.FailMidstream", Msg(text=""), response=Msg):
            got.append(m)
    assert got == [Msg("first")]
    assert info.value.detail == "stream broke"


async def test_handler_sees_its_context(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    assert (await client.call("probe", "Probe.Context", Msg(text=""), response=Msg)).text == "Probe.Context"
    assert current_context() is None  # the callee's context never leaks into the caller


async def test_handler_may_use_asyncio_timeout(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    assert await client.call("probe", "Probe.NestedTimeout", Msg(text=""), response=Msg) == Msg("ok", 1)


async def test_large_body_near_limit(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    text = "x" * (4 * 1024 * 1024 - 64 * 1024)
    reply = await client.call("probe", "Probe.Echo", Msg(text=text), response=Msg)
    assert reply.n == len(text)


async def test_many_concurrent_calls(setup: tuple[Client, Probe, Service]) -> None:
    client, _, _ = setup
    replies = await asyncio.gather(
        *(client.call("probe", "Probe.Echo", Msg(text=str(i)), response=Msg) for i in range(200))
    )
    assert [r.text for r in replies] == [str(i) for i in range(200)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_drain_during_load_fails_no_call(transport: str) -> None:
    """Stopping one of two nodes under load: every call still succeeds (drain + retry)."""
    registry = f"memory://drain-{uuid.uuid4().hex}"
    nodes = [Service("probe", registry=registry, drain_delay=0.2, grace=5) for _ in range(2)]
    for node in nodes:
        node.handler(Probe())
    for node in nodes:
        await node.start()
    failures: list[BaseException] = []
    done = 0
    target = 200
    reached = asyncio.Event()
    stop = asyncio.Event()

    async def caller(client: Client, i: int) -> None:
        nonlocal done
        while not stop.is_set():
            try:
                # slow enough that calls are in flight on the node when it drains
                await client.call("probe", "Probe.Slow", Msg(text=str(i), n=5), response=Msg)
                done += 1
                if done >= target:
                    reached.set()
            except Exception as exc:
                failures.append(exc)

    try:
        async with Client(registry=registry, transports=(transport,)) as client:
            workers = [asyncio.create_task(caller(client, i)) for i in range(32)]
            await asyncio.wait_for(reached.wait(), 60)
            await nodes[0].stop()
            reached.clear()
            target = done + 200  # and as many again on the node that is left
            await asyncio.wait_for(reached.wait(), 60)
            stop.set()
            await asyncio.gather(*workers)
    finally:
        for node in nodes:
            await node.stop()
    assert failures == []
