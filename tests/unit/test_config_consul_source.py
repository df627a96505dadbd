"""The Consul config source's URL, keys and errors, without a Consul: what is refused before
a byte is sent, how keys map both ways, and what a hostile listing can do."""

from __future__ import annotations

import base64
import json

import pytest

from microweave._backends import load_config_source
from microweave.config.sources import consul
from microweave.config.sources.consul import DEFAULT_PREFIX, ConsulSource
from microweave.errors import ConfigurationError, Unavailable

TOKEN = "s3cr3t-t0ken-0000"


def source(url: str, **kwargs: object) -> ConsulSource:
    built = load_config_source(url, **kwargs)
    assert isinstance(built, ConsulSource)
    return built


def listing(*entries: tuple[str, bytes | None]) -> bytes:
    return json.dumps(
        [{"Key": k, "Value": None if v is None else base64.b64encode(v).decode()} for k, v in entries]
    ).encode()


def test_the_url_names_address_and_prefix_never_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    s = source(f"consul://10.0.0.1:8501/app/greeter/?token={TOKEN}&timeout=2&wait=10&optional=yes")
    assert s.url == "consul://10.0.0.1:8501/app/greeter" and s.prefix == "app/greeter"
    assert TOKEN not in repr(s) and TOKEN not in repr(s._agent) and s.optional and s.wait == 10
    assert s._agent.timeout == 2
    assert source("consul://127.0.0.1:8500").prefix == DEFAULT_PREFIX == "micro/config"
    assert source("consul://h").url == "consul://h:8500/micro/config"
    assert not source("consul://h:1/p?optional=true", optional=False).optional  # keywords win
    assert source("consul://h:1/p?optional=true", optional=None).optional
    # the token: keyword, else URL, else CONSUL_HTTP_TOKEN (read where the environment is read)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert source("consul://h:1/p")._agent._headers == {"X-Consul-Token": "from-env"}
    assert source("consul://h:1/p?token=from-url")._agent._headers == {"X-Consul-Token": "from-url"}
    assert source("consul://h:1/p?token=from-url", token="kw")._agent._headers == {"X-Consul-Token": "kw"}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("consul://h:1/p?ttl=5", "unknown option 'ttl'"),  # a registry option, not a config one
        ("consul://h:1/p?optional=maybe", "is not true or false"),
        ("consul://h:1/p?wait=soon", "is not a float"),
        ("consul://h:1/p?wait=601", "wait=601.0 is outside"),  # Consul caps a wait at 10 min
        ("consul://h:1/p?max_response=10", "max_response=10 is outside"),
        ("consul://h:99999/p", "a port from 1 to 65535"),
        ("consul://a:1,b:2/p", "one agent address"),
        ("consul://h:1/a//b", "empty, '.' or '..' level"),
        (f"consul://{TOKEN}@h:1/p", "give the ACL token as [?]token="),
    ],
)
def test_bad_urls_are_refused_when_built(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        source(url)
    assert TOKEN not in caught.value.detail


def test_keys_map_both_ways() -> None:
    s = source("consul://h:1/app")
    assert s._path("") == "/v1/kv/app" and s._path("db.port") == "/v1/kv/app/db/port"
    assert s._path("a b.c%d") == "/v1/kv/app/a%20b/c%25d"
    for bad in ("a..b", ".a", "a/b"):
        with pytest.raises(ConfigurationError, match="not a dotted key"):
            s._path(bad)
    body = listing(
        ("app", b"name: doc\n"),
        ("app/", None),  # a folder marker
        ("app/db/", None),
        ("app/db/port", b"5433"),
        ("app/empty", None),  # a key with no value is an empty leaf
        ("app/a.b", b"1"),  # a '.' in a level: no setting
        ("app//x", b"1"),  # an empty level: no setting
        ("app-other/x", b"1"),  # in the listing, not under the prefix
    )
    snapshot = s._snapshot(body)
    assert {k: (v.data, v.format) for k, v in snapshot.items()} == {
        "": (b"name: doc\n", "yaml"),
        "db.port": (b"5433", "text"),
        "empty": (b"", "text"),
    }
    # `<prefix>/` holds the document when the prefix key does not (or is empty)
    assert s._snapshot(listing(("app", b""), ("app/", b"x: 1")))[""].data == b"x: 1"
    assert s._snapshot(listing(("app", b"y: 2"), ("app/", b"x: 1")))[""].data == b"y: 2"


def test_a_hostile_listing_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    s = source("consul://h:1/app")
    for body, says in (
        (b"{not json", "unexpected answer"),
        (b'[{"Key": "app/x", "Value": "!!not base64!!"}]', "not base64-encoded"),
        (b'[{"Key": 5}]', "unexpected answer"),
    ):
        with pytest.raises(Unavailable, match=says) as caught:
            s._snapshot(body)
        assert caught.value.detail.startswith(s.url)
    monkeypatch.setattr(consul, "MAX_KEYS", 2)
    with pytest.raises(Unavailable, match="more than a config source takes"):
        s._snapshot(listing(("app/a", b"1"), ("app/b", b"1"), ("app/c", b"1")))
