"""The stacks a Python team would pick instead of an RPC framework: request/reply over NATS.

- `nats-py`: raw nats-py. The server half subscribes to a subject and answers each message with
  `msg.respond(msg.data)`; the client half calls `nc.request(subject, body)`. 64 raw bytes.
- `faststream-nats`: faststream's `NatsBroker`. The server half is a typed subscriber
  `echo(EchoRequest) -> EchoReply` (pydantic models, the same 64-byte JSON body as microweave's
  handler), the client half `broker.request(EchoRequest(...), subject)` and decodes the reply
  into `EchoReply`. faststream's per-message INFO access log is off (a logger at WARNING), as
  microweave logs nothing per call either.

Both need a `nats-server`: `rpc.py` starts one per stack with `start_nats_server()` (127.0.0.1,
a free port, its log in a temp dir) and stops it by its PID; its URL reaches the server half in
the environment (`BENCH_NATS_URL`) and the client half as `--address`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rpc_base import JSON_DATA, PAYLOAD, Server, Stack, StackClient, expect

__all__ = ["NATS_STACKS", "NATS_URL_ENV", "NatsServer", "start_nats_server"]

NATS_URL_ENV = "BENCH_NATS_URL"
SUBJECT = "bench.echo"
#: seconds a request waits for its reply (faststream's default is 0.5 s, too short under load)
REQUEST_TIMEOUT = 10.0
INSTALL_EXTRA = "pip install -e '.[bench]' (faststream[nats], nats-py)"


# -- the nats-server process ----------------------------------------------------------------


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    url: str
    log_path: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def nats_server_missing() -> str | None:
    if shutil.which("nats-server") is None:
        return "install nats-server (Debian/Ubuntu: apt-get install nats-server)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    """True once a NATS server greets us with its INFO line on `port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(16).startswith(b"INFO ")
    except OSError:
        return False


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    """Runs in the forked child before exec: pin it, and have it die with the bench."""
    libc: Any = None
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)
        if libc is not None:
            # PR_SET_PDEATHSIG: SIGTERM when the bench dies, even by SIGKILL (it cannot clean up)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)

    return setup


def start_nats_server(directory: str, cpus: set[int] | None = None, timeout: float = 10.0) -> NatsServer:
    """A nats-server of our own on a free loopback port, ready to serve, logging into `directory`."""
    os.makedirs(directory, exist_ok=True)
    failures = []
    for _ in range(3):  # the free port may be taken by someone else before nats-server binds it
        port = _free_port()
        log_path = os.path.join(directory, f"nats-server-{port}.log")
        process = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-l", log_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only the bench, which stops it in order
            preexec_fn=_child_setup(cpus),  # the bench starts no threads: fork-safe
        )
        server = NatsServer(process, f"nats://127.0.0.1:{port}", log_path)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process.poll() is None:
                if _answers(port):
                    time.sleep(0.05)
                    if process.poll() is None:  # the one answering is ours, not a squatter
                        return server
                time.sleep(0.05)
        except BaseException:  # Ctrl-C while waiting: do not leave it behind
            server.stop()
            raise
        failures.append(f"port {port}: exit code {process.poll()}, log: {server.log_tail()}")
        server.stop()
    raise RuntimeError("nats-server did not start: " + "; ".join(failures))


def _module_missing(*modules: str) -> str | None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"install the bench extra: {INSTALL_EXTRA}; module {module!r} is missing"
    return None


def _nats_url() -> str:
    url = os.environ.get(NATS_URL_ENV)
    if not url:
        raise RuntimeError(f"{NATS_URL_ENV} is not set: rpc.py starts nats-server and sets it")
    return url


# -- raw nats-py ----------------------------------------------------------------------------


class _NatsPyServer(Server):
    def __init__(self, nc: Any, address: str) -> None:
        self.nc = nc
        self.address = address

    async def aclose(self) -> None:
        await self.nc.drain()


class _NatsPyClient(StackClient):
    def __init__(self, nc: Any) -> None:
        self.nc = nc

    async def worker(self) -> Callable[[], Awaitable[Any]]:
        request = self.nc.request

        def one() -> Awaitable[Any]:
            return request(SUBJECT, PAYLOAD, timeout=REQUEST_TIMEOUT)  # type: ignore[no-any-return]

        return one

    async def check(self) -> None:
        reply = await (await self.worker())()
        expect(reply.data, PAYLOAD, "nats-py")

    async def aclose(self) -> None:
        await self.nc.close()


class NatsPy(Stack):
    name = "nats-py"
    broker = "nats"
    description = "raw nats-py: a responder subscribed to a subject, nc.request(), through nats-server"

    def unavailable(self) -> str | None:
        return nats_server_missing() or _module_missing("nats")

    async def serve(self, host: str) -> Server:
        import nats

        url = _nats_url()
        nc = await nats.connect(url, name="bench-nats-py-responder")

        async def respond(msg: Any) -> None:
            await msg.respond(msg.data)

        await nc.subscribe(SUBJECT, cb=respond)
        await nc.flush()  # the subscription is on the server before we say we are ready
        return _NatsPyServer(nc, url)

    async def client(self, address: str) -> StackClient:
        import nats

        return _NatsPyClient(await nats.connect(address, name="bench-nats-py-client"))


# -- faststream over NATS -------------------------------------------------------------------


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("bench.faststream")
    logger.setLevel(logging.WARNING)
    return logger


def _models() -> tuple[type[Any], type[Any]]:
    from pydantic import BaseModel

    class EchoRequest(BaseModel):
        data: str

    class EchoReply(BaseModel):
        data: str

    return EchoRequest, EchoReply


class _FaststreamServer(Server):
    def __init__(self, broker: Any, address: str) -> None:
        self.broker = broker
        self.address = address

    async def aclose(self) -> None:
        await self.broker.stop()


class _FaststreamClient(StackClient):
    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.request_type, self.reply_type = _models()

    async def worker(self) -> Callable[[], Awaitable[Any]]:
        request, decode = self.broker.request, self.reply_type.model_validate_json
        body = self.request_type(data=JSON_DATA)

        async def one() -> Any:
            reply = await request(body, SUBJECT, timeout=REQUEST_TIMEOUT)
            return decode(reply.body)

        return one

    async def check(self) -> None:
        reply = await (await self.worker())()
        expect(reply, self.reply_type(data=JSON_DATA), "faststream-nats")

    async def aclose(self) -> None:
        await self.broker.stop()


class FaststreamNats(Stack):
    name = "faststream-nats"
    broker = "nats"
    description = "faststream NatsBroker: typed subscriber (pydantic) + broker.request(), through nats-server"

    def unavailable(self) -> str | None:
        return nats_server_missing() or _module_missing("nats", "faststream", "pydantic")

    async def serve(self, host: str) -> Server:
        from faststream.nats import NatsBroker

        url = _nats_url()
        request_type, reply_type = _models()
        broker = NatsBroker(url, logger=_quiet_logger())

        # faststream reads the handler's annotations: the model classes must be real types here
        async def echo(request: Any) -> Any:
            return reply_type(data=request.data)

        echo.__annotations__ = {"request": request_type, "return": reply_type}
        broker.subscriber(SUBJECT)(echo)
        await broker.start()
        await broker.connection.flush()  # the subscription is on the server before "ready"
        return _FaststreamServer(broker, url)

    async def client(self, address: str) -> StackClient:
        from faststream.nats import NatsBroker

        broker = NatsBroker(address, logger=_quiet_logger())
        await broker.connect()
        return _FaststreamClient(broker)


NATS_STACKS: tuple[Stack, ...] = (FaststreamNats(), NatsPy())
