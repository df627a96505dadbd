"""The Consul registry's pieces that need no agent: the URL, the registration body go-micro
expects, and reading health answers (tag forms, critical nodes)."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest

from microweave.errors import ConfigurationError, RegistryError
from microweave.registry import Endpoint, Node, Service
from microweave.registry import from_url as registry_from_url
from microweave.registry.consul import ConsulRegistry
from microweave.registry.consul.encoding import decode_entries, registration


def consul(url: str, **options: Any) -> ConsulRegistry:
    registry = registry_from_url(url, **options)
    assert isinstance(registry, ConsulRegistry)
    return registry


# -- the URL -----------------------------------------------------------------------------------


def test_url_options_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    registry = consul("consul://")
    assert registry.address == "127.0.0.1:8500" and registry.ttl is None and registry.restart_grace == 15
    assert repr(consul("consul://10.0.0.1")) == "<ConsulRegistry consul://10.0.0.1:8500>"
    registry = consul("consul://h:8501?ttl=9&wait=2&max_queries=3&watch_buffer=7&restart_grace=0")
    assert (registry.ttl, registry.wait, registry.max_queries, registry.watch_buffer) == (9, 2, 3, 7)
    assert registry.restart_grace == 0
    assert consul("consul://h:1?ttl=9", ttl=4).ttl == 4  # an explicit argument wins over the URL


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("consul://a:1,b:2", "one agent address"),
        ("consul://a:1/micro", "no path"),
        ("consul://a:1?colour=red", "unknown option 'colour'"),
        ("consul://a:1?ttl=soon", "ttl='soon'"),
        ("consul://a:1?max_queries=0", "max_queries=0 is below"),
        ("consul://a:x", "host:port"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        consul(url)


def test_token_precedence_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert consul("consul://a:1")._agent._headers == {"X-Consul-Token": "from-env"}
    assert consul("consul://a:1?token=from-url")._agent._headers == {"X-Consul-Token": "from-url"}
    registry = consul("consul://a:1?token=from-url", token="explicit")
    assert registry._agent._headers == {"X-Consul-Token": "explicit"}
    assert "explicit" not in repr(registry) and "explicit" not in repr(registry._agent)
    assert "from-url" not in registry.url


# -- the registration body ---------------------------------------------------------------------


def record(address: str = "127.0.0.1:50071", **metadata: str) -> Service:
    return Service(
        name="greeter",
        version="1.0.0",
        endpoints=[Endpoint(name="Greeter.Hello")],
        nodes=[Node(id="greeter-1", address=address, metadata=metadata)],
    )


@pytest.mark.parametrize(
    ("ttl", "deregister"), [(2, "65000ms"), (60, "65000ms"), (90, "95000ms"), (1.5, "65000ms")]
)
def test_ttl_check_as_go_micro_makes_it(ttl: float, deregister: str) -> None:
    service = record(protocol="grpc")
    body = registration(service, service.nodes[0], ttl)
    assert body["Check"] == {
        "TTL": f"{round(ttl * 1000)}ms",
        "Status": "passing",
        "DeregisterCriticalServiceAfter": deregister,  # max(TTL, 1 min) + 5 s
    }
    assert (body["ID"], body["Name"], body["Address"], body["Port"]) == (
        "greeter-1",
        "greeter",
        "127.0.0.1",
        50071,
    )


def test_no_ttl_no_check() -> None:
    service = record()
    assert "Check" not in registration(service, service.nodes[0], None)


def test_addresses() -> None:
    service = record("[::1]:80")
    body = registration(service, service.nodes[0], None)
    assert (body["Address"], body["Port"]) == ("::1", 80)
    service = record("no-port")
    with pytest.raises(RegistryError, match="not host:port"):
        registration(service, service.nodes[0], None)


# -- reading health answers ---------------------------------------------------------------------


def packed(value: Any) -> str:
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    return zlib.compress(data).hex()


def entry(node_id: str, tags: list[str], *statuses: str, address: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "Node": {"Address": "192.168.0.9"},
        "Service": {"ID": node_id, "Service": "greeter", "Tags": tags, "Address": address, "Port": 8080},
        "Checks": [{"Status": status, "ServiceID": node_id} for status in statuses],
    }


def test_critical_nodes_are_left_out() -> None:
    body = json.dumps(
        [
            entry("ok", [], "passing", "passing"),
            entry("warning", [], "passing", "warning"),
            entry("dead", [], "passing", "critical"),  # its TTL expired
            entry("node-down", [], "critical", "passing"),  # its Consul node failed
        ]
    ).encode()
    assert set(decode_entries("greeter", body)) == {"ok", "warning"}


def test_the_first_tag_form_wins_as_in_go_micro() -> None:
    hello = {"name": "Greeter.Hello", "request": None, "response": None, "metadata": {}}
    bye = {"name": "Greeter.Bye", "request": None, "response": None, "metadata": {}}
    tags = [
        "e-" + packed(hello),
        "e=" + json.dumps(bye),
        "t=" + json.dumps({"a": "1"}),
        "t-" + packed({"b": "2"}),
    ]
    [record_] = decode_entries("greeter", json.dumps([entry("n", tags)]).encode()).values()
    assert [e.name for e in record_.endpoints] == ["Greeter.Hello"]  # the e= after e- is skipped
    assert record_.nodes[0].metadata == {"a": "1"}  # the t- after t= is skipped


def test_node_address_falls_back_to_the_consul_node_and_brackets_v6() -> None:
    body = json.dumps([entry("a", [], address=""), entry("b", [], address="fd00::1")]).encode()
    found = decode_entries("greeter", body)
    assert found["a"].nodes[0].address == "192.168.0.9:8080"
    assert found["b"].nodes[0].address == "[fd00::1]:8080"


def test_version_tag_is_raw_text_and_service_metadata_travels_in_an_s_tag() -> None:
    service = Service(name="greeter", version="2.0", metadata={"owner": "x"}, nodes=[Node("n", "1.2.3.4:5")])
    tags = registration(service, service.nodes[0], None)["Tags"]
    assert "v-" + packed(b"2.0") in tags
    [back] = decode_entries("greeter", json.dumps([entry("n", tags)]).encode()).values()
    assert (back.version, back.metadata) == ("2.0", {"owner": "x"})


def test_an_answer_that_is_not_consul_s_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="unexpected answer"):
        decode_entries("greeter", b'{"not": "a list"}')
