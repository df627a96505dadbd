"""One registry entry on disk: its format, a bounded read that cannot hang, an atomic write.

A file is `{"expires": <writer's unix time + ttl>, "ttl": <seconds, 0 = none>, "service":
<go-micro Service JSON with one node>}`. `expires` is for other programs reading the files;
this registry judges liveness by `ttl` and its own observations (see `tracker`), never by
comparing another process's clock with its own.

Anything in the directory may be hostile or broken: a FIFO (opening it for reading waits for
a writer), a link to /dev/zero (reading it never ends), a huge file. So an entry is opened
without following links and without blocking, checked to be a regular file of bounded size,
and read once up to that bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

import msgspec

from .. import Service

__all__ = ["MAX_ENTRY", "Entry", "Skipped", "Vanished", "decode", "encode", "read_entry", "write_entry"]

MAX_ENTRY = 1 << 20  # bytes: a one-node record is a few KiB even with many endpoints


class Entry(msgspec.Struct):
    expires: float
    service: Service
    ttl: float | msgspec.UnsetType = msgspec.UNSET  # absent in files of older versions


decode = msgspec.json.Decoder(Entry).decode
encode = msgspec.json.Encoder().encode


class Skipped(Exception):
    """The entry is not something to read; the message says why (logged once per entry)."""


class Vanished(Exception):
    """The entry was removed or replaced between listing and opening it: nothing to report."""


def kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def read_entry(path: str, limit: int = MAX_ENTRY) -> tuple[os.stat_result, bytes]:
    """The entry's status and bytes; Skipped for anything but a regular file of <= `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Vanished from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Skipped("it is a symbolic link") from None
        raise Skipped(f"it cannot be opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Skipped(f"it is {kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise Skipped(f"it is larger than {limit} bytes ({st.st_size})")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # a file growing under us is still read only up to the bound
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise Skipped(f"it is larger than {limit} bytes")
        return st, b"".join(chunks)
    finally:
        os.close(fd)


def write_entry(directory: Path, node_id: str, data: bytes) -> None:
    """Replace `<directory>/<node_id>.json` atomically with a file only this user can read."""
    # mkstemp: a fresh name, O_EXCL (no following a planted link), mode 0600 whatever the umask
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{node_id}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, directory / f"{node_id}.json")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
