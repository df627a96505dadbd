"""The NATS registry's parts that need no server: go-micro's messages, the watcher's clocks,
the $SRV answers and the per-endpoint counters behind $SRV.STATS."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from microweave.errors import NotFound
from microweave.registry import Action, Endpoint, Event, Node, Service
from microweave.registry.nats import srv, watch
from microweave.registry.nats.watch import NatsWatcher
from microweave.registry.nats.wire import (
    MAX_MESSAGE,
    Announce,
    decode_announce,
    decode_query,
    decode_service,
    encode_announce,
    encode_query,
    encode_service,
)
from microweave.server import stats

RECORD = Service(
    "greeter",
    version="1.0.0",
    endpoints=[Endpoint("Greeter.SayHello", metadata={"stream": "unary"})],
    nodes=[Node("greeter-1", "127.0.0.1:5", {"protocol": "grpc"})],
)

# -- wire ------------------------------------------------------------------------------------------


def test_go_micro_queries_are_understood() -> None:
    # Go's encoding/json of registry.Result{Action: "get", Service: &Service{Name: "greeter"}}
    get = (
        b'{"Service":{"name":"greeter","version":"","metadata":null,"endpoints":null,"nodes":null},'
        b'"Action":"get"}'
    )
    assert decode_query(get) == ("get", "greeter")
    assert decode_query(b'{"Service":null,"Action":"list"}') == ("list", "")
    for junk in (b"", b"[]", b"{", b'{"Action":"get"}', b'{"Action":"get","Service":{"name":""}}',
                 b'{"Action":"put","Service":{"name":"x"}}'):  # fmt: skip
        assert decode_query(junk) is None, junk
    # ours are go-micro's, field for field
    assert json.loads(encode_query("greeter")) == json.loads(get)
    assert json.loads(encode_query(None)) == {"Service": None, "Action": "list"}


def test_records_carry_their_ttl_and_read_back() -> None:
    data = json.loads(encode_service(RECORD, 2.5))
    assert data["ttl"] == 2.5 and data["name"] == "greeter"
    assert decode_service(encode_service(RECORD, 2.5)) == (RECORD, 2.5)
    assert decode_service(encode_service(RECORD, None)) == (RECORD, 0.0)  # 0: no TTL
    announce = json.loads(encode_announce("update", RECORD, 3))
    assert set(announce) == {"Service", "Action"} and announce["Action"] == "update"
    assert decode_announce(encode_announce("update", RECORD, 3)) == Announce("update", RECORD, 3.0)


def test_go_micro_records_with_nulls_and_no_ttl() -> None:
    go = {
        "name": "go.greeter",
        "version": "latest",
        "metadata": None,
        "endpoints": [{"name": "Greeter.Hello", "request": None, "response": None, "metadata": None}],
        "nodes": [{"id": "go-1", "address": "127.0.0.1:1", "metadata": None}],
    }
    service, ttl = decode_service(json.dumps(go).encode()) or (None, None)
    assert ttl is None  # a go-micro peer says nothing: watchers use the URL's ttl
    assert service == Service(
        "go.greeter",
        version="latest",
        endpoints=[Endpoint("Greeter.Hello")],
        nodes=[Node("go-1", "127.0.0.1:1")],
    )
    for bad_ttl in (-1, True, "5", None):
        assert decode_service(json.dumps({**go, "ttl": bad_ttl}).encode())[1] is None  # type: ignore[index]


def test_what_is_not_a_record_is_ignored() -> None:
    assert decode_service(b'{"name":""}') is None
    assert decode_service(b'{"name":"x","nodes":[{"id":1}]}') is None
    assert decode_service(b'"x"') is None
    assert decode_announce(b'{"Service":{"name":"x"}}') is None  # no action
    assert decode_announce(b'{"Action":"create","Service":null}') is None
    huge = json.dumps({"name": "x", "metadata": {"k": "v" * MAX_MESSAGE}}).encode()
    assert decode_service(huge) is None


# -- the watcher's clocks --------------------------------------------------------------------------


async def _closed(_: NatsWatcher) -> None:
    return None


def watcher(service: str | None = "greeter", *, buffer: int = 100, default_ttl: float = 90.0) -> NatsWatcher:
    return NatsWatcher(service, buffer=buffer, default_ttl=default_ttl, on_close=_closed)


def events(w: NatsWatcher) -> list[tuple[Action, str]]:
    out = []
    queue = w.events._queue
    while not queue.empty():
        event = queue.get_nowait()
        assert isinstance(event, Event)
        out.append((event.action, ",".join(n.id for n in event.service.nodes)))
    return out


def node(node_id: str = "n1", **metadata: str) -> Service:
    return RECORD.with_nodes([Node(node_id, "127.0.0.1:1", metadata)])


def test_actions_come_from_what_the_watcher_knows() -> None:
    w = watcher()
    w.announce(Announce("create", node(), 2), now=0)
    w.announce(Announce("create", node(), 2), now=0.5)  # a heartbeat: nothing changed
    w.announce(Announce("create", node(color="blue"), 2), now=1)  # go-micro says create on change
    w.announce(Announce("delete", node(color="blue"), None), now=1.5)
    w.announce(Announce("delete", node("never-seen"), None), now=1.6)  # still worth telling
    w.announce(Announce("create", node().with_nodes([]), 2), now=2)  # no nodes: nothing
    w.announce(Announce("create", Service("billing", nodes=[Node("b", "x")]), 2), now=2)  # not watched
    assert events(w) == [
        (Action.CREATE, "n1"),
        (Action.UPDATE, "n1"),
        (Action.DELETE, "n1"),
        (Action.DELETE, "never-seen"),
    ]


def test_a_silent_node_expires_after_its_own_ttl() -> None:
    w = watcher(default_ttl=30)
    w.announce(Announce("create", node("ours"), 2), now=0)
    w.announce(Announce("create", node("go"), None), now=0)  # go-micro's: the default TTL
    w.announce(Announce("create", node("forever"), 0), now=0)  # registered without a TTL
    events(w)
    w.announce(Announce("create", node("ours"), 2), now=1.5)  # heartbeat re-arms the clock
    w.expire(3.4)
    assert events(w) == []
    w.expire(3.5)
    assert events(w) == [(Action.DELETE, "ours")]
    w.expire(29.9)
    assert events(w) == []
    w.expire(30)
    assert events(w) == [(Action.DELETE, "go")]
    w.expire(1e9)
    assert events(w) == []


def test_nodes_read_by_lookup_are_timed_without_an_event() -> None:
    w = watcher()
    w.seed(node("looked-up"), 2, now=0)
    w.seed(node("other-service").with_nodes([]), 2, now=0)
    assert events(w) == []
    w.announce(Announce("create", node("looked-up"), 2), now=1)  # its heartbeat: no news
    assert events(w) == []
    w.expire(3)
    assert events(w) == [(Action.DELETE, "looked-up")]


def test_after_a_reconnect_clocks_restart_and_the_consumer_resyncs() -> None:
    w = watcher()
    w.announce(Announce("create", node(), 2), now=0)
    events(w)
    w.reconnected(now=10)  # nothing was heard for 10 s, through no fault of the node
    assert [e[0] for e in events(w)] == [Action.RESYNC]
    w.expire(11)
    assert events(w) == []
    w.expire(12)
    assert events(w) == [(Action.DELETE, "n1")]


def test_a_consumer_that_falls_behind_gets_resync() -> None:
    w = watcher(buffer=3)
    for i in range(10):
        w.announce(Announce("create", node(f"n{i}"), 2), now=0)
    got = events(w)
    assert len(got) <= 3 and Action.RESYNC in [a for a, _ in got]


def test_the_nodes_a_watcher_times_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch, "MAX_TRACKED", 2)
    w = watcher()
    for i in range(4):
        w.announce(Announce("create", node(f"n{i}"), 2), now=0)
    assert len(w.nodes) == 2
    assert [a for a, _ in events(w)] == [Action.CREATE] * 4  # reported, only not timed


async def test_a_closed_watcher_ends() -> None:
    closed: list[NatsWatcher] = []

    async def on_close(w: NatsWatcher) -> None:
        closed.append(w)

    w = NatsWatcher(None, buffer=10, default_ttl=1, on_close=on_close)
    w.announce(Announce("create", node(), 2), now=0)
    await w.aclose()
    assert closed == [w]
    with pytest.raises(StopAsyncIteration):
        await anext(w)
    w.announce(Announce("create", node("late"), 2), now=0)  # after close: ignored
    with pytest.raises(StopAsyncIteration):
        await anext(w)


# -- $SRV --------------------------------------------------------------------------------------------


def test_names_and_versions_fit_adr_32() -> None:
    assert srv.token("go.micro.srv.greeter") == "go_micro_srv_greeter"
    assert srv.token("greeter-1_a") == "greeter-1_a" and srv.token("") == "_"
    assert [srv.semver(v) for v in ("1.0.0", "1.0.0-rc.1+b.2", "latest", "", "1.0", "01")] == [
        "1.0.0", "1.0.0-rc.1+b.2", "0.0.0-latest", "0.0.0", "0.0.0-1-0", "0.0.0-v01",
    ]  # fmt: skip


def listing(name: str, node_id: str, version: str = "1.0.0") -> srv.Listing:
    record = Service(
        name,
        version=version,
        endpoints=[
            Endpoint("Greeter.SayHello"),
            Endpoint("Greeter.Hi", metadata={"path": "/pkg.Greeter/Hi"}),  # a grpcio servicer's
        ],
        nodes=[Node(node_id, "127.0.0.1:9", {"protocol": "grpc"})],
    )
    return srv.Listing(record, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


def test_control_subjects_pick_nodes() -> None:
    nodes = [listing("greeter", "g.1"), listing("greeter", "g.2"), listing("go.billing", "b1", "latest")]

    def ids(subject: str) -> list[str]:
        return [json.loads(r)["id"] for r in srv.answer(subject, nodes, lambda _: None)]

    assert ids("$SRV.PING") == ["g_1", "g_2", "b1"]
    assert ids("$SRV.INFO.greeter") == ["g_1", "g_2"]
    assert ids("$SRV.STATS.greeter.g_2") == ["g_2"]
    assert ids("$SRV.PING.go_billing") == ["b1"]
    for subject in (
        "$SRV",
        "$SRV.PONG",
        "$SRV.PING.nobody",
        "$SRV.PING.greeter.g_3",
        "$SRV.PING.a.b.c",
        "X.PING",
    ):
        assert ids(subject) == [], subject
    [ping] = srv.answer("$SRV.PING.go_billing", nodes, lambda _: None)
    assert json.loads(ping) == {
        "type": "io.nats.micro.v1.ping_response",
        "name": "go_billing",
        "id": "b1",
        "version": "0.0.0-latest",
        "metadata": {
            "protocol": "grpc",
            "microweave.service": "go.billing",
            "microweave.version": "latest",
            "microweave.node": "b1",
            "microweave.address": "127.0.0.1:9",
        },
    }


def test_stats_report_the_counts_of_each_endpoint() -> None:
    counts = {"Greeter.SayHello": (4, 1, "404:gone", 4000), "/pkg.Greeter/Hi": (2, 0, "", 10)}
    [reply] = srv.answer("$SRV.STATS", [listing("greeter", "g1")], {"g1": counts}.get)
    data = json.loads(reply)
    assert data["type"] == "io.nats.micro.v1.stats_response"
    assert data["started"] == "2026-01-02T03:04:05Z"
    by_name = {e["name"]: e for e in data["endpoints"]}
    assert by_name["Greeter_SayHello"] == {
        "name": "Greeter_SayHello",
        "subject": "/greeter.Greeter/SayHello",
        "queue_group": "",
        "num_requests": 4,
        "num_errors": 1,
        "last_error": "404:gone",
        "processing_time": 4000,
        "average_processing_time": 1000,
    }
    assert (by_name["Greeter_Hi"]["subject"], by_name["Greeter_Hi"]["num_requests"]) == ("/pkg.Greeter/Hi", 2)
    [quiet] = srv.answer("$SRV.STATS", [listing("greeter", "g2")], {"g1": counts}.get)  # not counted
    assert {e["num_requests"] for e in json.loads(quiet)["endpoints"]} == {0}


# -- the counters ----------------------------------------------------------------------------------


class _Target:
    def __init__(self, name: str) -> None:
        self.name = name


class _Call:
    def __init__(self, target: str | None) -> None:
        self.target = _Target(target) if target else None


async def test_counting_counts_calls_errors_and_streams() -> None:
    counting = stats.track("node-under-test")

    async def ok(call: Any) -> bytes:
        await asyncio.sleep(0)
        return b"ok"

    async def fails(call: Any) -> bytes:
        raise NotFound("no such thing")

    async def crashes(call: Any) -> bytes:
        raise ValueError("secret internals")

    async def replies(call: Any) -> AsyncIterator[bytes]:
        yield b"1"
        yield b"2"

    for _ in range(2):
        assert await counting.unary(_Call("A.B"), ok) == b"ok"  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await counting.unary(_Call("A.B"), fails)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await counting.unary(_Call("A.C"), crashes)  # type: ignore[arg-type]
    await counting.unary(_Call(None), ok)  # type: ignore[arg-type]  # an unknown path: not counted
    assert [r async for r in counting.stream(_Call("A.S"), replies)] == [b"1", b"2"]  # type: ignore[arg-type]

    counted = stats.counts("node-under-test")
    assert counted is not None and set(counted) == {"A.B", "A.C", "A.S"}
    requests, errors, last_error, nanos = counted["A.B"]
    assert (requests, errors, last_error) == (3, 1, "404:no such thing") and nanos > 0
    assert counted["A.C"][:3] == (1, 1, "500:ValueError")  # the type, never the message
    assert counted["A.S"][:3] == (1, 0, "")
    assert stats.counts("another-node") is None

    del counting
    gc.collect()
    assert stats.counts("node-under-test") is None  # gone with its pipeline
