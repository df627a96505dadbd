"""Read Prometheus text the way a scraper does (prometheus_client's parser), for the metrics tests."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "samples", "series", "value"]

#: (sample name, labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str | None = None) -> Samples:
    """Every sample of `text`, or of this process's default registry (what /metrics serves)."""
    text = text if text is not None else generate_latest().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(got: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels; None when there is none."""
    return got.get((name, frozenset(labels.items())))


def series(got: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of `name` whose labels include these."""
    want = set(labels.items())
    return {ls: v for (n, ls), v in got.items() if n == name and want <= ls}
