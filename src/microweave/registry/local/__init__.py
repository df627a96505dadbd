"""Files on this host: the default registry, no server needed.

Layout: `<root>/<service>/<node-id>.json`, one node per file (like one etcd key per node);
`entries` has the format. Writes are atomic (a 0600 temp file, then rename), so readers in
other processes never see half a record. The root is private to its user (`paths`): a
directory someone else could write to is refused. Readers list and read only what changed
since their last look, and decide liveness by their own clock (`tracker`); watching polls
that (`watch`). All file IO runs on a small thread pool of the registry's own, so neither a
slow disk nor busy handler threads stall the event loop or the heartbeat.

Settings, as keyword arguments or in the URL (`local:///path?skew=30`): `skew`, the clock
difference between processes tolerated (default 60 s; a node that stops heartbeating leaves a
reader that first sees it after its death within `ttl + skew`, a reader that saw it alive within
`ttl`); `watch_buffer`, the most events one poll hands a watcher before it sends RESYNC instead;
`poll`, seconds between a watcher's polls (default 0.2). As a keyword only: `sweep_after`, how
long a reader must itself see a dead node's file unchanged before it removes it (default 300 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..._backends import BackendURL
from ...errors import ConfigurationError, RegistryError
from .. import Registry, Service, Watcher, merge_nodes
from .entries import Entry, encode, write_entry
from .paths import check_name, default_layout, ensure, explicit_layout, unsafe
from .tracker import SKEW, SWEEP_AFTER, Snapshot, Tracker
from .watch import PollingWatcher

__all__ = ["LocalRegistry", "default_root"]

T = TypeVar("T")

POLL = 0.2  # seconds between a watcher's polls
WATCH_BUFFER = 10_000  # events one poll may hand a watcher; beyond it, RESYNC
_NO_TTL = 10 * 365 * 86400.0  # `expires` of a node registered without a TTL

# Shared by every LocalRegistry in the process; two threads: a long first read of a large
# registry does not hold up a heartbeat's write.
_io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="microweave-registry")


def default_root() -> Path:
    """A per-user directory: $XDG_RUNTIME_DIR/microweave/registry, else under the temp dir."""
    return default_layout().root


class LocalRegistry(Registry):
    scheme = "local"

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        skew: float = SKEW,
        watch_buffer: int = WATCH_BUFFER,
        poll: float = POLL,
        sweep_after: float = SWEEP_AFTER,
    ) -> None:
        if not skew >= 0 or not poll > 0 or watch_buffer < 1:
            raise ConfigurationError(
                f"local registry: skew must be >= 0, poll > 0 and watch_buffer >= 1 "
                f"(got skew={skew}, poll={poll}, watch_buffer={watch_buffer})"
            )
        self.layout = explicit_layout(Path(root)) if root else default_layout()
        self.root = self.layout.root
        self.watch_buffer = watch_buffer
        self.poll = poll
        self._tracker = Tracker(self.layout, skew=skew, sweep_after=sweep_after)

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> LocalRegistry:
        path = "".join(url.hosts) + url.path
        for key, convert in (("skew", float), ("poll", float), ("watch_buffer", int)):
            if key in url.query and key not in kwargs:
                try:
                    kwargs[key] = convert(url.query[key])
                except ValueError:
                    raise ConfigurationError(
                        f"{key}={url.query[key]!r} in the registry URL is not a number"
                    ) from None
        return cls(kwargs.pop("root", None) or path or None, **kwargs)

    def __repr__(self) -> str:
        return f"<LocalRegistry {self.root}>"

    @property
    def reads(self) -> int:
        """Registry files read by this instance so far: what polling costs (for tests, debugging)."""
        return self._tracker.reads

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(_io, fn, *args)

    # -- writing (the owner of the nodes) --------------------------------------------------------

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        check_name("service name", service.name)
        for node in service.nodes:
            check_name("node id", node.id)
        await self._run(self._write, service, ttl)

    def _write(self, service: Service, ttl: float | None) -> None:
        expires = time.time() + (ttl if ttl else _NO_TTL)
        try:
            ensure(self.layout)
            directory = self.root / service.name
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
            st = os.lstat(directory)
            if not stat.S_ISDIR(st.st_mode):
                raise RegistryError(f"cannot register {service.name}: {directory} is not a directory")
            problem = unsafe(directory, st)
            if problem:
                raise ConfigurationError(f"{problem}; remove it, or fix its owner and mode")
            for node in service.nodes:
                data = encode(Entry(expires, service.with_nodes([node]), ttl=float(ttl or 0.0)))
                write_entry(directory, node.id, data)
        except OSError as exc:
            raise RegistryError(f"cannot write the local registry at {self.root}: {exc}") from None

    async def deregister(self, service: Service) -> None:
        check_name("service name", service.name)
        for node in service.nodes:
            check_name("node id", node.id)
        await self._run(self._remove, service)

    def _remove(self, service: Service) -> None:
        directory = self.root / service.name
        for node in service.nodes:
            try:
                (directory / f"{node.id}.json").unlink()
            except FileNotFoundError:
                pass  # removed already: the node is gone either way
            except OSError as exc:
                raise RegistryError(f"cannot remove {node.id} from {self.root}: {exc}") from None

    # -- reading -----------------------------------------------------------------------------------

    async def _snapshot(self, service: str | None) -> Snapshot:
        return await self._run(self._tracker.snapshot, service)

    async def get_service(self, name: str) -> list[Service]:
        check_name("service name", name)
        live = (await self._snapshot(name)).get(name, {})
        return merge_nodes([service for _, service in live.values()])

    async def list_services(self) -> list[Service]:
        out: list[Service] = []
        for live in (await self._snapshot(None)).values():
            out.extend(merge_nodes([service for _, service in live.values()]))
        return out

    async def watch(self, service: str | None = None) -> Watcher:
        if service is not None:
            check_name("service name", service)
        baseline = await self._snapshot(service)  # subscribed: later changes differ from this
        return PollingWatcher(
            lambda: self._snapshot(service), service, baseline, interval=self.poll, buffer=self.watch_buffer
        )
