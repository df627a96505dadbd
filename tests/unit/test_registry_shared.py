"""The pieces every registry backend shares: outage logging/backoff and go-micro's packed strings."""

from __future__ import annotations

import logging
import zlib

import pytest

from microweave.registry.outage import Backoff, Outage
from microweave.registry.packed import pack, pack_raw, unpack, unpack_raw
from microweave.testing import capture_logs


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first=0.1, cap=1.0)
    delays = [backoff.next() for _ in range(10)]
    # each delay lies in [d/2, d] of its doubling step 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, ...
    steps = [0.1, 0.2, 0.4, 0.8] + [1.0] * 6
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    backoff.reset()
    assert backoff.next() <= 0.1


def test_an_outage_is_logged_once_down_and_once_up() -> None:
    outage = Outage("etcd://127.0.0.1:1 watch")
    with capture_logs(logging.INFO, logger="microweave.registry") as logs:
        delays = [outage.failed(ConnectionRefusedError("refused")) for _ in range(50)]
        assert outage.down
        outage.recovered()
        outage.recovered()  # already up: nothing more to say
    assert len(logs) == 2
    assert logs[0]["message"].startswith("etcd://127.0.0.1:1 watch unreachable")
    assert logs[1]["message"].startswith("etcd://127.0.0.1:1 watch reachable again")
    assert "ConnectionRefusedError: refused" in logs[0]["message"]
    assert all("exception" not in e for e in logs)  # no traceback storm
    assert max(delays) <= 5.0 and not outage.down


def test_packed_values_match_go_micros_hex_zlib() -> None:
    # what go-micro's encode() produces for metadata {"a":"b"} and for a raw version
    go_metadata = zlib.compress(b'{"a":"b"}').hex()
    assert unpack(go_metadata) == {"a": "b"}
    assert unpack_raw(zlib.compress(b"1.2.3").hex()) == b"1.2.3"
    assert unpack(pack({"x": [1, 2]})) == {"x": [1, 2]}
    assert unpack_raw(pack_raw(b"v1")) == b"v1"


@pytest.mark.parametrize("text", ["zz", "00", zlib.compress(b"{not json").hex()])
def test_packed_garbage_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a go-micro packed value"):
        unpack(text)


def test_a_packed_bomb_is_refused() -> None:
    bomb = zlib.compress(b"0" * (2 << 20)).hex()  # 2 MiB of zeros in a few KB
    with pytest.raises(ValueError, match="1 MiB"):
        unpack_raw(bomb)
