"""mDNS for the tests: a private network namespace per test, so no packet reaches a real LAN.

The host's `lo` has no MULTICAST flag, and its real interfaces are not ours to multicast on.
Each test gets a fresh network namespace (`unshare --net`, held open by a sleeping child)
whose only interface is its own `lo`, brought up with multicast on. Processes join it with
`nsenter --net=...`. The test process itself cannot move into it (other tests' sockets live
in the host's namespace), but a socket belongs to the namespace of the thread that created
it: `Netns.entered()` switches the calling thread in (setns) just while a registry opens its
sockets, so that registry multicasts in the namespace while the rest of pytest stays put.
A fresh namespace per test is also the isolation between tests; each also gets its own domain.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from engines import registry_backend
from microweave.registry import from_url as registry_from_url
from microweave.registry.mdns import MdnsRegistry

__all__ = ["Netns", "fresh_domain", "go_micro_instance", "go_micro_txt", "mdns_netns", "open_mdns"]

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


class Netns:
    """A network namespace with only `lo` (up, multicast on), alive while this object is."""

    def __init__(self) -> None:
        script = "ip link set lo up && ip link set lo multicast on && echo ready && exec sleep 86400"
        try:
            self._holder = subprocess.Popen(
                ["unshare", "--net", "--", "sh", "-c", script],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        except FileNotFoundError:
            raise pytest.UsageError("the mDNS tests need unshare and ip (util-linux, iproute2)") from None
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "ready":
            self._holder.kill()
            _, err = self._holder.communicate()
            raise pytest.UsageError(
                f"could not make a network namespace for the mDNS tests (needs root): {err.strip()}"
            )
        self.path = f"/proc/{self._holder.pid}/ns/net"

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread in this namespace for the block (sockets made there stay)."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(self.path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
            os.close(home)

    def argv(self, *command: str) -> list[str]:
        """A command line that runs `command` inside the namespace."""
        return ["nsenter", f"--net={self.path}", "--", *command]

    def close(self) -> None:
        if self._holder.poll() is None:
            self._holder.kill()
        self._holder.communicate()


def open_mdns(netns: Netns, url: str, **options: Any) -> MdnsRegistry:
    """A registry from `url` whose sockets are in `netns` (call on the running event loop)."""
    registry = registry_from_url(url, **options)
    assert isinstance(registry, MdnsRegistry)
    with netns.entered():
        registry.open()
    return registry


def go_micro_txt(raw_json: bytes) -> list[bytes]:
    """TXT strings as go-micro writes them: hex(zlib(JSON)) cut into 255-byte pieces."""
    packed = zlib.compress(raw_json, 9).hex().encode()
    return [packed[i : i + 255] for i in range(0, len(packed), 255)]


def go_micro_instance(service: str, node: str, domain: str, *, port: int, txt: list[bytes], host: str) -> Any:
    """A zeroconf ServiceInfo for `<node>.<service>.<domain>.` on `host` at 127.0.0.1, as
    go-micro (or anyone on the LAN) announces one; the names are set after construction
    because ServiceInfo insists on `local.`."""
    from zeroconf import ServiceInfo

    info = ServiceInfo(
        "_x._tcp.local.",
        "a._x._tcp.local.",
        port=port,
        properties=b"".join(bytes([len(s)]) + s for s in txt),
        parsed_addresses=["127.0.0.1"],
        server=host,
    )
    info.type = f"{service}.{domain}."
    info.name = f"{node}.{service}.{domain}."
    info.server, info.server_key = host, host.lower()
    return info


def fresh_domain() -> str:
    """A domain no other test uses (`t` + 12 hex digits)."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mdns_netns() -> Iterator[Netns]:
    netns = Netns()
    try:
        yield netns
    finally:
        netns.close()


#: registries the factory yielded (by id) -> their namespace and URL, for `share=`
_YIELDED: dict[int, tuple[Netns, str]] = {}


@registry_backend("mdns")
@contextlib.asynccontextmanager
async def mdns_backend(
    request: pytest.FixtureRequest, *, share: MdnsRegistry | None = None, **options: Any
) -> AsyncIterator[MdnsRegistry]:
    """A registry in a fresh namespace; with `share`, a second one beside that one."""
    if share is not None:
        netns, url = _YIELDED[id(share)]
        async with open_mdns(netns, url, **options) as registry:
            yield registry
        return
    netns = Netns()
    url = f"mdns://?domain={fresh_domain()}&interface=lo"
    try:
        async with open_mdns(netns, url, **options) as registry:
            _YIELDED[id(registry)] = (netns, url)
            try:
                yield registry
            finally:
                del _YIELDED[id(registry)]
    finally:
        netns.close()
