"""A node for the pipeline process tests: `python pipeline_node.py --name NAME [--next SERVICE]`.

Every handler prints `ran <Endpoint> <node id>` before doing anything, so a test counts
executions across processes from their output. `--next` makes `Chain.Hop` call that service's
`Chain.Hop` (or, without it, fail as a dependency that is down), through `service.client` over
`--transport`.
"""

from __future__ import annotations

import argparse
import asyncio

import msgspec

from microweave import Client, Service, Unavailable


class Msg(msgspec.Struct):
    text: str = ""
    n: int = 0


parser = argparse.ArgumentParser()
parser.add_argument("--name", default="pnode")
parser.add_argument("--grace", type=float, default=10.0)
parser.add_argument("--next", default="")
parser.add_argument("--transport", default="tcp")
options = parser.parse_args()

service = Service(options.name, grace=options.grace)


def ran(endpoint: str) -> None:
    print(f"ran {endpoint} {service.node_id}", flush=True)


@service.handler
class Chain:
    async def slow(self, req: Msg) -> Msg:
        ran("Slow")
        await asyncio.sleep(req.n / 1000)
        return Msg(text=service.node_id)

    async def down(self, req: Msg) -> Msg:
        ran("Down")
        raise Unavailable("down for maintenance")

    async def hop(self, req: Msg) -> Msg:
        ran("Hop")
        if not options.next:
            raise Unavailable("my database is down")
        return await service.client.call(options.next, "Chain.Hop", req, response=Msg, timeout=60)


if __name__ == "__main__":
    service.client = Client(transports=(options.transport,), name=service.name, node_id=service.node_id)
    service.run()
