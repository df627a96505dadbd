"""The message engines `pubsub.py` starts: nats-server (core and JetStream), redis-server and
RabbitMQ, each on free loopback ports with its data in a temp dir, stopped by its PID.

- `nats`: `rpc_nats.start_nats_server` (the RPC bench's starter, reused as it is).
- `jetstream`: `nats-server -a 127.0.0.1 -p P -m M -js -sd DIR`, ready once `/healthz` on the
  monitor port says so (JetStream included).
- `redis`: `redis-server --bind 127.0.0.1 --port P --save '' --appendonly no --dir DIR
  --daemonize no`: no persistence, the same for the raw and the microweave stacks.
- `registry`: no process, a temp dir for a `local://` registry (`direct://` finds its
  subscribers there).
- `rabbitmq`: Debian's server script from /usr/lib/rabbitmq/bin (the /usr/sbin wrapper switches
  to the rabbitmq user and its HOME), a node of its own with everything under one directory, its
  own `epmd` in the foreground (otherwise Erlang leaves an `epmd -daemon` behind) and an explicit
  distribution port (the default, AMQP port + 20000, is past 65535 for high ports). Its
  schedulers do not busy-wait (`+sbwt none`...): on two shared CPUs a spinning broker would
  steal the CPU the publisher and subscriber measure on. Ready once it answers the AMQP
  protocol header (7-40 s).

Every engine gets SIGTERM from the kernel if the bench dies (`PR_SET_PDEATHSIG`). `cpu_pid` is
the process whose CPU time counts as the broker's (RabbitMQ's Erlang VM, not its script).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rpc_nats import _child_setup, _free_port, nats_server_missing, start_nats_server

__all__ = ["ENGINES", "EngineProcess", "engine_missing", "start_engine"]

RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"  # AMQP 0-9-1; a broker answers with a method frame (type 1)
RABBITMQ_CONFIG = "log.console = true\nlog.console.level = warning\nlog.file = false\n"
RABBITMQ_READY_TIMEOUT = 90.0
ENGINES = ("nats", "jetstream", "redis", "rabbitmq", "registry")


@dataclass
class EngineProcess:
    """One running engine (and its helpers, e.g. RabbitMQ's epmd), stopped in reverse order."""

    kind: str
    #: None for the `registry` engine, which is only a directory
    process: subprocess.Popen[bytes] | None
    url: str
    log_path: str
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: the pid whose CPU time is the broker's, when it is not `process` itself
    find_cpu_pid: Callable[[], int | None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def cpu_pid(self) -> int | None:
        return self.find_cpu_pid() if self.find_cpu_pid else self.pid

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 20 s; then the helpers."""
        lingering = self.cpu_pid if self.find_cpu_pid else None
        for process in (self.process, *reversed(self.helpers)):
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            if process is self.process and lingering is not None and _alive(lingering):
                os.kill(lingering, signal.SIGKILL)  # the script gave up on its VM: never leave one

    def log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def engine_missing(kind: str) -> str | None:
    """What to install for `kind`, or None when its binaries are here."""
    if kind in ("nats", "jetstream"):
        return nats_server_missing()
    if kind == "redis" and shutil.which("redis-server") is None:
        return "install redis-server (Debian/Ubuntu: apt-get install redis-server)"
    if kind == "rabbitmq":
        if not (RABBITMQ_SCRIPTS / "rabbitmq-server").is_file():
            return (
                f"install rabbitmq-server (Debian/Ubuntu: apt-get install rabbitmq-server; "
                f"it provides {RABBITMQ_SCRIPTS})"
            )
        if shutil.which("epmd") is None:
            return "install epmd (Debian/Ubuntu: apt-get install erlang-base)"
    return None


def start_engine(kind: str, directory: str) -> EngineProcess:
    os.makedirs(directory, exist_ok=True)
    if kind == "registry":
        return EngineProcess(kind, None, "local://" + os.path.abspath(directory), directory)
    if kind == "nats":
        server = start_nats_server(directory)
        return EngineProcess(kind, server.process, server.url, server.log_path)
    starter = {"jetstream": _start_jetstream, "redis": _start_redis, "rabbitmq": _start_rabbitmq}[kind]
    return starter(directory)


# -- helpers ---------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def _spawn(argv: list[str], log_path: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only the bench, which stops it in order
            preexec_fn=_child_setup(None),  # the bench starts no threads: fork-safe
        )


def _wait_ready(engine: EngineProcess, ready: Callable[[], bool], timeout: float, what: str) -> EngineProcess:
    deadline = time.monotonic() + timeout
    assert engine.process is not None
    try:
        while True:
            if engine.process.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with code {engine.process.returncode} at start; log: {engine.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                if ready():
                    return engine
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s; log: {engine.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        engine.stop()
        raise


def _start_jetstream(directory: str) -> EngineProcess:
    port, monitor = _free_port(), _free_port()
    store = os.path.join(directory, f"jetstream-{port}")
    log_path = os.path.join(directory, f"nats-server-js-{port}.log")
    argv = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor), "-js", "-sd", store]
    engine = EngineProcess("jetstream", _spawn(argv, log_path), f"nats://127.0.0.1:{port}", log_path)

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz", timeout=1) as answer:
            return bool(answer.status == 200)

    return _wait_ready(engine, healthy, 15.0, "nats-server -js")


def _start_redis(directory: str) -> EngineProcess:
    port = _free_port()
    data = os.path.join(directory, f"redis-{port}")
    os.makedirs(data)
    log_path = os.path.join(directory, f"redis-{port}.log")
    argv = [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", data, "--daemonize", "no",
    ]  # fmt: skip
    engine = EngineProcess("redis", _spawn(argv, log_path), f"redis://127.0.0.1:{port}", log_path)

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    return _wait_ready(engine, pong, 15.0, "redis-server")


def _start_rabbitmq(directory: str) -> EngineProcess:
    port, epmd_port, dist_port = _free_port(), _free_port(), _free_port()
    base = Path(directory) / f"rabbitmq-{port}"
    base.mkdir(parents=True)
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(RABBITMQ_CONFIG)
    (base / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
    pid_file = base / "rabbitmq.pid"
    epmd = _spawn(
        ["epmd", "-address", "127.0.0.1", "-port", str(epmd_port)], str(base / "epmd.log"), dict(os.environ)
    )
    env = {
        **os.environ,
        "HOME": str(base),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODENAME": f"bench{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(pid_file),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),  # absent on purpose
        "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),
        "RABBITMQ_SCHEDULER_BIND_TYPE": "u",  # unbound: the machine is shared
        # no busy-waiting schedulers: a spinning VM would take the CPUs the bench measures on
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
    }
    log_path = str(base / "rabbitmq.log")
    try:
        _wait_port(epmd_port, epmd, 10.0)
        script = _spawn([str(RABBITMQ_SCRIPTS / "rabbitmq-server")], log_path, env)
    except BaseException:
        epmd.terminate()
        epmd.wait(5)
        raise

    def beam_pid() -> int | None:
        children = Path(f"/proc/{script.pid}/task/{script.pid}/children")
        with contextlib.suppress(OSError, ValueError):
            for child in children.read_text().split():
                if Path(f"/proc/{child}/comm").read_text().startswith("beam"):
                    return int(child)
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().startswith("beam") and _alive(pid):
                return pid
        return None

    engine = EngineProcess(
        "rabbitmq", script, f"amqp://guest:guest@127.0.0.1:{port}/", log_path, [epmd], beam_pid
    )

    def answers_amqp() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(AMQP_HEADER)
            return sock.recv(1) == b"\x01"

    return _wait_ready(engine, answers_amqp, RABBITMQ_READY_TIMEOUT, "rabbitmq-server")


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"epmd exited with code {process.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"epmd not listening on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.02)
