"""`file://path`: a YAML, TOML or JSON document, watched for changes.

    file://settings.yaml              relative to the working directory
    file:///etc/greeter/config.toml   absolute
    ?format=yaml|toml|json            when the extension does not say
    ?interval=0.5                     seconds between checks for a change
    ?optional=true                    a missing file is an empty layer, read once it appears

The watch compares the file's identity and modification (inode, device, size, mtime) every
`interval` seconds rather than asking inotify: an editor or deploy tool that writes a new file
and renames it over the old one, and a Kubernetes ConfigMap volume (which swaps a `..data`
symlink), replace the inode an inotify watch is attached to, and network and container
filesystems may send no events at all. A stat per half second costs nothing measurable.

A stamp is only as fine as the filesystem's timestamps (one kernel tick; a second on ext3, NFS
or HFS+; two on FAT): an edit of the same size made within the same tick as the one read
leaves the stamp unchanged. So, as git does with its "racy" index entries, a file whose mtime
is within RACY seconds of when it was read is read again at each check until it is older, and
compared by content.

A file that disappears or cannot be read keeps its last good values (a deploy is probably
replacing it); one warning says so, and its contents are read again once it is back.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..._backends import BackendURL
from ...errors import ConfigurationError, Unavailable
from ...registry.url_options import unknown_options
from .. import Item, Snapshot, Source
from ..parse import MAX_DOCUMENT, format_of

__all__ = ["FileSource"]

log = logging.getLogger("microweave.config")

#: how close to its read a file's mtime must be for an unchanged stamp not to be trusted
RACY = 2.0

_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class FileSource(Source):
    scheme = "file"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        interval: float = 0.5,
        optional: bool = False,
    ) -> None:
        self.path = Path(path)
        self.url = f"file://{path}"
        fmt = format or format_of(self.path.name)
        if fmt not in ("yaml", "toml", "json"):
            raise ConfigurationError(
                f"{self.url}: cannot tell the format from the name; add ?format=yaml, toml or json"
            )
        if not interval > 0:
            raise ConfigurationError(f"{self.url}: interval must be a positive number of seconds")
        self.format = fmt
        self.interval = interval
        self.optional = optional
        self._seen: tuple[int, ...] | None = None
        self._data: bytes | None = None  # what the last read found
        self._read_at = 0  # when (wall clock, ns), to tell a racy stamp

    @classmethod
    def from_url(cls, url: BackendURL, **kwargs: Any) -> FileSource:
        path = unquote(",".join(url.hosts) + url.path)
        if not path:
            raise ConfigurationError("file:// needs a path: file://settings.yaml or file:///etc/app.yaml")
        unknown = unknown_options(url.query, {"format", "interval", "optional"})
        if unknown:
            known = "format, interval, optional"
            raise ConfigurationError(f"file://{path}: unknown option(s) {unknown}; known: {known}")
        options: dict[str, Any] = {}
        if "format" in url.query:
            options["format"] = url.query["format"].lower()
        if "interval" in url.query:
            try:
                options["interval"] = float(url.query["interval"])
            except ValueError:
                raise ConfigurationError(f"file://{path}: interval must be a number of seconds") from None
        if "optional" in url.query:
            flag = _FLAGS.get(url.query["optional"].lower())
            if flag is None:
                raise ConfigurationError(f"file://{path}: optional must be true or false")
            options["optional"] = flag
        return cls(path, **{**options, **kwargs})

    def _stamp(self) -> tuple[int, ...]:
        st = self.path.stat()  # follows symlinks: a swapped target is a new stamp
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)

    def _read_now(self) -> tuple[tuple[int, ...], bytes, int]:
        read_at = time.time_ns()  # before the read: an edit after it is a later mtime
        # non-blocking open, and regular files only: reading a FIFO (or a device) would block
        # a worker thread until someone writes to it, and the process could not exit
        with open(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            data = fh.read(MAX_DOCUMENT + 1)  # more than that is refused by the parser
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns), data, read_at

    def _racy(self) -> bool:
        """Whether the stamp seen could hide a later edit within the same timestamp tick."""
        return self._seen is not None and self._seen[3] + int(RACY * 1e9) > self._read_at

    async def read(self) -> Snapshot:
        try:
            self._seen, data, self._read_at = await asyncio.to_thread(self._read_now)
            self._data = data
        except FileNotFoundError:
            todo = (
                "it is read once it appears"
                if self.optional
                else "create it, fix the path, or add ?optional=true"
            )
            raise Unavailable(f"{self.url}: no such file (in {Path.cwd()}); {todo}") from None
        except OSError as exc:
            raise Unavailable(f"{self.url}: cannot read it: {exc.strerror}") from None
        return {"": Item(data, self.format)}

    def watch(self) -> AsyncIterator[Snapshot]:
        return self._changes()

    async def _changes(self) -> AsyncIterator[Snapshot]:
        gone = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                stamp = await asyncio.to_thread(self._stamp)
                if stamp == self._seen and not self._racy():
                    continue
                before = self._data
                snapshot = await self.read()
                if stamp == self._seen and self._data == before and not gone:
                    continue  # a racy stamp, read again: the same content
            except (OSError, Unavailable) as exc:
                if not gone:  # one warning per disappearance; the last good values stay
                    log.warning(
                        "config %s is gone or unreadable; keeping its last good values: %s", self.url, exc
                    )
                    gone = True
                continue
            if gone:
                log.warning("config %s is back", self.url)
                gone = False
            yield snapshot
