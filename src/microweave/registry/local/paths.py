"""Where the local registry lives, and whether that place can be trusted.

Whoever can write to the registry directory decides where callers send their requests (bearer
tokens included): another user who creates the directory first, or who can write into it,
registers an impostor. The default `/tmp/microweave-$UID` (when XDG_RUNTIME_DIR is unset: cron,
containers, su) is exactly a name another user can create first. So every directory the
registry creates is 0700, and one it finds must belong to this user and be writable by nobody
else, or the registry refuses it with an error saying what to do. Names that would leave the
directory (`..`, `/`) are refused too.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigurationError

__all__ = ["Layout", "check_name", "default_layout", "ensure", "explicit_layout", "trusted", "unsafe"]

_FIX = (
    "remove it (if nothing of yours is in it), or use a private directory: "
    "set MICRO_REGISTRY_ADDRESS=/path/to/dir (or pass local:///path/to/dir), or set XDG_RUNTIME_DIR"
)


@dataclass(frozen=True)
class Layout:
    """The registry root, and the directories (outermost first) this user must own alone."""

    root: Path
    guarded: tuple[Path, ...]


def default_layout() -> Layout:
    """$XDG_RUNTIME_DIR/microweave/registry, else <temp dir>/microweave-$UID/registry."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        base = Path(runtime) / "microweave"
    else:
        base = Path(tempfile.gettempdir()) / f"microweave-{os.getuid()}"
    root = base / "registry"
    return Layout(root, (base, root))


def explicit_layout(root: Path) -> Layout:
    """A directory the user named: its parents are theirs to choose, the directory is checked."""
    return Layout(root, (root,))


def check_name(kind: str, name: str) -> None:
    """Refuse a service name or node id that is not one plain file name."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or os.sep in name:
        raise ConfigurationError(
            f"{kind} {name!r} cannot be stored in the local registry: it must be non-empty, "
            "not '.' or '..', and contain no '/' or NUL"
        )


def _check(path: Path) -> bool:
    """Whether `path` exists; raise if it is not a directory this user alone can write to."""
    uid = os.geteuid()
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(link.st_mode) and link.st_uid != uid:
        # whoever owns a link in a shared directory (/tmp) can point it elsewhere at any time
        raise ConfigurationError(
            f"the local registry directory {path} is a symbolic link owned by uid {link.st_uid}, "
            f"not by you (uid {uid}); {_FIX}"
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False  # a dangling link of ours
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"the local registry path {path} is not a directory; {_FIX}")
    problem = unsafe(path, st)
    if problem:
        raise ConfigurationError(f"{problem}; {_FIX}")
    return True


def unsafe(path: Path | str, st: os.stat_result) -> str:
    """Why a directory with this status is not private to this user ("" when it is)."""
    uid = os.geteuid()
    if st.st_uid != uid:
        return (
            f"the local registry directory {path} is owned by uid {st.st_uid}, not by you "
            f"(uid {uid}): another user could register impostors there and receive your calls"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"the local registry directory {path} is writable by other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): they could register impostors there and "
            f"receive your calls; run `chmod go-w {path}` if it is yours"
        )
    return ""


def trusted(layout: Layout) -> bool:
    """Whether the registry exists (False: nothing is registered); raise if it is not trusted."""
    return all(_check(path) for path in layout.guarded)


def ensure(layout: Layout) -> None:
    """Create the registry's directories 0700 where missing, and check every one of them."""
    with contextlib.suppress(FileExistsError):  # a file in the way: the check below says so
        layout.guarded[0].parent.mkdir(parents=True, exist_ok=True)
    for path in layout.guarded:
        with contextlib.suppress(FileExistsError):  # found, not made: the check decides
            os.mkdir(path, 0o700)
        _check(path)
