"""A service closes what it built from a URL, also when its start fails half way."""

from __future__ import annotations

from typing import Any

import pytest

from microweave import Service, _backends
from microweave.errors import RegistryError
from microweave.registry import Service as ServiceRecord
from microweave.registry.memory import MemoryRegistry


class RefusingRegistry(MemoryRegistry):
    """Refuses every registration, and remembers whether it was closed."""

    scheme = "refusing"
    instances: list[RefusingRegistry] = []

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        RefusingRegistry.instances.append(self)

    @classmethod
    def from_url(cls, url: Any, **kwargs: Any) -> RefusingRegistry:
        return cls()

    async def register(self, service: ServiceRecord, *, ttl: float | None = None) -> None:
        raise RegistryError("refusing://: no registrations today", code=403)

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> list[RefusingRegistry]:
    monkeypatch.setitem(_backends.REGISTRIES, "refusing", (__name__, "RefusingRegistry", None))
    RefusingRegistry.instances.clear()
    return RefusingRegistry.instances


async def test_a_failed_start_closes_the_registry_it_built(refusing: list[RefusingRegistry]) -> None:
    service = Service("greeter", registry="refusing://", address="127.0.0.1:0", tcp_address=None)
    with pytest.raises(RegistryError, match="no registrations today"):
        await service.start()
    assert [r.closed for r in refusing] == [True]
    assert not service.running


async def test_a_registry_passed_in_stays_open_after_a_failed_start(
    refusing: list[RefusingRegistry],
) -> None:
    registry = RefusingRegistry()
    service = Service("greeter", registry=registry, address="127.0.0.1:0", tcp_address=None)
    with pytest.raises(RegistryError):
        await service.start()
    assert not registry.closed  # the caller built it: the caller closes it
