"""What this process has seen of the registry's files: re-read only what changed, and judge
liveness by this process's own clock.

Polling cost. Every reader polls (a watcher every 0.2 s), so a poll must cost next to nothing
when nothing changed. A directory is listed again only when its (inode, mtime, ctime, size)
changed, or while it is not yet *settled*: a listing that began SETTLE seconds after its
current status was first seen. Filesystem timestamps are coarse (a tick of up to a couple of
seconds), so a change in the same tick as a listing would otherwise leave the status unchanged
and go unseen. Within a listed directory, a file is read again only when its (inode, mtime,
ctime, size) changed. Writers replace files by rename, so a write gives the name a new inode,
which a listing reports without a stat: while a directory keeps changing (heartbeats), polls
compare inodes only, and stat every entry at most once per SETTLE seconds (catching a file
edited in place, or an inode number reused between two polls). A settled directory is still
stat'ed entry by entry every REVERIFY seconds, for edits that leave the directory unchanged.

Clock trust. Another process's clock may be far from ours (time namespaces, faked clocks,
network filesystems), so neither the `expires` a writer stored nor a file's mtime decides
alone. A node is live while this process has seen its file change within its TTL, by its own
monotonic clock. When a file is first seen (or seen again after a long gap), its age by mtime
is believed only beyond `skew` seconds: a file written up to `skew` seconds "ago" counts as
just written, one older than `ttl + skew` as dead. And a file is deleted by a reader only when
it is dead and this reader itself has seen it unchanged for `sweep_after` seconds; otherwise
only its owner deletes it (deregistration).
"""

from __future__ import annotations

import logging
import math
import os
import stat
import threading
import time
from dataclasses import dataclass, field

import msgspec

from ...errors import ConfigurationError, RegistryError
from .. import Service
from .entries import MAX_ENTRY, Skipped, Vanished, decode, kind, read_entry
from .paths import Layout, trusted, unsafe

__all__ = ["REVERIFY", "SETTLE", "SKEW", "SWEEP_AFTER", "Live", "Snapshot", "Tracker"]

log = logging.getLogger("microweave.registry")

SETTLE = 2.0  # seconds: longer than the coarsest timestamp tick of a common filesystem
SKEW = 60.0  # seconds of clock difference between processes tolerated by default
REVERIFY = 30.0  # seconds between full stat passes over a settled directory
SWEEP_AFTER = 300.0  # seconds a reader must itself see a dead file unchanged before removing it
_NO_TTL = 5 * 365 * 86400.0  # an `expires` this far past the mtime: registered without a TTL

Sig = tuple[int, int, int, int]
#: live records of one service directory by file name, with the status they were read at
Live = dict[str, tuple[Sig, Service]]
#: live records by service directory name
Snapshot = dict[str, Live]


def _sig(st: os.stat_result) -> Sig:
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


@dataclass(slots=True)
class _File:
    sig: Sig
    seen_at: float  # monotonic: when this process first saw this version of the file
    changed_at: float  # monotonic: when this version was written, at the latest we can believe
    service: Service | None  # None: skipped (`reason` says why)
    ttl: float | None  # None: lives until deregistered
    reason: str = ""


@dataclass(slots=True)
class _Dir:
    sig: Sig
    seen_at: float
    scanned_at: float = -math.inf
    full_at: float = -math.inf  # the last listing that stat'ed every entry
    settled: bool = False
    files: dict[str, _File] = field(default_factory=dict)  # service dirs: entries by file name
    names: list[str] = field(default_factory=list)  # the root: service directories
    live: Live | None = None
    valid_until: float = math.inf


class Tracker:
    """The registry as this process sees it; thread-safe, meant to run off the event loop."""

    def __init__(
        self,
        layout: Layout,
        *,
        skew: float = SKEW,
        sweep_after: float = SWEEP_AFTER,
        max_entry: int = MAX_ENTRY,
    ) -> None:
        self.layout = layout
        self.skew = skew
        self.sweep_after = sweep_after
        self.max_entry = max_entry
        self.reverify = REVERIFY
        self.reads = 0  # entries opened and read: what polling costs when nothing changes
        self.listings = 0  # directories listed
        self._lock = threading.Lock()
        self._root: _Dir | None = None
        self._dirs: dict[str, _Dir] = {}
        self._skipped: dict[str, str] = {}  # root entries that are not service directories

    def snapshot(self, service: str | None) -> Snapshot:
        """Live records of one service, or of all; raises if the directory is not trusted."""
        with self._lock:
            mono, wall = time.monotonic(), time.time()
            if not trusted(self.layout):
                self._root = None
                self._dirs.clear()
                return {}
            try:
                if service is not None:
                    return {service: self._live_in(service, mono, wall, strict=True)}
                names = self._service_names(mono)
                for gone in self._dirs.keys() - set(names):
                    del self._dirs[gone]
                return {name: self._live_in(name, mono, wall) for name in names}
            except OSError as exc:
                raise RegistryError(f"cannot read the local registry at {self.layout.root}: {exc}") from None

    # -- directories ---------------------------------------------------------------------------

    def _service_names(self, mono: float) -> list[str]:
        root = self.layout.root
        sig = _sig(os.stat(root))
        state = self._root
        if state is None or state.sig != sig:
            state = self._root = _Dir(sig, mono)
        if not state.settled:
            names: list[str] = []
            present: set[str] = set()
            self.listings += 1
            with os.scandir(root) as entries:
                for entry in entries:
                    present.add(entry.path)
                    if entry.is_dir(follow_symlinks=False):
                        names.append(entry.name)
                    elif not entry.name.startswith("."):
                        try:
                            mode = entry.stat(follow_symlinks=False).st_mode
                        except FileNotFoundError:
                            continue
                        self._skip_once(
                            self._skipped, entry.path, f"it is {kind(mode)}, not a service directory"
                        )
            for gone in self._skipped.keys() - present:
                del self._skipped[gone]
            state.names = sorted(names)
            state.settled = mono - state.seen_at >= SETTLE
        return state.names

    def _live_in(self, name: str, mono: float, wall: float, *, strict: bool = False) -> Live:
        path = os.path.join(self.layout.root, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._dirs.pop(name, None)
            return {}
        if not stat.S_ISDIR(st.st_mode):
            self._skip_once(self._skipped, path, f"it is {kind(st.st_mode)}, not a service directory")
            return {}
        problem = unsafe(path, st)  # e.g. made world-writable under a root others can enter
        if problem:
            if strict:
                raise ConfigurationError(f"{problem}; remove it, or fix its owner and mode")
            self._skip_once(self._skipped, path, problem)
            return {}
        sig = _sig(st)
        state = self._dirs.get(name)
        if state is None or state.sig != sig:
            previous = state
            state = self._dirs[name] = _Dir(sig, mono)
            if previous is not None:
                state.files, state.scanned_at, state.full_at = (
                    previous.files,
                    previous.scanned_at,
                    previous.full_at,
                )
        if not state.settled or mono - state.full_at >= self.reverify:
            full = mono - state.full_at >= SETTLE
            self._rescan(path, name, state, mono, wall, full=full)
            state.settled = full and mono - state.seen_at >= SETTLE
        if state.live is None or mono >= state.valid_until:
            self._judge(path, state, mono)
        assert state.live is not None
        return state.live

    def _rescan(self, path: str, name: str, state: _Dir, mono: float, wall: float, *, full: bool) -> None:
        """List one service directory; read only the files that are new or changed."""
        before, state.scanned_at = state.scanned_at, mono
        if full:
            state.full_at = mono
        present: set[str] = set()
        self.listings += 1
        with os.scandir(path) as entries:
            for entry in entries:
                if not entry.name.endswith(".json"):
                    continue  # a write in progress (.tmp), or not ours to judge
                old = state.files.get(entry.name)
                if not full and old is not None and old.sig[0] == entry.inode():
                    present.add(entry.name)  # not replaced since: no stat needed
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if old is not None and old.sig == _sig(st):
                    present.add(entry.name)
                    continue
                new = self._load(entry.path, name, st, old, before, mono, wall)
                if new is not None:
                    state.files[entry.name] = new
                    present.add(entry.name)
        for gone in state.files.keys() - present:
            del state.files[gone]
        state.live = None

    # -- files -----------------------------------------------------------------------------------

    def _load(
        self,
        path: str,
        name: str,
        st: os.stat_result,
        old: _File | None,
        before: float,
        mono: float,
        wall: float,
    ) -> _File | None:
        if not stat.S_ISREG(st.st_mode):
            return self._skip(path, _sig(st), old, mono, f"it is {kind(st.st_mode)}, not a regular file")
        try:
            fst, data = read_entry(path, self.max_entry)
        except Vanished:
            return None
        except Skipped as exc:
            return self._skip(path, _sig(st), old, mono, str(exc))
        self.reads += 1
        sig = _sig(fst)
        try:
            entry = decode(data)
        except msgspec.DecodeError as exc:
            return self._skip(path, sig, old, mono, f"it is not a registry entry ({exc})")
        if entry.service.name != name:
            return self._skip(path, sig, old, mono, f"it holds service {entry.service.name!r}, not {name!r}")
        if not isinstance(entry.ttl, msgspec.UnsetType):
            ttl: float | None = entry.ttl if entry.ttl > 0 else None
        else:  # an older writer: its TTL is how far past the write it set `expires`
            derived = entry.expires - fst.st_mtime
            ttl = None if derived > _NO_TTL else max(derived, 0.0)
        # Written after our previous listing (if any), and not earlier than its mtime says,
        # once `skew` seconds of clock difference are allowed for.
        age = wall - fst.st_mtime
        changed_at = max(before, mono - max(0.0, age - self.skew))
        return _File(sig, mono, changed_at, entry.service, ttl)

    def _skip(self, path: str, sig: Sig, old: _File | None, mono: float, reason: str) -> _File:
        if old is None or old.reason != reason:
            log.warning("local registry: skipping %s: %s", path, reason)
        return _File(sig, mono, mono, None, None, reason)

    @staticmethod
    def _skip_once(seen: dict[str, str], path: str, reason: str) -> None:
        if seen.get(path) != reason:
            seen[path] = reason
            log.warning("local registry: skipping %s: %s", path, reason)

    def _judge(self, path: str, state: _Dir, mono: float) -> None:
        """Which records are live now, and until when that answer holds."""
        live: Live = {}
        until = math.inf
        for file_name, file in list(state.files.items()):
            if file.service is None:
                continue
            if file.ttl is None:
                live[file_name] = (file.sig, file.service)
                continue
            deadline = file.changed_at + file.ttl
            if mono < deadline:
                live[file_name] = (file.sig, file.service)
                until = min(until, deadline)
                continue
            sweep_at = file.seen_at + max(self.sweep_after, file.ttl)
            if mono < sweep_at:
                until = min(until, sweep_at)
            elif self._sweep(os.path.join(path, file_name), file):
                del state.files[file_name]
        state.live, state.valid_until = live, until

    def _sweep(self, path: str, file: _File) -> bool:
        """Remove a file this reader has itself seen dead and unchanged for a long time."""
        try:
            if _sig(os.lstat(path)) != file.sig:
                return False  # rewritten meanwhile: the next listing reads it
            os.unlink(path)
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.debug("local registry: cannot remove %s: %s", path, exc)
            return False
        log.info("local registry: removed %s: seen dead and unchanged for %.0f s", path, self.sweep_after)
        return True
