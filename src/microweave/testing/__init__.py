"""Helpers for testing services built on microweave.

    from microweave.testing import capture_logs, serve

    async def test_says_hello() -> None:
        async with serve(service) as client:
            reply = await client.call("greeter", "Greeter.SayHello", {"name": "Ada"})
        assert reply == {"message": "Hello Ada"}

`serve` starts services in-process on a private in-memory registry and yields a client bound
to it; `capture_logs` collects log records as dicts with their structured extras. The pytest
plugin in `plugin` (loaded automatically once microweave is installed) offers the same as
fixtures. `MockTransport` answers a client's calls itself, for code that calls services you
do not want to start. See docs/testing.md.
"""

from .logs import LogEntry, capture_logs
from .mock import MockRequest, MockTransport
from .services import Transport, serve

__all__ = ["LogEntry", "MockRequest", "MockTransport", "Transport", "capture_logs", "serve"]
