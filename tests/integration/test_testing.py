"""microweave.testing: `serve`, `capture_logs` and the pytest plugin, used as a user would.

The greeter and the two tests right after it are docs/testing.md's example, verbatim (a test
below checks that), so the documented example is a test that runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import textwrap
import threading
from importlib.metadata import entry_points
from pathlib import Path

import msgspec
import pytest

from microweave import ConfigurationError, Context, InternalServerError, Service, Unavailable
from microweave.testing import LogEntry, Transport, capture_logs, serve

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "testing.md"
TRANSPORTS: list[Transport] = ["local", "tcp", "grpc"]


# -- the documented example ---------------------------------------------------------------


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str


service = Service("greeter")


@service.handler
class Greeter:
    async def say_hello(self, req: HelloRequest) -> HelloReply:
        return HelloReply(message=f"Hello {req.name}")

    async def say_goodbye(self, req: HelloRequest) -> HelloReply:
        raise LookupError(f"no farewell configured for {req.name}")


async def test_greeter_says_hello() -> None:
    async with serve(service) as client:
        reply = await client.call("greeter", "Greeter.SayHello", HelloRequest("Ada"), response=HelloReply)
    assert reply == HelloReply(message="Hello Ada")


async def test_a_crash_is_logged_with_its_correlation_id(microweave_logs: list[LogEntry]) -> None:
    async with serve(service) as client:
        with pytest.raises(InternalServerError) as caught:
            await client.call("greeter", "Greeter.SayGoodbye", HelloRequest("Ada"))
    [logged] = [entry for entry in microweave_logs if entry["level"] == "ERROR"]
    assert logged["endpoint"] == "Greeter.SayGoodbye"
    assert logged["correlation_id"] in caught.value.detail  # the caller gets the id to quote...
    assert "no farewell configured for Ada" in logged["exception"]  # ...the log keeps the rest
    assert "farewell" not in str(caught.value) and "Traceback" not in str(caught.value)


# -- the documentation stays the tested example ---------------------------------------------


def _tested_blocks(markdown: str) -> list[str]:
    """The python blocks docs/testing.md marks as tested, without their import lines (the doc
    imports from the user's `greeter` module; this file defines it)."""
    blocks = re.findall(r"<!-- tested -->\s*```python\n(.*?)```", markdown, flags=re.S)
    out = []
    for block in blocks:
        lines = block.splitlines(keepends=True)
        while lines and (lines[0].startswith(("from ", "import ")) or not lines[0].strip()):
            lines.pop(0)
        out.append("".join(lines))
    return out


def test_the_documented_example_is_this_file_verbatim() -> None:
    blocks = _tested_blocks(DOC.read_text())
    assert len(blocks) >= 2, "docs/testing.md lost its <!-- tested --> examples"
    source = Path(__file__).read_text()
    for block in blocks:
        assert block in source, f"docs/testing.md's example drifted from this file:\n{block}"


# -- serve ----------------------------------------------------------------------------------


def _echo(name: str, reply: str) -> Service:
    """A service `name` whose Echo.Who endpoint says `reply`, to tell nodes apart."""
    svc = Service(name)

    @svc.handler
    class Echo:
        async def who(self, req: dict[str, str]) -> str:
            return reply

    return svc


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_each_transport_reaches_the_service(transport: Transport) -> None:
    async with serve(service, transport=transport) as client:
        reply = await client.call("greeter", "Greeter.SayHello", {"name": transport})
    assert reply == {"message": f"Hello {transport}"}
    await asyncio.sleep(0)  # let tasks cancelled on exit finish
    # the services and the client are closed: no heartbeat, watch or connection task outlives it
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_the_chosen_transport_is_the_only_one_used() -> None:
    """With tcp turned off on the service, a client told to use tcp cannot reach it: the
    `transport` argument is not a preference that quietly falls back to in-process calls."""
    quiet = Service("quiet", tcp_address=False)
    quiet.handler(Greeter)
    async with serve(quiet, transport="tcp") as client:
        with pytest.raises(Unavailable, match="offers none of the transports tcp"):
            await client.call("quiet", "Greeter.SayHello", {"name": "x"})
    async with serve(quiet, transport="grpc") as client:
        assert await client.call("quiet", "Greeter.SayHello", {"name": "x"}) == {"message": "Hello x"}
    assert quiet.tcp_address is None  # turned off, and left off


async def test_concurrent_serves_never_see_each_other() -> None:
    """Two tests serving a service of the same name at once each reach only their own node."""
    first, second = _echo("twin", "first"), _echo("twin", "second")
    async with serve(first) as one, serve(second) as two:
        for client, expected, node in ((one, "first", first), (two, "second", second)):
            [record] = await client.registry.get_service("twin")
            assert [n.id for n in record.nodes] == [node.node_id]
            replies = {await client.call("twin", "Echo.Who", {}) for _ in range(20)}
            assert replies == {expected}


async def test_the_services_own_registry_and_addresses_are_overridden() -> None:
    """A service built for production (its own registry, a fixed port that is taken right now)
    still starts under serve(), on loopback and free ports, and never reaches its registry."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        prod = Service(
            "prod",
            registry="memory://test-testing-production",
            address=f"127.0.0.1:{port}",
            tcp_address=f"127.0.0.1:{port}",
        )
        prod.handler(Greeter)
        production = prod.registry
        async with serve(prod) as client:
            assert prod.drain_delay == 0  # no caller's cache to wait for: stop at once
            assert await client.call("prod", "Greeter.SayHello", {"name": "x"}) == {"message": "Hello x"}
            for address in prod.addresses.values():
                host, _, bound = address.rpartition(":")
                assert host == "127.0.0.1" and int(bound) not in (0, port)
            assert await production.get_service("prod") == []
            assert prod.registry is client.registry
    assert prod.address == prod.tcp_address == f"127.0.0.1:{port}"  # put back for later use
    assert prod.drain_delay == 0.5


async def test_services_stop_when_the_test_fails() -> None:
    greeter = _echo("failing", "x")
    with pytest.raises(RuntimeError, match="the test failed"):
        async with serve(greeter) as client:
            registry = client.registry
            assert greeter.running
            raise RuntimeError("the test failed")
    assert not greeter.running
    assert await registry.get_service("failing") == []
    host, port = greeter.addresses["tcp"].rsplit(":", 1)
    with pytest.raises(OSError):  # its listeners are closed: nothing answers at its address
        _, writer = await asyncio.open_connection(host, int(port))
        writer.close()


async def test_one_service_calls_another_through_the_private_registry() -> None:
    """Services served together share the registry, so `service.client` inside a handler finds
    the others; they start in the order given and stop in reverse."""
    backend = _echo("backend", "from the backend")
    frontend = Service("frontend")

    @frontend.handler
    class Front:
        async def relay(self, req: dict[str, str], ctx: Context) -> str:
            reply: str = await frontend.client.call("backend", "Echo.Who", {})
            return f"relayed {reply}"

    with capture_logs(logger="microweave.service") as logs:
        async with serve(backend, frontend) as client:
            assert await client.call("frontend", "Front.Relay", {}) == "relayed from the backend"
    lifecycle = [(e["message"].split()[0], "stopped" in e["message"]) for e in logs]
    assert lifecycle == [("backend", False), ("frontend", False), ("frontend", True), ("backend", True)]


async def test_a_service_can_be_served_again() -> None:
    """A module-level service is served by test after test: each time on a fresh registry."""
    greeter = _echo("again", "x")
    async with serve(greeter) as client:
        first = client.registry
        assert await client.call("again", "Echo.Who", {}) == "x"
    async with serve(greeter) as client:
        assert client.registry is not first
        assert await client.call("again", "Echo.Who", {}) == "x"
    assert await first.get_service("again") == []


async def test_a_service_that_fails_to_start_stops_those_started_before_it() -> None:
    class Broken(Service):
        async def start(self) -> None:
            raise OSError("cannot listen")

    started = _echo("started", "x")
    with pytest.raises(OSError, match="cannot listen"):
        async with serve(started, Broken("broken")):
            pytest.fail("the block ran although a service failed to start")
    assert not started.running


async def test_bad_arguments_are_refused_before_anything_starts() -> None:
    greeter = _echo("args", "x")
    with pytest.raises(TypeError, match="at least one"):
        async with serve():
            pass
    with pytest.raises(ValueError, match="same Service twice"):
        async with serve(greeter, greeter):
            pass
    assert not greeter.running


async def test_a_service_already_running_is_refused() -> None:
    greeter = _echo("running", "x")
    greeter.registry = "memory://test-testing-running"
    async with greeter:
        with pytest.raises(ConfigurationError, match="while it is running"):
            async with serve(greeter):
                pass
        assert greeter.running  # refused, not stopped: it belongs to someone else


# -- capture_logs ---------------------------------------------------------------------------


def test_capture_logs_collects_structured_records() -> None:
    log = logging.getLogger("test_testing.structured")
    with capture_logs() as logs:
        log.debug("too quiet")
        log.info("hello %s", "Ada", extra={"endpoint": "Greeter.SayHello", "correlation_id": "c1"})
        try:
            raise KeyError("missing")
        except KeyError:
            log.exception("failed")
    assert [e["message"] for e in logs] == ["hello Ada", "failed"]
    hello, failed = logs
    assert hello == {
        "level": "INFO",
        "logger": "test_testing.structured",
        "message": "hello Ada",
        "endpoint": "Greeter.SayHello",
        "correlation_id": "c1",
    }
    assert failed["level"] == "ERROR"
    assert "Traceback" in failed["exception"] and "KeyError: 'missing'" in failed["exception"]


def test_capture_logs_filters_by_level_and_logger() -> None:
    mine, other = logging.getLogger("test_testing.mine"), logging.getLogger("test_testing.other")
    with capture_logs("debug", logger="test_testing.mine") as logs:
        mine.debug("one")
        logging.getLogger("test_testing.mine.child").debug("two")
        other.error("not mine")
    assert [e["message"] for e in logs] == ["one", "two"]
    with capture_logs(logging.WARNING) as logs:
        mine.info("below")
        mine.warning("at")
    assert [e["message"] for e in logs] == ["at"]
    with pytest.raises(ValueError, match="unknown log level"), capture_logs("chatty"):
        pass


def test_capture_logs_restores_logging() -> None:
    root = logging.getLogger()
    original = (root.level, logging.root.manager.disable)
    root.setLevel(logging.WARNING)  # as unconfigured logging has it, whatever ran before
    logging.disable(logging.CRITICAL)
    try:
        before = (root.level, list(root.handlers), logging.root.manager.disable)
        with capture_logs() as logs:
            logging.getLogger("test_testing.restore").info("seen despite logging.disable")
        after = (root.level, list(root.handlers), logging.root.manager.disable)
    finally:
        root.setLevel(original[0])
        logging.disable(original[1])
    assert len(logs) == 1
    assert after == before
    with capture_logs() as logs:
        pass
    logging.getLogger("test_testing.restore").error("after the block")
    assert logs == []


def test_capture_logs_sees_other_threads() -> None:
    """Sync handlers run in worker threads; their records land in the same list."""
    log = logging.getLogger("test_testing.threads")
    with capture_logs() as logs:
        threads = [threading.Thread(target=log.info, args=(f"thread {i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(e["message"] for e in logs) == [f"thread {i}" for i in range(8)]


# -- the pytest plugin, as a user's project sees it -----------------------------------------


def test_the_plugin_is_registered_for_pytest() -> None:
    [plugin] = [ep for ep in entry_points(group="pytest11") if ep.name == "microweave"]
    assert plugin.value == "microweave.testing.plugin"


def test_a_users_project_needs_no_conftest(pytester: pytest.Pytester) -> None:
    """A fresh project with only a service and a test: the fixtures come from the installed
    plugin, the three-line test passes, and a wrong expectation fails."""
    pytester.makepyfile(
        greeter=textwrap.dedent(
            """
            from microweave import Service

            service = Service("greeter")

            @service.handler
            class Greeter:
                async def say_hello(self, req: dict) -> dict:
                    return {"message": f"Hello {req['name']}"}
            """
        ),
        test_greeter=textwrap.dedent(
            """
            from greeter import service
            from microweave.testing import serve

            async def test_says_hi():
                async with serve(service) as client:
                    reply = await client.call("greeter", "Greeter.SayHello", {"name": "Ada"})
                assert reply == {"message": "Hi Ada"}

            async def test_says_hello_right(microweave_logs):
                async with serve(service) as client:
                    reply = await client.call("greeter", "Greeter.SayHello", {"name": "Ada"})
                assert reply == {"message": "Hello Ada"}
                assert any("serving" in entry["message"] for entry in microweave_logs)
            """
        ),
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: assert {'message': 'Hello Ada'} == {'message': 'Hi Ada'}*"]
    )
