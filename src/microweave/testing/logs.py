"""Capture log records as plain dicts, to assert on what a service logged.

    with capture_logs() as logs:
        ...
    assert any(entry.get("correlation_id") == cid for entry in logs)

Why dicts and not pytest's `caplog`: microweave logs its facts as structured extras (the
`correlation_id` of a failed call, its `endpoint`, the `service`), and a test should assert on
those fields, not on how a formatter happened to print them. This is structlog's
`testing.capture_logs` for the standard `logging` module: it works in sync and async tests,
with or without pytest, and puts logging back the way it found it.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterator
from typing import Any

__all__ = ["LogEntry", "capture_logs"]

#: One captured record: `level` (its name, e.g. "ERROR"), `logger`, `message` (formatted with
#: its arguments), every structured extra passed with `extra=`, and `exception` (the formatted
#: traceback) when the record carried one.
LogEntry = dict[str, Any]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    try:
        return logging.getLevelNamesMapping()[level.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None


def _entry(record: logging.LogRecord) -> LogEntry:
    entry: LogEntry = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            entry[key] = value
    if record.exc_info and record.exc_info[1] is not None:
        entry["exception"] = "".join(traceback.format_exception(record.exc_info[1]))
    return entry


class _ListHandler(logging.Handler):
    """Appends each record, as a dict, to a list the test holds."""

    def __init__(self, entries: list[LogEntry], level: int) -> None:
        super().__init__(level)
        self.entries = entries

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.entries.append(_entry(record))
        except Exception:  # a bad format string: report it as logging does, do not raise
            self.handleError(record)


@contextlib.contextmanager
def capture_logs(level: int | str = logging.INFO, *, logger: str | None = None) -> Iterator[list[LogEntry]]:
    """Collect records at `level` or above from `logger` (default: every logger) into a list.

    The logger's level is lowered to `level` if it was higher (the root logger stays at
    WARNING unless configured, which would drop a service's INFO lines before any handler saw
    them), and `logging.disable` is lifted for the block; both are restored on exit. Records of
    loggers with `propagate = False`, or with a level of their own above `level`, are not seen,
    exactly as they would not reach a handler on the root logger in production.
    """
    threshold = _level(level)
    target = logging.getLogger(logger)
    entries: list[LogEntry] = []
    handler = _ListHandler(entries, threshold)
    saved_level = target.level
    saved_disable = logging.root.manager.disable
    if target.getEffectiveLevel() > threshold:
        target.setLevel(threshold)
    if saved_disable >= threshold:
        logging.disable(logging.NOTSET)
    target.addHandler(handler)
    try:
        yield entries
    finally:
        target.removeHandler(handler)
        target.setLevel(saved_level)
        logging.disable(saved_disable)
