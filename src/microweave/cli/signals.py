"""Long-running commands (`prometheus-sd --watch`, `stats`) stop cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

__all__ = ["until_signal"]


async def until_signal(work: Callable[[], Awaitable[object]]) -> bool:
    """Run `work()` until it returns or SIGINT/SIGTERM arrives; True when a signal stopped it
    (the work is cancelled, so its `finally` blocks and context managers close what it holds)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    signals: list[int] = []

    def stop(signum: int) -> None:
        signals.append(signum)
        main.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers here
            loop.add_signal_handler(signum, stop, signum)
    try:
        await work()
    except asyncio.CancelledError:
        if not signals:
            raise
        main.uncancel()  # our own cancel, from the signal: a clean stop
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    return bool(signals)
