"""The pipeline's promises between real processes, over tcp and gRPC: a call cancelled at the
end of a node's grace is reported and never re-run; a handler raising `Unavailable` runs once
and ejects nobody; a chain whose last dependency is down runs each handler once.

Executions are counted from the nodes' own output (`ran <Endpoint> <node>`, printed by
tests/integration/services/pipeline_node.py before a handler does anything).
"""

from __future__ import annotations

import asyncio
import signal

import msgspec
import pytest
from helpers import ServiceProcess, ServiceProcesses, async_wait_until

from microweave import Client, NotDelivered, Unavailable

TRANSPORTS = ["tcp", "grpc"]


class Msg(msgspec.Struct):
    text: str = ""
    n: int = 0


def runs(process: ServiceProcess, endpoint: str) -> int:
    return sum(1 for line in process.output().splitlines() if line.startswith(f"ran {endpoint} "))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_call_cancelled_at_the_end_of_the_grace_is_reported_once(
    processes: ServiceProcesses, transport: str
) -> None:
    nodes = [processes.start("pipeline_node.py", "--grace", "0.5", name="pnode") for _ in range(2)]
    async with Client(transports=(transport,), timeout=60) as client:
        call = asyncio.ensure_future(client.call("pnode", "Chain.Slow", Msg(n=30_000), response=Msg))

        async def started() -> list[ServiceProcess]:
            return [p for p in nodes if runs(p, "Slow")]

        [ran_on] = await async_wait_until(started, timeout=30, what="the slow call to start")
        ran_on.signal(signal.SIGTERM)
        with pytest.raises(Unavailable) as info:
            await asyncio.wait_for(call, 30)
        assert ran_on.wait(timeout=30) == 0
    err = info.value
    assert type(err) is Unavailable and err.code == 503 and err.id == "pnode" and err.remote, err
    assert "cancelled" in err.detail and "may have run" in err.detail, err
    assert "Traceback" not in err.detail and "127.0.0.1:" not in err.detail
    assert sum(runs(p, "Slow") for p in nodes) == 1  # never run again on the other node
    log = ran_on.output()
    assert "Chain.Slow" in log and "may have run" in log, log  # the node says what it cancelled
    assert "Traceback" not in log


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unavailable_from_a_handler_runs_once_across_processes(
    processes: ServiceProcesses, transport: str
) -> None:
    nodes = [processes.start("pipeline_node.py", name="pnode") for _ in range(2)]
    async with Client(transports=(transport,), timeout=20) as client:
        for i in range(1, 5):
            with pytest.raises(Unavailable) as info:
                await client.call("pnode", "Chain.Down", Msg())
            assert not isinstance(info.value, NotDelivered) and info.value.remote
            assert sum(runs(p, "Down") for p in nodes) == i
        served = {(await client.call("pnode", "Chain.Slow", Msg(n=0), response=Msg)).text for _ in range(30)}
    assert served == {p.node_id for p in nodes}  # no node was ejected: both still get calls


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_chain_with_a_dependency_down_runs_each_handler_once(
    processes: ServiceProcesses, transport: str
) -> None:
    """caller -> top -> mid (two processes) -> leaf, whose database is down."""
    hop = ("--transport", transport)
    leaf = processes.start("pipeline_node.py", "--name", "leaf", *hop, name="leaf")
    mids = [
        processes.start("pipeline_node.py", "--name", "mid", "--next", "leaf", *hop, name="mid")
        for _ in range(2)
    ]
    top = processes.start("pipeline_node.py", "--name", "top", "--next", "mid", *hop, name="top")
    async with Client(transports=(transport,), timeout=20) as client:
        for i in range(1, 4):
            with pytest.raises(Unavailable) as info:
                await client.call("top", "Chain.Hop", Msg())
            err = info.value
            assert type(err) is Unavailable and err.id == "top", err
            assert "127.0.0.1:" not in err.detail and "Traceback" not in err.detail, err
            assert (runs(top, "Hop"), sum(runs(m, "Hop") for m in mids), runs(leaf, "Hop")) == (i, i, i)
