"""The first process of the traced call chain: `python traced_caller.py SERVICE TRANSPORT`.

Inside one span of its own ("checkout"), calls SERVICE's `Chain.Step` twice: once to succeed,
once asking the last node to fail. Prints one JSON line: the trace id, the path of the good
call, the code of the failed one. Its spans are exported when the process exits (the SDK
flushes at exit); tracing comes from the environment.
"""

from __future__ import annotations

import asyncio
import json
import sys

import msgspec
from opentelemetry import trace

from microweave import Client, MicroError


class Step(msgspec.Struct):
    fail: bool = False
    path: list[str] = []


async def main(service: str, transport: str) -> None:
    async with Client(name="caller", transports=(transport,), timeout=30) as client:
        with trace.get_tracer("traced_caller").start_as_current_span("checkout") as root:
            good = await client.call(service, "Chain.Step", Step(), response=Step)
            try:
                await client.call(service, "Chain.Step", Step(fail=True), response=Step)
                code = 200
            except MicroError as exc:
                code = exc.code
    trace_id = format(root.get_span_context().trace_id, "032x")
    print(json.dumps({"trace_id": trace_id, "path": good.path, "code": code}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
