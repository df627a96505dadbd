"""The etcd config source's URL, keys and errors, without an etcd: what is refused before a
byte is sent, and how keys map both ways."""

from __future__ import annotations

import pytest

from microweave._backends import load_config_source
from microweave.config import Config
from microweave.config.sources.etcd import DEFAULT_PREFIX, EtcdSource
from microweave.errors import ConfigurationError


def source(url: str, **kwargs: object) -> EtcdSource:
    built = load_config_source(url, **kwargs)
    assert isinstance(built, EtcdSource)
    return built


def test_the_url_names_hosts_and_prefix_never_credentials() -> None:
    s = source("etcd://ada:pw-1@10.0.0.1:2379,10.0.0.2/app/greeter/?tls=true&timeout=2")
    assert s.url == "etcd://10.0.0.1:2379,10.0.0.2:2379/app/greeter"
    assert "pw-1" not in repr(s) and s.options.username == "ada" and s.options.tls
    assert s.options.timeout == 2 and not s.optional
    assert source("etcd://127.0.0.1:2379").options.prefix == DEFAULT_PREFIX == "/micro/config"
    assert source("etcd://h:1/p?optional=yes").optional
    assert source("etcd://h:1/p", optional=True).optional


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("etcd://h:1/p?ttl=5", "unknown option(s)"),  # a registry option, not a config one
        ("etcd://h:1/p?watch_buffer=5", "unknown option(s)"),
        ("etcd://h:1/p?optional=maybe", "is not true or false"),
        ("etcd://h:1/p?username=ada", "give both username and password"),
        ("etcd://h:99999/p", "port from 1 to 65535"),
    ],
)
def test_bad_urls_are_refused_when_built(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Config([url])
    assert caught.value.detail.startswith("etcd://h:") and says in caught.value.detail, caught.value


def test_the_registry_keeps_its_own_options_and_prefix() -> None:
    from microweave.registry import from_url

    registry = from_url("etcd://h:1?ttl=5&watch_buffer=3")
    assert registry.options.prefix == "/micro/registry" and registry.options.ttl == 5  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="unknown option"):
        from_url("etcd://h:1?optional=true")


def test_keys_map_both_ways_and_nothing_else_is_a_setting() -> None:
    s = source("etcd://h:1/cfg")
    assert s._key("") == b"/cfg" and s._key("db.port") == b"/cfg/db/port"
    for dotted in ("db.port", "a", "x.y.z"):
        assert s._dotted(s._key(dotted)) == dotted
    assert s._dotted(b"/cfg/") == ""
    for other in (b"/cfgx/a", b"/cfg-a", b"/cfg/a//b", b"/cfg/a/", b"/cfg/a.b", b"/cfg/\xff"):
        assert s._dotted(other) is None, other


@pytest.mark.parametrize("key", ["a/b", "db.", ".db", "a..b"])
async def test_a_key_that_is_no_dotted_name_is_refused(key: str) -> None:
    s = source("etcd://127.0.0.1:1/cfg")
    with pytest.raises(ConfigurationError, match="not a dotted key"):
        await s.set(key, "x")
    with pytest.raises(ConfigurationError, match="not a dotted key"):
        await s.delete(key)
    await s.aclose()
