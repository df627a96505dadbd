"""RabbitMQ: Debian's rabbitmq-server run without systemd, on free loopback ports.

Each server is a node of its own (`mw<port>@localhost`) with everything under one directory:
HOME (its Erlang cookie), mnesia (queues, messages), logs, the pid file, a config file and an
empty plugin list. It runs the server script of /usr/lib/rabbitmq/bin, not the /usr/sbin
wrapper (that one switches to the rabbitmq user and its HOME), and its own `epmd` in the
foreground on a free port: without one Erlang starts a detached `epmd -daemon` that outlives
the tests. The distribution port is chosen too (the default, AMQP port + 20000, is past 65535
for high ports).

A start takes 7-12 s on an idle machine and up to ~40 s on a busy one, so:
- `rabbitmq_shared` (session): one server the whole run shares; tests keep to queue and
  exchange names of their own. The `rabbitmq` broker backend yields its URL.
- `rabbitmq_engine` (function): a server of the test's own, to stop (or kill) and start again
  on the same port and data: durable queues and persistent messages survive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import LoggedProcess

from engines import Engine, broker_backend, find_binary, free_port

__all__ = ["RabbitMQServer", "rabbitmq_server"]

#: the scripts that run the broker as the current user (the /usr/sbin ones switch user)
RABBITMQ_SCRIPTS = Path("/usr/lib/rabbitmq/bin")

# AMQP 0-9-1's protocol header; a broker answers it with a Connection.Start method frame (type 1)
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"

CONFIG = """\
log.console = true
log.console.level = info
log.console.use_colors = off
log.file = false
"""


def rabbitmq_script() -> str:
    find_binary("rabbitmq-server", debian="rabbitmq-server")  # an error naming the package
    script = RABBITMQ_SCRIPTS / "rabbitmq-server"
    if not script.is_file():
        raise pytest.UsageError(f"{script} is needed by these tests: apt-get install rabbitmq-server")
    return str(script)


class RabbitMQServer(Engine):
    """One RabbitMQ node and its epmd. `stop()` is SIGTERM to the node then to its epmd;
    `kill()` is SIGKILL to the node (a crash) and the end of its epmd; `start()` brings both
    back on the same ports, node name and data."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.epmd_port = free_port()
        self.dist_port = free_port()
        self.node = f"mw{self.port}@localhost"
        self.base = base = log_dir / f"rabbitmq-{self.port}"
        base.mkdir(parents=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq.conf").write_text(CONFIG)
        (base / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
        self.pid_file = base / "rabbitmq.pid"
        self._epmd_argv = [
            find_binary("epmd", debian="erlang-base"),
            "-address", "127.0.0.1",
            "-port", str(self.epmd_port),
        ]  # fmt: skip
        self._epmd: LoggedProcess | None = None
        self._epmd_starts = 0
        env = {
            "HOME": str(base),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),  # absent on purpose
            "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),  # not in the working directory
            # unbound schedulers: the machine is shared with other tests
            "RABBITMQ_SCHEDULER_BIND_TYPE": "u",
        }
        super().__init__(
            f"rabbitmq-{self.port}",
            [rabbitmq_script()],
            ready=self._answers_amqp,
            log_dir=base,
            env=env,
            ready_timeout=90,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.address}/"

    @property
    def beam_pid(self) -> int | None:
        """The Erlang VM's pid: the child of the server script (it writes it to the pid file
        too, but only some way into its boot)."""
        if self.process is None:
            return None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError, ValueError):
            for child in children.read_text().split():
                if _is_beam(int(child)):
                    return int(child)
        # an orphan (its script was SIGKILLed) is found by the pid file only
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            return pid if _is_beam(pid) else None
        return None

    @property
    def epmd_pid(self) -> int | None:
        return self._epmd.pid if self._epmd is not None and self._epmd.alive() else None

    def start(self) -> RabbitMQServer:
        self._start_epmd()
        try:
            super().start()
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM to the node (its script passes it on and waits), then to its epmd."""
        beam = self.beam_pid
        super().stop()
        if beam is not None and _is_beam(beam):  # the script gave up on it: never leave one behind
            os.kill(beam, signal.SIGKILL)
        self._stop_epmd()

    def kill(self) -> None:
        """SIGKILL to the Erlang VM, as in a crash; its script then exits, and so does epmd."""
        beam = self.beam_pid
        if beam is not None:
            os.kill(beam, signal.SIGKILL)
            if self.process is not None:
                # the script reaps the VM and exits; SIGKILLed below if it does not
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(10)
        super().kill()
        self._stop_epmd()

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.alive():
            return
        self._epmd_starts += 1
        log = self.base / f"epmd-{self._epmd_starts}.log"
        self._epmd = LoggedProcess(self._epmd_argv, env=os.environ, log_path=log)
        deadline = time.monotonic() + 10
        while True:
            if not self._epmd.alive():
                raise RuntimeError(f"epmd exited at start:\n{self._epmd.output()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.epmd_port), 1):
                return
            if time.monotonic() > deadline:
                self._stop_epmd()
                raise RuntimeError(f"epmd not listening on 127.0.0.1:{self.epmd_port} after 10 s")
            time.sleep(0.02)

    def _stop_epmd(self) -> None:
        if self._epmd is not None:
            self._epmd.stop()
            self._epmd = None

    def _answers_amqp(self) -> bool:
        # the listener opens once queues are recovered, near the end of the boot
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(AMQP_HEADER)
            return sock.recv(1) == b"\x01"


def _is_beam(pid: int) -> bool:
    """Whether `pid` is an Erlang VM still running (not a zombie, not a reused pid)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    fields = {key: value.strip() for key, _, value in (line.partition(":") for line in status.splitlines())}
    return fields.get("Name", "").startswith("beam") and not fields.get("State", "").startswith("Z")


@contextlib.contextmanager
def rabbitmq_server(log_dir: Path) -> Iterator[RabbitMQServer]:
    server = RabbitMQServer(log_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rabbitmq_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """One RabbitMQ for the whole run: use queue and exchange names of this test's own, and
    never stop it (take `rabbitmq_engine` for that)."""
    with rabbitmq_server(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server


@pytest.fixture
def rabbitmq_engine(tmp_path: Path) -> Iterator[RabbitMQServer]:
    """A RabbitMQ of this test's own (stop()/start() or kill()/start() it for an outage that
    keeps durable queues and persistent messages)."""
    with rabbitmq_server(tmp_path) as server:
        yield server


@broker_backend("rabbitmq")
@contextlib.asynccontextmanager
async def rabbitmq_broker_backend(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The URL of the session's RabbitMQ (the test keeps to names of its own)."""
    server: RabbitMQServer = request.getfixturevalue("rabbitmq_shared")
    yield server.url
