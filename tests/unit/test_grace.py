"""One grace for a node's whole drain: event handlers stop first, then calls, and the calls get
what the handlers left, so a drain never takes twice MICRO_GRACE (a Deployment's termination
grace period is computed from it, and SIGKILL follows)."""

from __future__ import annotations

import pytest

from microweave import Service
from microweave.lifecycle import Grace, Listeners, Subscriptions


def test_the_first_ask_starts_it_and_later_ones_get_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("microweave.lifecycle.time.monotonic", lambda: now[0])
    grace = Grace(10)
    now[0] = 150.0  # made long before the drain: it has not started
    assert grace.left() == 10
    now[0] = 157.0  # the event handlers took 7 s
    assert grace.left() == 3
    now[0] = 170.0
    assert grace.left() == 0  # never negative


def test_a_number_is_a_grace_of_its_own() -> None:
    subscriptions = Subscriptions(lambda: None, None, [], grace=2.5)  # type: ignore[arg-type,return-value]
    assert isinstance(subscriptions.grace, Grace) and subscriptions.grace.seconds == 2.5


async def test_a_service_s_handlers_and_calls_share_one_grace() -> None:
    service = Service("greeter", registry="memory://grace-shared", grace=4, admin_address=False)

    @service.subscriber("orders")
    async def on_order(event: dict[str, str]) -> None:
        pass

    async with service:
        [listeners] = [c for c in service.components if isinstance(c, Listeners)]
        [subscriptions] = [c for c in service.components if isinstance(c, Subscriptions)]
        assert listeners.grace is subscriptions.grace
        assert listeners.grace.seconds == 4
