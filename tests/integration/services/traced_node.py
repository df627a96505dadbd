"""A node of the traced call chain: `python traced_node.py --name NAME [--next SERVICE] [--transport T]`.

`Chain.Step` adds this service's name to the request's path and calls the next service's
`Chain.Step` through `service.client` over `--transport`; the last node (no `--next`) raises a
plain exception when the request asks it to fail. Tracing is turned on by the environment
(OTEL_EXPORTER_OTLP_ENDPOINT, ...), as it would be in production: nothing here mentions it.
"""

from __future__ import annotations

import argparse

import msgspec

from microweave import Client, Service


class Step(msgspec.Struct):
    fail: bool = False
    path: list[str] = []


parser = argparse.ArgumentParser()
parser.add_argument("--name", required=True)
parser.add_argument("--next", default="")
parser.add_argument("--transport", default="tcp")
options = parser.parse_args()

service = Service(options.name, drain_delay=0, grace=5)


@service.handler
class Chain:
    async def step(self, req: Step) -> Step:
        req.path.append(service.name)
        if options.next:
            return await service.client.call(options.next, "Chain.Step", req, response=Step, timeout=30)
        if req.fail:
            raise ValueError("the disk is full")  # a plain exception: the caller gets a 500
        return req


if __name__ == "__main__":
    service.client = Client(transports=(options.transport,), name=service.name, node_id=service.node_id)
    service.run()
