"""A node's health: is it alive, is it ready for calls, and why not.

One `Readiness` per `Service`. Ready means all of:

- the node is **serving**: its start completed and its stop has not begun. The phases are
  starting -> serving -> draining -> stopped; draining begins at the first moment of `stop()`,
  before the node leaves the registry, so a load balancer or Kubernetes stops sending traffic
  while the node still answers what it has;
- its **registration** is healthy: a node whose heartbeat keeps failing will drop out of the
  registry, and its peers with it; better to say so;
- every **critical check** of the user's passes (a check that has not finished once yet does
  not pass).

Alive means the process is not stopped. Checks run in the background, each on its own interval
and bounded by its timeout, so answering a probe is O(1) whoever asks how often; a sync check
runs in a thread, never two runs of one check at once (one that hangs holds one thread and is
reported down until it returns). Whoever watches (the gRPC health service) is told each time
`ready` changes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._tasks import cancel_all
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..lifecycle import Registration

__all__ = ["CheckFunction", "HealthCheck", "Phase", "Readiness", "Watcher"]

Phase = Literal["starting", "serving", "draining", "stopped"]
#: returns None (or True) when healthy; raises (or returns False) when not; sync or async
CheckFunction = Callable[[], Any]
#: told `ready` each time it changes; may return an awaitable (awaited by `settled()`)
Watcher = Callable[[bool], Awaitable[None] | None]

#: characters of a failing check's message shown in /health
MAX_ERROR = 200
#: threads running sync checks: their own, so checks that hang never starve the loop's default
#: executor (name resolution runs there)
CHECK_THREADS = 4


@dataclass
class HealthCheck:
    name: str
    function: CheckFunction
    critical: bool
    timeout: float
    interval: float
    #: None: has not finished once yet
    passed: bool | None = None
    error: str | None = None
    checked_at: float = 0.0


class Readiness:
    def __init__(self, service: str, *, version: str = "", node_id: str = "") -> None:
        self.info = {"service": service, "version": version, "node": node_id}
        self.phase: Phase = "stopped"
        self.checks: dict[str, HealthCheck] = {}
        self._registration: Registration | None = None
        self._watchers: list[Watcher] = []
        self._told: bool | None = None  # what watchers were last told
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._pushes: set[asyncio.Task[None]] = set()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"<Readiness {self.info['service']} {self.phase} ready={self.ready}>"

    # -- what makes it ready ----------------------------------------------------------

    def add_check(
        self,
        name: str,
        function: CheckFunction,
        *,
        critical: bool = True,
        timeout: float = 5.0,
        interval: float = 10.0,
    ) -> None:
        """Run `function` every `interval` seconds, each run cut off after `timeout`; a critical
        check that fails (raises, returns False, or times out) makes the node not ready; any
        check's state shows in `/health`."""
        if not name or name in self.checks or name in _BUILT_IN:
            raise ConfigurationError(f"health check name {name!r} is empty or already taken")
        if timeout <= 0 or interval <= 0:
            raise ConfigurationError(f"health check {name!r}: timeout and interval must be > 0")
        check = HealthCheck(name, function, critical, timeout, interval)
        self.checks[name] = check
        if self.phase != "stopped":
            self._run(check)
        self._changed()

    def follow(self, registration: Registration) -> None:
        """Count this registration's health (the node's current one: the last followed)."""
        self._registration = registration
        registration.watch_health(
            lambda _healthy: self._changed() if registration is self._registration else None
        )
        self._changed()

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Tell `watcher` the readiness now and on each change; returns what stops that."""
        self._watchers.append(watcher)
        self._push(watcher, self.ready)

        def unwatch() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return unwatch

    # -- phases -----------------------------------------------------------------------

    async def start(self) -> None:
        for check in self.checks.values():  # a previous run's results say nothing now
            check.passed, check.error = None, None
        self._set_phase("starting")
        for check in self.checks.values():
            self._run(check)

    def serving(self) -> None:
        self._set_phase("serving")

    def draining(self) -> None:
        if self.phase in ("starting", "serving"):
            self._set_phase("draining")

    async def stop(self) -> None:
        self._set_phase("stopped")
        tasks, self._tasks = list(self._tasks.values()), {}
        await cancel_all(tasks)
        self._registration = None
        if self._threads is not None:  # a sync check still running finishes on its own
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    async def settled(self) -> None:
        """Wait for what watchers started on the last changes (the gRPC health statuses set)."""
        while self._pushes:
            await asyncio.gather(*self._pushes, return_exceptions=True)

    # -- reading it -------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.phase != "stopped"

    @property
    def registration_healthy(self) -> bool:
        return self._registration is None or self._registration.healthy

    @property
    def ready(self) -> bool:
        return (
            self.phase == "serving"
            and self.registration_healthy
            and all(c.passed for c in self.checks.values() if c.critical)
        )

    def report(self, *, checks: Literal["all", "failing"] = "all") -> dict[str, Any]:
        """go-micro's health body: `{"status": "up"|"down", "checks": [...], "info": {...}}`."""
        results = [self._lifecycle_result(), self._registration_result()]
        results += [_result(c) for c in self.checks.values()]
        if checks == "failing":
            results = [r for r in results if r["status"] == "down"]
        body: dict[str, Any] = {"status": "up" if self.ready else "down"}
        if results:
            body["checks"] = results
        if checks == "all":
            body["info"] = {**self.info, "phase": self.phase, "python_version": platform.python_version()}
        return body

    def _lifecycle_result(self) -> dict[str, Any]:
        if self.phase == "serving":
            return {"name": "lifecycle", "status": "up"}
        return {"name": "lifecycle", "status": "down", "error": self.phase}

    def _registration_result(self) -> dict[str, Any]:
        registration = self._registration
        if registration is None or registration.healthy:
            return {"name": "registration", "status": "up"}
        since = registration.failing_since
        away = time.monotonic() - since if since is not None else 0.0
        # the scheme only: this body is for anyone who can reach the admin port
        error = f"registry {registration.registry.scheme} failing for {away:.0f} s (retrying)"
        return {"name": "registration", "status": "down", "error": error}

    # -- internals --------------------------------------------------------------------

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._changed()

    def _changed(self) -> None:
        ready = self.ready
        if ready == self._told:
            return
        self._told = ready
        for watcher in list(self._watchers):
            self._push(watcher, ready)

    def _push(self, watcher: Watcher, ready: bool) -> None:
        pending = watcher(ready)
        if pending is None:
            return
        task = asyncio.ensure_future(pending)
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    def _run(self, check: HealthCheck) -> None:
        if check.name not in self._tasks:
            self._tasks[check.name] = asyncio.get_running_loop().create_task(
                self._keep_checking(check), name=f"health check {check.name}"
            )

    async def _keep_checking(self, check: HealthCheck) -> None:
        while True:
            await self._check_once(check)
            await asyncio.sleep(check.interval)

    async def _check_once(self, check: HealthCheck) -> None:
        error: str | None
        try:
            if inspect.iscoroutinefunction(check.function):
                async with asyncio.timeout(check.timeout):
                    outcome = await check.function()
            else:
                if self._threads is None:
                    self._threads = concurrent.futures.ThreadPoolExecutor(
                        CHECK_THREADS, thread_name_prefix="health-check"
                    )
                running = asyncio.get_running_loop().run_in_executor(self._threads, check.function)
                try:
                    outcome = await asyncio.wait_for(asyncio.shield(running), check.timeout)
                except TimeoutError:
                    _record(check, f"timed out after {check.timeout:g} s")
                    self._changed()
                    await running  # one thread per check at most: the next run waits for it
                    return
            if inspect.isawaitable(outcome):  # a sync callable that returned a coroutine
                async with asyncio.timeout(check.timeout):
                    outcome = await outcome
            error = "returned False" if outcome is False else None
        except TimeoutError:
            error = f"timed out after {check.timeout:g} s"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        _record(check, error)
        self._changed()


def _record(check: HealthCheck, error: str | None) -> None:
    check.passed = error is None
    check.error = None if error is None else error[:MAX_ERROR]
    check.checked_at = time.monotonic()


def _result(check: HealthCheck) -> dict[str, Any]:
    result: dict[str, Any] = {"name": check.name}
    if check.passed is None:
        result.update(status="down", error="not checked yet")
    elif check.passed:
        result["status"] = "up"
    else:
        result.update(status="down", error=check.error)
    if not check.critical:
        result["critical"] = False
    return result


_BUILT_IN = frozenset({"lifecycle", "registration"})
