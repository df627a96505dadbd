"""Files on this host: the default registry, no server needed.

Layout: `<root>/<service>/<node-id>.json`, one node per file (like one etcd key per node),
holding `{"expires": <unix time>, "service": <go-micro Service JSON>}`. Writes are atomic
(write a temp file, then rename), so readers in other processes never see half a record.
A node whose owner stops heartbeating drops out of lookups when its expiry passes; its file is
swept later. Watching polls the directory: cheap at the scale of one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from .._backends import BackendURL
from ..errors import RegistryError
from . import Action, Event, Registry, Service, Watcher, merge_nodes

__all__ = ["LocalRegistry", "default_root"]

_POLL = 0.2  # seconds between directory scans while watching
_SWEEP_AFTER = 30.0  # seconds past expiry before a reader removes a dead node's file
_NO_TTL = 10 * 365 * 86400.0


class _File(msgspec.Struct):
    expires: float
    service: Service


_decode = msgspec.json.Decoder(_File).decode
_encode = msgspec.json.Encoder().encode


def default_root() -> Path:
    """A per-user directory: $XDG_RUNTIME_DIR/microweave/registry, else under the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "microweave" / "registry"
    return Path(tempfile.gettempdir()) / f"microweave-{os.getuid()}" / "registry"


def _safe(name: str) -> str:
    return name.replace("/", "-").replace(os.sep, "-") or "_"


class LocalRegistry(Registry):
    scheme = "local"

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root else default_root()

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> LocalRegistry:
        path = "".join(url.hosts) + url.path
        return cls(kwargs.pop("root", None) or path or None, **kwargs)

    def __repr__(self) -> str:
        return f"<LocalRegistry {self.root}>"

    async def register(self, service: Service, *, ttl: float | None = None) -> None:
        expires = time.time() + (ttl if ttl else _NO_TTL)
        try:
            directory = self.root / _safe(service.name)
            directory.mkdir(parents=True, exist_ok=True)
            for node in service.nodes:
                data = _encode(_File(expires, service.with_nodes([node])))
                target = directory / f"{_safe(node.id)}.json"
                tmp = target.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
        except OSError as exc:
            raise RegistryError(f"cannot write the local registry at {self.root}: {exc}") from None

    async def deregister(self, service: Service) -> None:
        directory = self.root / _safe(service.name)
        for node in service.nodes:
            try:
                (directory / f"{_safe(node.id)}.json").unlink()
            except FileNotFoundError:
                pass  # expired and swept already: the node is gone either way
            except OSError as exc:
                raise RegistryError(f"cannot remove {node.id} from {self.root}: {exc}") from None

    async def get_service(self, name: str) -> list[Service]:
        return merge_nodes([s for _, s in self._read_dir(self.root / _safe(name)).values()])

    async def list_services(self) -> list[Service]:
        out: list[Service] = []
        for directory in sorted(self._subdirs()):
            out.extend(merge_nodes([s for _, s in self._read_dir(directory).values()]))
        return out

    def watch(self, service: str | None = None) -> Watcher:
        return _PollingWatcher(self, service)

    def _subdirs(self) -> list[Path]:
        try:
            return [p for p in self.root.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RegistryError(f"cannot read the local registry at {self.root}: {exc}") from None

    def _read_dir(self, directory: Path) -> dict[Path, tuple[int, Service]]:
        """Live records by path, each with its file's mtime (to spot updates cheaply)."""
        now = time.time()
        out: dict[Path, tuple[int, Service]] = {}
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise RegistryError(f"cannot read the local registry at {directory}: {exc}") from None
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            try:
                mtime = entry.stat().st_mtime_ns
                record = _decode(Path(entry.path).read_bytes())
            except (OSError, msgspec.DecodeError):
                continue  # vanished or being replaced between scandir and read
            if record.expires > now:
                out[Path(entry.path)] = (mtime, record.service)
            elif record.expires + _SWEEP_AFTER < now:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return out

    def _snapshot(self, service: str | None) -> dict[Path, tuple[int, Service]]:
        if service is not None:
            return self._read_dir(self.root / _safe(service))
        snapshot: dict[Path, tuple[int, Service]] = {}
        for directory in self._subdirs():
            snapshot.update(self._read_dir(directory))
        return snapshot


class _PollingWatcher(Watcher):
    def __init__(self, registry: LocalRegistry, service: str | None) -> None:
        self._registry = registry
        self._service = service
        self._seen = registry._snapshot(service)
        self._pending: list[Event] = []
        self._closed = asyncio.Event()

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._closed.is_set():
                raise StopAsyncIteration
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL):  # not wait_for: it can swallow a cancellation
                    await self._closed.wait()
            if self._closed.is_set():
                raise StopAsyncIteration
            self._pending.extend(self._diff())
        return self._pending.pop(0)

    def _diff(self) -> list[Event]:
        now = self._registry._snapshot(self._service)
        events: list[Event] = []
        for path, (mtime, service) in now.items():
            before = self._seen.get(path)
            if before is None:
                events.append(Event(Action.CREATE, service))
            elif before[0] != mtime and before[1] != service:
                events.append(Event(Action.UPDATE, service))
        events.extend(
            Event(Action.DELETE, service) for path, (_, service) in self._seen.items() if path not in now
        )
        self._seen = now
        return events

    async def aclose(self) -> None:
        self._closed.set()
