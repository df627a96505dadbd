"""microweave's own transport for microweave-to-microweave calls: framed, multiplexed TCP.

gRPC stays the wire for the world; this one is several times faster from Python because a call
is one frame each way handled in a Protocol callback (docs/protocol.md has the wire spec).
"""

from .client import TcpClient
from .server import TcpServer

__all__ = ["TcpClient", "TcpServer"]
