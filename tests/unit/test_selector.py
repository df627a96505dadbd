"""Selector strategies, filters and outlier ejection."""

from __future__ import annotations

import collections
import time

import pytest

from microweave import Selector, ServiceNotFound, by_metadata, by_version
from microweave.registry import Node, Service


def node(id: str, **metadata: str) -> Node:
    return Node(id=id, address=f"127.0.0.1:{abs(hash(id)) % 60000 + 1}", metadata=metadata)


def services(*nodes: Node, version: str = "1.0.0") -> list[Service]:
    return [Service(name="greeter", version=version, nodes=list(nodes))]


ABC = services(node("a"), node("b"), node("c"))


def picks(selector: Selector, candidates: list[Service], n: int, **kwargs: object) -> list[str]:
    return [selector.select("greeter", candidates, **kwargs).id for _ in range(n)]  # type: ignore[arg-type]


def test_round_robin_cycles_through_every_node() -> None:
    got = picks(Selector("round_robin"), ABC, 9)
    assert sorted(got[:3]) == ["a", "b", "c"]
    assert got[:3] * 3 == got


def test_random_reaches_every_node() -> None:
    counts = collections.Counter(picks(Selector("random"), ABC, 300))
    assert set(counts) == {"a", "b", "c"}


def test_p2c_reaches_every_node_when_idle() -> None:
    counts = collections.Counter(picks(Selector("p2c"), ABC, 300))
    assert set(counts) == {"a", "b", "c"}


def test_p2c_prefers_the_node_with_fewer_calls_in_flight() -> None:
    selector = Selector("p2c")
    two = services(node("busy"), node("idle"))
    busy = two[0].nodes[0]
    for _ in range(5):
        selector.started(busy)
    # with two nodes both are always drawn, so the idle one must win every time
    assert set(picks(selector, two, 50)) == {"idle"}
    for _ in range(5):
        selector.finished(busy)
    assert set(picks(selector, two, 200)) == {"busy", "idle"}


def test_p2c_avoids_the_busiest_of_many() -> None:
    selector = Selector("p2c")
    nodes = [node(str(i)) for i in range(4)]
    for _ in range(10):
        selector.started(nodes[0])
    # node 0 can only win a draw against itself, which sampling without replacement never does
    assert "0" not in picks(selector, services(*nodes), 300)


def test_default_strategy_is_p2c() -> None:
    assert Selector().strategy == "p2c"


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        Selector("fastest")  # type: ignore[arg-type]


def test_single_node() -> None:
    for strategy in ("random", "round_robin", "p2c"):
        assert picks(Selector(strategy), services(node("only")), 3) == ["only"] * 3  # type: ignore[arg-type]


def test_no_nodes_is_service_not_found() -> None:
    with pytest.raises(ServiceNotFound):
        Selector().select("greeter", [])
    with pytest.raises(ServiceNotFound):
        Selector().select("greeter", services())


def test_filter_by_version() -> None:
    mixed = [*services(node("old"), version="1.0.0"), *services(node("new1"), node("new2"), version="2.0.0")]
    selector = Selector("round_robin")
    assert set(picks(selector, mixed, 10, filters=[by_version("2.0.0")])) == {"new1", "new2"}
    assert set(picks(selector, mixed, 10, filters=[by_version("1.0.0", "3.0.0")])) == {"old"}
    with pytest.raises(ServiceNotFound, match="no node that matches"):
        selector.select("greeter", mixed, [by_version("9")])


def test_filter_by_metadata() -> None:
    candidates = services(
        node("eu1", region="eu"), node("us1", region="us"), node("eu2", region="eu", gpu="1")
    )
    selector = Selector("round_robin")
    assert set(picks(selector, candidates, 10, filters=[by_metadata(region="eu")])) == {"eu1", "eu2"}
    assert set(picks(selector, candidates, 5, filters=[by_metadata(region="eu", gpu="1")])) == {"eu2"}
    with pytest.raises(ServiceNotFound):
        selector.select("greeter", candidates, [by_metadata(region="mars")])


def test_selector_wide_filters_combine_with_per_call_ones() -> None:
    mixed = [
        *services(node("v1-eu", region="eu"), version="1"),
        *services(node("v2-eu", region="eu"), node("v2-us", region="us"), version="2"),
    ]
    selector = Selector("round_robin", filters=[by_version("2")])
    assert set(picks(selector, mixed, 10)) == {"v2-eu", "v2-us"}
    assert set(picks(selector, mixed, 10, filters=[by_metadata(region="eu")])) == {"v2-eu"}


def test_exclude_skips_nodes_already_tried() -> None:
    selector = Selector("round_robin")
    assert set(picks(selector, ABC, 10, exclude=["a", "b"])) == {"c"}
    # excluding everything falls back to all nodes rather than failing the retry
    assert set(picks(selector, ABC, 10, exclude=["a", "b", "c"])) == {"a", "b", "c"}


def test_failed_node_is_ejected_then_readmitted() -> None:
    selector = Selector("round_robin", eject_for=0.2)
    a = ABC[0].nodes[0]
    selector.started(a)
    selector.finished(a, failed=True)
    assert "a" not in picks(selector, ABC, 20)
    # after the ejection period it is picked again (bounded wait, no timing asserted)
    limit = time.monotonic() + 10
    while "a" not in picks(selector, ABC, 3):
        assert time.monotonic() < limit, "the node was never readmitted"
        time.sleep(0.05)


def test_success_clears_an_ejection() -> None:
    selector = Selector("round_robin", eject_for=60)
    a = ABC[0].nodes[0]
    selector.started(a)
    selector.finished(a, failed=True)
    assert "a" not in picks(selector, ABC, 20)
    selector.started(a)
    selector.finished(a)
    assert "a" in picks(selector, ABC, 3)


def test_when_every_node_is_ejected_all_are_used() -> None:
    selector = Selector("round_robin", eject_for=60)
    for n in ABC[0].nodes:
        selector.started(n)
        selector.finished(n, failed=True)
    assert set(picks(selector, ABC, 9)) == {"a", "b", "c"}


def test_in_flight_bookkeeping_never_goes_negative() -> None:
    selector = Selector("p2c")
    two = services(node("x"), node("y"))
    x = two[0].nodes[0]
    selector.finished(x)  # a stray finish (e.g. after a restart of the counters)
    selector.started(two[0].nodes[1])
    assert set(picks(selector, two, 20)) == {"x"}
