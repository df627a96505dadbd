"""Per-endpoint call counts of the nodes served by this process (for `$SRV.STATS`).

Placeholder until the counting middleware is wired: no node is counted, so STATS reports zeros.
"""

from __future__ import annotations

__all__ = ["counts"]


def counts(node_id: str) -> dict[str, tuple[int, int, str, int]] | None:
    """(requests, errors, last error, processing ns) per endpoint of a node; None if not counted."""
    return None
