"""Queries sent from a port of our own, so answers come back at once, by unicast.

A query from port 5353 is answered by multicast, and a responder delays a multicast answer by
20-120 ms, or by a second if it multicast the same record within the last second (RFC 6762
§6; zeroconf does both). A query from any other port is a "legacy unicast" query (§6.7): it
is answered at once, to that port. go-micro's responder answers every query by unicast to the
asking port, so a query from 5353 (shared by every mDNS process on the host through
SO_REUSEPORT, which hands a unicast datagram to just one of them) could reach someone else.
go-micro's own client asks from an ephemeral port for the same reason. Answers are handed to
zeroconf's record manager, the path multicast answers take, so the tracker sees both alike.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from zeroconf import Zeroconf
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing

__all__ = ["Asker"]

_GROUP = ("224.0.0.251", 5353)
_MAX_PACKET = 9000


def asker_socket(address: str | None) -> socket.socket:
    """A UDP socket on an ephemeral port that multicasts on `address`'s interface."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        if address is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        sock.bind((address or "0.0.0.0", 0))
    except OSError:
        sock.close()
        raise
    return sock


class _Answers(asyncio.DatagramProtocol):
    def __init__(self, zc: Zeroconf, asker: Asker) -> None:
        self.zc = zc
        self.asker = asker

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > _MAX_PACKET:
            return
        self.asker.last_answer = time.monotonic()
        msg = DNSIncoming(data, (addr[0], addr[1]))
        if msg.valid and not msg.is_query():
            self.zc.record_manager.async_updates_from_response(msg)


class Asker:
    """The sockets (one per interface address, made in `__init__`) that send our queries."""

    def __init__(self, addresses: list[str] | None) -> None:
        """One socket per address (None or []: one, where the kernel routes multicast); an
        address that takes no socket is skipped while another does."""
        self._sockets: list[socket.socket] = []
        self.last_answer = 0.0  # time.monotonic() of the last answer: still coming while recent
        self._transports: list[asyncio.DatagramTransport] = []
        choices: list[str | None] = [*addresses] if addresses else [None]
        failure: OSError | None = None
        for address in choices:
            try:
                self._sockets.append(asker_socket(address))
            except OSError as exc:
                failure = exc
        if not self._sockets and failure is not None:
            raise failure

    async def start(self, zc: Zeroconf) -> None:
        loop = asyncio.get_running_loop()
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Answers(zc, self), sock=sock)
            self._transports.append(transport)

    def ask(self, out: DNSOutgoing) -> None:
        for packet in out.packets():
            for transport in self._transports:
                transport.sendto(packet, _GROUP)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        for transport in self._transports:
            transport.close()
        self._sockets, self._transports = [], []
