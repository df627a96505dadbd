"""Every limit and timeout a server transport applies to its peers, in one place.

Each bounds something a peer could otherwise make a node hold or do without end (memory, file
descriptors, CPU, a handler run many times). The `tcp` server reads them when it is built
(`TcpServer(...)` takes each as a keyword option; these are the defaults); docs/protocol.md
section 15 lists them with the wire behaviour when one is exceeded. Changing a value here
before a service starts changes that service's default.
"""

from __future__ import annotations

#: Open streams one connection may have at once; advertised in the server's SETTINGS
#: (`max_concurrent_streams`), request HEADERS beyond it are refused with REFUSED_STREAM
#: (the call was not started: safe to retry). It also bounds the calls one connection can have
#: running, so the replies a peer that never reads can make us hold. gRPC gets the same
#: default through the `grpc.max_concurrent_streams` server option.
MAX_CONCURRENT_STREAMS = 256

#: Request bytes one connection may make the server hold for its handlers: messages waiting in
#: client- and bidi-streaming inboxes, and unary or server-streaming bodies whose request is
#: not complete yet. Checked after each message is accepted (so a single message up to
#: `max_frame_size` always gets through: at most this plus one frame is held); over it, the
#: connection is not read until its handlers have consumed enough to bring it under half.
#: Without it, flow control alone lets one connection hold max_concurrent_streams x window x
#: max_frame_size (256 x 16 x 4 MiB = 16 GiB) in front of slow handlers.
MAX_BUFFERED_BYTES = 16 * 1024 * 1024

#: Connections the tcp server holds at once; a connection over the cap is accepted, told
#: GOAWAY (NO_ERROR, "connection limit") and closed at once, so it costs a descriptor for
#: microseconds, not for as long as the peer likes. The effective cap is also kept below the
#: process's descriptor limit (RLIMIT_NOFILE) minus `FD_RESERVE`.
MAX_CONNECTIONS = 10_000

#: Descriptors kept free for everything else the node does (registry heartbeat files, the
#: gRPC port, outgoing calls, logs) however many tcp peers connect.
FD_RESERVE = 128

#: Seconds a new connection has to send its preface and SETTINGS.
HANDSHAKE_TIMEOUT = 10.0

#: Seconds a frame may take to arrive once its first byte has: a peer trickling bytes that
#: never complete a frame is closed. Only complete frames count as a sign of life (keepalive).
FRAME_TIMEOUT = 30.0

#: Seconds a unary or server-streaming request may wait, after its HEADERS, for the DATA frame
#: that carries its body (the long form); the stream then fails with 408. Independent of the
#: caller's deadline, which also runs from the HEADERS.
BODY_TIMEOUT = 10.0

#: PINGs (without ACK) a peer may send per `PING_WINDOW` seconds; one more and the connection
#: is closed with GOAWAY ENHANCE_YOUR_CALM. Keepalive needs one PING per 30 s.
PING_BUDGET = 100
PING_WINDOW = 10.0

#: Frames handled from one connection before the others get a turn of the event loop; the
#: rest wait (and the connection is not read meanwhile). A batch of unary calls fits in one
#: turn; a flood of cheap frames cannot hold the loop.
FRAMES_PER_TURN = 256

#: Connection-level warnings (a peer broke the protocol, missed its keepalive, ...) logged per
#: kind per this many seconds; the next line says how many were suppressed.
LOG_INTERVAL = 1.0
