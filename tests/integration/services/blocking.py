"""A service with blocking (sync) handlers and handlers that raise what would stop a process.

Run as `python blocking.py --threads N --grace S`.
"""

from __future__ import annotations

import argparse
import threading
import time

import msgspec

from microweave import Service


class Req(msgspec.Struct):
    seconds: float = 0.0


class Reply(msgspec.Struct):
    text: str
    count: int = 0


parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=16)
parser.add_argument("--grace", type=float, default=10.0)
options = parser.parse_args()

service = Service("blocking", threads=options.threads, grace=options.grace, drain_delay=0.0)
_lock = threading.Lock()
_started = 0


@service.handler
class Blocking:
    def slow(self, req: Req) -> Reply:
        """Blocks its thread: no deadline can stop it."""
        global _started
        with _lock:
            _started += 1
        time.sleep(req.seconds)
        return Reply("slept")

    def quick(self, req: Req) -> Reply:
        return Reply("quick")

    async def started(self, req: Req) -> Reply:
        return Reply("started", count=_started)

    async def exit(self, req: Req) -> Reply:
        raise SystemExit(3)

    async def interrupt(self, req: Req) -> Reply:
        raise KeyboardInterrupt

    def exit_in_thread(self, req: Req) -> Reply:
        raise SystemExit(4)


if __name__ == "__main__":
    service.run()
