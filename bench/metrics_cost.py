"""What the metrics middlewares cost per call, in nanoseconds of one CPU, without the network.

    python bench/metrics_cost.py [--calls 300000] [--repeat 7]

`rpc.py --stacks microweave-tcp,microweave-tcp-nometrics` measures the same thing end to end,
where a busy machine's noise is often larger than the cost itself. Here each middleware wraps a
`call_next` that answers at once, and the coroutine is driven by hand (no event loop): what is
left is the middleware's own work. Each figure is the best of `--repeat` runs, minus the same
loop calling `call_next` directly. Such a call ends under the first histogram bound (0.5 ms), as
most served in-process and tcp calls do; a slower one also pays for a bisect, printed apart.
"""

from __future__ import annotations

import argparse
import time
import timeit
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from microweave.client.call import ClientCall
from microweave.metrics import BUCKETS
from microweave.middleware import ClientMiddleware, ServerMiddleware
from microweave.middleware.metrics import ClientMetrics, ServerMetrics
from microweave.server import Kind, Router
from microweave.server.pipeline import Pipeline


class Req(msgspec.Struct):
    name: str


class Echo:
    async def echo(self, req: Req) -> Req:
        return req


class NoopServer(ServerMiddleware):
    async def unary(self, call: Any, call_next: Callable[[Any], Awaitable[bytes]]) -> bytes:
        return await call_next(call)


class NoopClient(ClientMiddleware):
    async def unary(self, call: Any, call_next: Callable[[Any], Awaitable[bytes]]) -> bytes:
        return await call_next(call)


async def _answer(call: Any) -> bytes:
    return b"{}"


def _drive(awaitable: Any) -> None:
    try:
        awaitable.send(None)
    except StopIteration:
        return
    raise RuntimeError("call_next suspended: it must answer at once")


def _best_ns(step: Callable[[Any], Any], call: Any, calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            _drive(step(call))
        best = min(best, (time.perf_counter() - started) / calls * 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    router = Router(package="bench")
    router.add_handler(Echo())
    call = Pipeline(router).call("/bench.Echo/Echo", b'{"name":"x"}', transport="tcp")
    client_call = ClientCall(
        "bench", "Echo.Echo", "/bench.Echo/Echo", Kind.UNARY, b"", "application/json", {}, None
    )
    client_call.transport = "tcp"
    server, client = ServerMetrics("bench"), ClientMetrics()

    def direct(c: Any) -> Any:
        return _answer(c)

    def run(name: str, mw: Any, c: Any) -> None:
        base = _best_ns(direct, c, args.calls, args.repeat)
        cost = _best_ns(lambda x: mw.unary(x, _answer), c, args.calls, args.repeat) - base
        print(f"{name:34s} {cost:7.0f} ns per call")

    run("no-op server middleware", NoopServer(), call)
    run("ServerMetrics", server, call)
    run("no-op client middleware", NoopClient(), client_call)
    run("ClientMetrics", client, client_call)
    # a call slower than the first bound (0.5 ms) also finds its bucket by bisect
    bisect_ns = min(
        timeit.repeat("bisect_left(BUCKETS, 0.003)", globals={"bisect_left": bisect_left, "BUCKETS": BUCKETS},
                      number=args.calls, repeat=args.repeat)
    ) / args.calls * 1e9  # fmt: skip
    print(f"{'+ bisect, for a call over 0.5 ms':34s} {bisect_ns:7.0f} ns per call")


if __name__ == "__main__":
    main()
