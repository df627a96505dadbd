"""Backend URLs, the scheme table and the environment (go-micro's MICRO_* names)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from microweave import ConfigurationError, Service, _backends
from microweave._backends import REGISTRIES, Settings, load_broker, load_registry, parse_url
from microweave.registry.local import LocalRegistry
from microweave.registry.memory import MemoryRegistry


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MICRO_REGISTRY", "MICRO_REGISTRY_ADDRESS", "MICRO_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def test_parse_url_with_hosts_path_and_query() -> None:
    url = parse_url("etcd://10.0.0.1:2379,10.0.0.2:2379/micro?ttl=15&tls=1")
    assert url.scheme == "etcd"
    assert url.hosts == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert url.path == "/micro"
    assert url.query == {"ttl": "15", "tls": "1"}


def test_parse_url_minimal_and_case() -> None:
    url = parse_url("MEMORY://")
    assert (url.scheme, url.hosts, url.path, url.query) == ("memory", [], "", {})
    assert parse_url("local:///var/run/reg").path == "/var/run/reg"


@pytest.mark.parametrize("bad", ["etcd", "10.0.0.1:2379", ""])
def test_not_a_url(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a backend URL; write it as scheme://address"):
        parse_url(bad)


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_registry("zookeeper://h:2181")
    message = info.value.detail
    assert "unknown registry scheme 'zookeeper'" in message
    for scheme in REGISTRIES:
        assert f"{scheme}://" in message


def test_missing_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRIES, "fancy", ("microweave_no_such_driver_module", "Fancy", "fancy"))
    with pytest.raises(ConfigurationError) as info:
        load_registry("fancy://h:1")
    assert 'pip install "microweave[fancy]"' in info.value.detail
    assert "microweave_no_such_driver_module" in info.value.detail


def test_memory_urls() -> None:
    a = load_registry("memory://")
    assert isinstance(a, MemoryRegistry)
    assert load_registry("memory://") is a  # one per process
    named = load_registry("memory://backends-unit")
    assert named is not a and load_registry("memory://backends-unit") is named


def test_local_url_with_a_path(tmp_path: Path) -> None:
    registry = load_registry(f"local://{tmp_path}")
    assert isinstance(registry, LocalRegistry) and registry.root == tmp_path


def test_default_is_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    registry = load_registry()
    assert isinstance(registry, LocalRegistry)
    assert registry.root == tmp_path / "microweave" / "registry"


def test_environment_go_micro_style(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MICRO_REGISTRY", "local")
    monkeypatch.setenv("MICRO_REGISTRY_ADDRESS", str(tmp_path / "env"))
    registry = load_registry()
    assert isinstance(registry, LocalRegistry) and registry.root == tmp_path / "env"
    monkeypatch.setenv("MICRO_REGISTRY", "memory")
    monkeypatch.delenv("MICRO_REGISTRY_ADDRESS")
    assert isinstance(load_registry(), MemoryRegistry)


def test_environment_as_a_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MICRO_REGISTRY", f"local://{tmp_path / 'url'}")
    registry = load_registry()
    assert isinstance(registry, LocalRegistry) and registry.root == tmp_path / "url"


def test_explicit_url_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_REGISTRY", "zookeeper")  # would fail if it were read
    assert isinstance(load_registry("memory://"), MemoryRegistry)


def test_unknown_scheme_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICRO_REGISTRY", "zookeeper")
    with pytest.raises(ConfigurationError, match="unknown registry scheme 'zookeeper'"):
        load_registry()


def test_settings_read_from_a_mapping() -> None:
    settings = Settings.from_env(
        {
            "MICRO_REGISTRY": "etcd",
            "MICRO_REGISTRY_ADDRESS": "h:2379",
            "MICRO_SERVER_ADDRESS": ":9090",
            "MICRO_TCP_ADDRESS": ":9091",
        }
    )
    assert settings == Settings(
        registry="etcd", registry_address="h:2379", server_address=":9090", tcp_address=":9091"
    )
    assert Settings.from_env({"MICRO_REGISTRY": ""}) == Settings(None, None, None, None)


def test_service_reads_its_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MICRO_TCP_ADDRESS", raising=False)
    default = Service("envaddr", registry="memory://")
    # values unlike the defaults in host and port, so ignoring the environment cannot pass
    monkeypatch.setenv("MICRO_SERVER_ADDRESS", "127.0.0.2:7001")
    assert default.address != "127.0.0.2:7001"
    from_env = Service("envaddr", registry="memory://")
    assert from_env.address == "127.0.0.2:7001"
    assert from_env.tcp_address == "127.0.0.2:0"  # tcp follows gRPC's host, on a free port
    monkeypatch.setenv("MICRO_TCP_ADDRESS", "127.0.0.3:7002")
    assert Service("envaddr", registry="memory://").tcp_address == "127.0.0.3:7002"
    # an explicit argument wins over the environment
    explicit = Service("envaddr", registry="memory://", address="127.0.0.4:1", tcp_address="127.0.0.4:2")
    assert (explicit.address, explicit.tcp_address) == ("127.0.0.4:1", "127.0.0.4:2")


@pytest.mark.parametrize("address", ["nowhere", "host:port", "127.0.0.1"])
def test_service_rejects_bad_addresses(address: str) -> None:
    with pytest.raises(ConfigurationError, match="must be host:port"):
        Service("bad", registry="memory://", address=address)


@pytest.mark.parametrize("name", ["", "a b", "a/b"])
def test_service_rejects_bad_names(name: str) -> None:
    with pytest.raises(ConfigurationError, match="must be non-empty"):
        Service(name, registry="memory://")


def test_service_takes_a_registry_by_url() -> None:
    assert isinstance(Service("u", registry="memory://").registry, MemoryRegistry)


@pytest.mark.parametrize(
    ("broker", "address", "expected"),
    [
        (None, None, "DirectBroker"),
        ("nats", "127.0.0.1:4222", "NatsBroker('nats://127.0.0.1:4222')"),
        ("nats", "nats://127.0.0.1:4222", "NatsBroker('nats://127.0.0.1:4222')"),
        ("nats://10.0.0.1:4222", "ignored:1", "NatsBroker('nats://10.0.0.1:4222')"),
    ],
)
def test_the_broker_from_the_environment_go_micro_style(
    monkeypatch: pytest.MonkeyPatch, broker: str | None, address: str | None, expected: str
) -> None:
    for name, value in (("MICRO_BROKER", broker), ("MICRO_BROKER_ADDRESS", address)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert repr(load_broker()).startswith(expected)


def test_a_rabbitmq_address_given_as_a_url_keeps_its_host_and_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """go-micro's RabbitMQ broker takes MICRO_BROKER_ADDRESS=amqp://user:pw@host:port/."""
    monkeypatch.setenv("MICRO_BROKER", "rabbitmq")
    monkeypatch.setenv("MICRO_BROKER_ADDRESS", "amqp://app:s3cret@10.1.2.3:5673/")
    shown = repr(load_broker())
    assert "10.1.2.3:5673" in shown and "s3cret" not in shown


def test_a_missing_driver_says_how_to_install_it_here_and_in_an_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = importlib.import_module

    def without_aetcd(name: str, *args: Any) -> Any:
        if name.startswith("microweave.registry.etcd"):
            raise ImportError("No module named 'aetcd'", name="aetcd")
        return real_import(name, *args)

    monkeypatch.setattr(_backends.importlib, "import_module", without_aetcd)
    with pytest.raises(ConfigurationError) as caught:
        load_registry("etcd://127.0.0.1:2379")
    detail = caught.value.detail
    assert "needs a driver that is not installed (aetcd)" in detail
    assert 'pip install "microweave[etcd]"' in detail and "--build-arg EXTRAS=etcd" in detail
