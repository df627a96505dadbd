"""What a node advertises is what its callers dial: MICRO_ADVERTISE_ADDRESS (a pod IP, the host
a container's ports are published on) replaces the bound host for every listener, and a bind
to 0.0.0.0 never advertises 0.0.0.0."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from microweave import Client, Service
from microweave.errors import ConfigurationError
from microweave.registry import Registry
from microweave.registry import from_url as registry_from_url
from microweave.transport import advertise_host, advertised

MICROWEAVE = [sys.executable, "-m", "microweave"]


class Hello(msgspec.Struct):
    name: str


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    async with registry_from_url(f"memory://advertise-{uuid.uuid4().hex}") as registry:
        yield registry


def greeter(registry: Registry, **options: object) -> Service:
    service = Service("greeter", registry=registry, drain_delay=0, **options)  # type: ignore[arg-type]

    @service.handler
    class Greeter:
        async def say_hello(self, req: Hello) -> Hello:
            return Hello(name=f"hello {req.name}")

    return service


async def test_the_advertised_host_replaces_the_bound_one_for_every_listener(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bound to loopback, advertised by name: callers dial "localhost", which reaches it
    monkeypatch.setenv("MICRO_ADVERTISE_ADDRESS", "localhost")
    async with greeter(registry, address="127.0.0.1:0", admin_address="127.0.0.1:0") as service:
        [record] = await registry.get_service("greeter")
        [node] = record.nodes
        advertised_all = [node.address, node.metadata["tcp_address"], node.metadata["admin_address"]]
        assert all(a.startswith("localhost:") for a in advertised_all), advertised_all
        assert service.addresses["grpc"] == node.address
        for transport in ("grpc", "tcp"):
            async with Client(registry=registry, transports=(transport,)) as client:
                reply = await client.call("greeter", "Greeter.SayHello", Hello(name="ada"), response=Hello)
                assert reply == Hello(name="hello ada")


async def test_the_argument_wins_over_the_environment(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_ADVERTISE_ADDRESS", "10.9.9.9")
    async with greeter(registry, address="127.0.0.1:0", advertise_address="127.0.0.1") as service:
        assert service.addresses["grpc"].startswith("127.0.0.1:")


def test_an_unspecified_bind_is_never_advertised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICRO_ADVERTISE_ADDRESS", raising=False)
    for bound in ("0.0.0.0:8080", "[::]:8080", ":::8080"):
        host = advertised(bound).rpartition(":")[0]
        assert host not in ("0.0.0.0", "::", "[::]", ""), (bound, host)
    assert advertised("0.0.0.0:8080", "10.1.2.3") == "10.1.2.3:8080"
    assert advertised("0.0.0.0:8080", "fd00::7") == "[fd00::7]:8080"
    assert advertised("127.0.0.1:5", None) == "127.0.0.1:5"


NO_HOSTS = ["10.0.0.1:8080", "0.0.0.0", "::", "under_score", "two words", "[fd00::1]:80"]
#: mistyped IPs: all-digit labels pass as a DNS name's, but no name ends in one
NO_HOSTS += ["999.1.1.1", "10.0.5", "12345", "10.0.0.5."]


@pytest.mark.parametrize("bad", NO_HOSTS)
def test_an_advertised_host_that_is_none_is_refused_at_construction(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match="MICRO_ADVERTISE_ADDRESS"):
        advertise_host(bad)
    monkeypatch.setenv("MICRO_ADVERTISE_ADDRESS", bad)
    with pytest.raises(ConfigurationError, match="MICRO_ADVERTISE_ADDRESS"):
        Service("greeter", registry="memory://x")


@pytest.mark.parametrize(("value", "grace"), [("3", 3.0), ("0", 0.0), ("2.5", 2.5)])
def test_micro_grace_sets_the_drain_grace(value: str, grace: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_GRACE", value)
    assert Service("greeter", registry="memory://x").grace == grace
    assert Service("greeter", registry="memory://x", grace=7).grace == 7


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_micro_grace_that_is_no_number_of_seconds_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MICRO_GRACE", value)
    with pytest.raises(ConfigurationError, match="MICRO_GRACE"):
        Service("greeter", registry="memory://x")


@pytest.mark.parametrize("grace", [-1.0, float("nan")])
def test_a_grace_argument_that_is_no_number_of_seconds_is_refused(grace: float) -> None:
    # it cancelled every in-flight call the moment the drain began
    with pytest.raises(ConfigurationError, match="grace="):
        Service("greeter", registry="memory://x", grace=grace)


def test_names_that_look_like_numbers_somewhere_are_still_names() -> None:
    for name in ("host1", "1a.example", "pod-10-0-0-5.ns.pod", "svc.ns.svc.cluster.local."):
        assert advertise_host(name) == name
    assert Service("greeter", registry="memory://x", grace=float("inf")).grace == float("inf")


def test_run_refuses_an_advertise_option_with_a_port() -> None:
    done = subprocess.run(
        [*MICROWEAVE, "run", "examples/greeter/service.py", "--advertise", "10.0.0.1:80"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "--advertise" in done.stderr and "without a port" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("bind", ["[::1]:0", "[::]:0"])
async def test_an_ipv6_bind_serves_every_transport_and_advertises_a_dialable_address(
    registry: Registry, bind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[::] listens on IPv6 and IPv4 alike (an IPv6-first pod network): the bracketed host goes
    to each listener as it needs it, and what is advertised is host:port callers can split."""
    monkeypatch.delenv("MICRO_ADVERTISE_ADDRESS", raising=False)
    advertise = "::1" if bind == "[::]:0" else None  # [::] alone would advertise the route's IPv4
    async with greeter(registry, address=bind, advertise_address=advertise) as service:
        [record] = await registry.get_service("greeter")
        [node] = record.nodes
        for address in (node.address, node.metadata["tcp_address"]):
            assert address.startswith("[::1]:"), address
        assert service.addresses["grpc"] == node.address
        for transport in ("grpc", "tcp"):
            async with Client(registry=registry, transports=(transport,)) as client:
                reply = await client.call("greeter", "Greeter.SayHello", Hello(name="ada"), response=Hello)
                assert reply == Hello(name="hello ada")
