"""Context: deadline arithmetic, metadata in and out, caller identity."""

from __future__ import annotations

import time

from microweave import Context, current_context
from microweave.context import ENDPOINT, FROM_NODE, FROM_SERVICE, SERVICE


def test_no_deadline() -> None:
    ctx = Context()
    assert ctx.time_remaining() is None
    assert not ctx.expired


def test_deadline_in_the_future_and_past() -> None:
    ctx = Context(deadline=time.monotonic() + 60)
    left = ctx.time_remaining()
    assert left is not None and 0 < left <= 60
    assert not ctx.expired
    past = Context(deadline=time.monotonic() - 1)
    assert past.time_remaining() == 0.0  # never negative
    assert past.expired


def test_caller_identity() -> None:
    ctx = Context(metadata={FROM_SERVICE: "billing", FROM_NODE: "billing-1"})
    assert (ctx.caller, ctx.caller_node) == ("billing", "billing-1")
    assert Context().caller == ""


def test_propagated_metadata_drops_the_hop_specific_keys() -> None:
    ctx = Context(
        metadata={
            FROM_SERVICE: "a",
            FROM_NODE: "a-1",
            ENDPOINT: "X.Y",
            SERVICE: "b",
            "traceparent": "00-abc-def-01",
            "x-user": "ada",
        }
    )
    assert ctx.propagated_metadata() == {"traceparent": "00-abc-def-01", "x-user": "ada"}


def test_metadata_is_copied() -> None:
    source = {"x-a": "1"}
    ctx = Context(metadata=source)
    ctx.metadata["x-b"] = "2"
    assert source == {"x-a": "1"}


def test_response_metadata_is_lowercased() -> None:
    ctx = Context()
    assert ctx.response_metadata == {}
    ctx.set_response_metadata("X-Served-By", "node-1")
    assert ctx.response_metadata == {"x-served-by": "node-1"}


def test_repr_is_readable() -> None:
    text = repr(Context(endpoint="Greeter.SayHello", metadata={FROM_SERVICE: "a"}))
    assert "Greeter.SayHello" in text and "'a'" in text


def test_no_current_context_outside_a_call() -> None:
    assert current_context() is None
