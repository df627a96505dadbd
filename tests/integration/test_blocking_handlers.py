"""Blocking handlers and handlers that raise what would stop a process, in real processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from helpers import ServiceProcesses, async_wait_until

from microweave import Client, InternalServerError, Timeout, TooManyRequests
from microweave.registry.local import LocalRegistry


class Req(msgspec.Struct):
    seconds: float = 0.0


class Reply(msgspec.Struct):
    text: str
    count: int = 0


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ServiceProcesses]:
    procs = ServiceProcesses(tmp_path / "registry", tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
async def client(processes: ServiceProcesses) -> AsyncIterator[Client]:
    async with Client(registry=LocalRegistry(processes.registry), transports=("tcp", "grpc")) as c:
        yield c


async def _started(client: Client) -> int:
    reply = await client.call("blocking", "Blocking.Started", Req(), response=Reply, timeout=10)
    return reply.count


@pytest.mark.parametrize("exc", ["Exit", "Interrupt", "ExitInThread"])
async def test_system_exit_in_a_handler_is_a_500_and_the_service_keeps_serving(
    processes: ServiceProcesses, client: Client, exc: str
) -> None:
    proc = processes.start("blocking.py", name="blocking")
    for _ in range(3):
        with pytest.raises(InternalServerError) as info:
            await client.call("blocking", f"Blocking.{exc}", Req(), timeout=10)
        assert "correlation id" in info.value.detail and "SystemExit" not in info.value.detail
    assert (
        await client.call("blocking", "Blocking.Quick", Req(), response=Reply, timeout=10)
    ).text == "quick"
    assert proc.alive()
    assert proc.output().count("correlation id") >= 3  # each logged, with its traceback


async def test_abandoned_slow_sync_calls_do_not_starve_other_sync_endpoints(
    processes: ServiceProcesses, client: Client
) -> None:
    processes.start("blocking.py", "--threads", "16", name="blocking")
    # 8 callers give up on a handler that blocks for a minute (the reproduction)
    for _ in range(8):
        with pytest.raises(Timeout):
            await client.call("blocking", "Blocking.Slow", Req(seconds=60), timeout=0.2)
    await async_wait_until(lambda: _started(client), timeout=10, what="the slow calls to start")
    reply = await client.call("blocking", "Blocking.Quick", Req(), response=Reply, timeout=10)
    assert reply.text == "quick"


async def test_a_full_pool_answers_429_instead_of_queuing_without_bound(
    processes: ServiceProcesses, client: Client
) -> None:
    processes.start("blocking.py", "--threads", "1", name="blocking")
    calls = [
        asyncio.ensure_future(
            client.call("blocking", "Blocking.Slow", Req(seconds=3), response=Reply, timeout=30)
        )
        for _ in range(8)  # one runs, four may wait (4 x threads), the rest are refused
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, TooManyRequests)]
    assert refused and "worker threads are busy" in refused[0].detail
    assert all(isinstance(r, TooManyRequests | Reply) for r in results), results


async def test_sigterm_honours_the_grace_with_a_thread_stuck_in_a_handler(
    processes: ServiceProcesses, client: Client
) -> None:
    proc = processes.start("blocking.py", "--grace", "1", name="blocking")
    stuck = asyncio.ensure_future(client.call("blocking", "Blocking.Slow", Req(seconds=600), timeout=None))
    await async_wait_until(lambda: _started(client), timeout=10, what="the stuck call to start")
    proc.signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        # The handler would block for 10 minutes; the process must not wait for its thread.
        code = await asyncio.to_thread(proc.wait, 120)
    except subprocess.TimeoutExpired:
        pytest.fail("the service waited for a stuck handler thread past its grace")
    assert code == 0, proc.output()
    with pytest.raises(Exception) as info:
        await stuck
    assert "may have run" in str(info.value)  # the caller is told, not left hanging
    assert time.monotonic() - started < 600  # finished long before the handler would have
    assert "cancelling 1 calls still running" in proc.output()


async def test_a_second_signal_while_stopping_does_not_cut_the_drain_short(
    processes: ServiceProcesses, client: Client
) -> None:
    proc = processes.start("blocking.py", "--grace", "30", name="blocking")
    running = asyncio.ensure_future(
        client.call("blocking", "Blocking.Slow", Req(seconds=2), response=Reply, timeout=60)
    )
    await async_wait_until(lambda: _started(client), timeout=10, what="the call to start")
    proc.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    proc.signal(signal.SIGINT)  # an impatient operator, or a second SIGTERM from a supervisor
    assert (await running).text == "slept"  # the in-flight call still finished and was answered
    assert await asyncio.to_thread(proc.wait, 60) == 0, proc.output()
    assert "already stopping" in proc.output() and "Traceback" not in proc.output()
