"""podman for the container tests: its settings, the locally built base image, the greeter
image built once per session from the repository's Dockerfile, and containers that are always
removed.

- Settings come from scripts/peers/podman-env (runc, ulimits the host allows, a storage of our
  own under the peer cache): the tests never touch the machine's own podman images.
- The base image is made by scripts/peers/baseimage (mmdebstrap + `podman import`, cached;
  no image registry is reachable here); missing, it is an error that says to run it.
- The greeter image: `podman build --format docker` (the OCI format drops the HEALTHCHECK)
  of the repository root with `PYTHON_BASE` set to that base. pip inside the build trusts the
  host's CA bundle, mounted read-only for the build only (never a layer of the image).
- Containers run on slirp4netns with `allow_host_loopback`: the host's 127.0.0.1 is 10.0.2.2
  inside (etcd on the host's loopback stays there), and each port is published on the host's
  127.0.0.1 under the same number it listens on in the container, so the address a node
  advertises (MICRO_ADVERTISE_ADDRESS=127.0.0.1, its own port) is one the host can dial.
  Nothing listens on a host interface other than loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

from engines import find_binary, free_port

__all__ = [
    "HOST_LOOPBACK",
    "Container",
    "Containers",
    "Podman",
    "build_image",
    "find_base_image",
    "image_size_mb",
]

#: the host's 127.0.0.1 as a container on slirp4netns (allow_host_loopback=true) reaches it
HOST_LOOPBACK = "10.0.2.2"
#: the CA bundle pip trusts inside the build (this host's, with its proxy's CA)
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
GREETER_IMAGE = "localhost/microweave-greeter:test"


def _podman_env() -> dict[str, str]:
    """CONTAINERS_CONF and CONTAINERS_STORAGE_CONF as scripts/peers/podman-env writes them."""
    done = subprocess.run(
        [str(REPO / "scripts/peers/podman-env")], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise pytest.UsageError(f"scripts/peers/podman-env failed: {done.stderr.strip()}")
    env = {}
    for line in done.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


class Podman:
    """The podman CLI with the tests' settings."""

    def __init__(self) -> None:
        self.binary = find_binary("podman", debian="podman runc slirp4netns (scripts/peers/engines)")
        self.env = {**os.environ, **_podman_env()}

    def __call__(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        """Run `podman ARGS`; its stdout. A failure raises with podman's stderr."""
        done = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman {shlex.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def succeeds(self, *args: str, timeout: float = 120.0) -> bool:
        """Whether `podman ARGS` exits 0 (`image exists`, `healthcheck run`, ...)."""
        done = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, timeout=timeout, check=False
        )
        return done.returncode == 0

    def argv(self, *args: str) -> list[str]:
        """The command line of `podman ARGS`, to run as a process of one's own (with `env`)."""
        return [self.binary, *args]


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None if PID is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]


class Container:
    """One container, known by its id; its ports are the same numbers inside and on the host's
    127.0.0.1."""

    def __init__(self, podman: Podman, container_id: str, ports: Mapping[str, int]) -> None:
        self.podman = podman
        self.id = container_id
        self.ports = dict(ports)

    def inspect(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.podman("container", "inspect", self.id))
        return found[0]

    def running(self) -> bool:
        """Whether podman says it runs (false already while `podman stop` waits for it)."""
        state = self.podman("container", "inspect", "--format", "{{.State.Running}}", self.id)
        return state.strip() == "true"

    def process(self) -> tuple[int, str]:
        """The host's PID of the container's PID 1 and its start time (podman runs rootful
        here, so it is a process of this host): what `alive` checks."""
        pid = int(self.podman("container", "inspect", "--format", "{{.State.Pid}}", self.id).strip())
        assert pid > 0, f"container {self.id[:12]} is not running"
        return pid, _start_time(pid) or ""

    @staticmethod
    def alive(process: tuple[int, str]) -> bool:
        """Whether that process still runs: the same PID and start time, not a zombie. Podman's
        own state cannot tell: it says "stopping" from the SIGTERM until it has reaped PID 1."""
        pid, started = process
        return _start_time(pid) == started

    def exit_code(self) -> int:
        return int(self.inspect()["State"]["ExitCode"])

    def logs(self) -> str:
        done = subprocess.run(
            self.podman.argv("logs", self.id),
            env=self.podman.env,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout + done.stderr

    def exec(self, *argv: str, check: bool = True) -> str:
        return self.podman("exec", self.id, *argv, check=check)

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}{path}"


class Containers:
    """Starts containers for one test; every one is removed at the end (`podman rm -f`)."""

    def __init__(self, podman: Podman) -> None:
        self.podman = podman
        self.started: list[Container] = []

    def run(
        self,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
        options: tuple[str, ...] = (),
    ) -> Container:
        """A detached container of `image` with gRPC, tcp and admin listening on 0.0.0.0 at
        ports free on the host, each published on the host's 127.0.0.1 under its own number;
        `options` go to `podman run` (`--read-only`), `args` to the entrypoint."""
        ports = {"grpc": free_port(), "tcp": free_port(), "admin": free_port()}
        settings = {
            "MICRO_SERVER_ADDRESS": f"0.0.0.0:{ports['grpc']}",
            "MICRO_TCP_ADDRESS": f"0.0.0.0:{ports['tcp']}",
            "MICRO_ADMIN_ADDRESS": f"0.0.0.0:{ports['admin']}",
            "MICRO_ADVERTISE_ADDRESS": "127.0.0.1",
            **(env or {}),
        }
        argv = [
            "run", "--detach", "--name", f"microweave-test-{uuid.uuid4().hex[:10]}",
            "--network", "slirp4netns:allow_host_loopback=true",
        ]  # fmt: skip
        for port in ports.values():
            argv += ["--publish", f"127.0.0.1:{port}:{port}"]
        for name, value in settings.items():
            argv += ["--env", f"{name}={value}"]
        container_id = self.podman(*argv, *options, image, *args).strip()
        container = Container(self.podman, container_id, ports)
        self.started.append(container)
        return container

    def remove_all(self) -> None:
        for container in self.started:
            self.podman("rm", "--force", "--time", "0", container.id, check=False)
        self.started = []


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman with the tests' settings; missing, an error naming scripts/peers/engines."""
    return Podman()


def find_base_image(podman: Podman) -> str:
    """localhost/microweave-base:<key> if scripts/peers/baseimage made it; an error saying to
    run it if not."""
    done = subprocess.run(
        [str(REPO / "scripts/peers/baseimage"), "--path"],
        capture_output=True,
        text=True,
        check=False,
        env=podman.env,
        timeout=120,
    )
    if done.returncode != 0:
        said = done.stderr.strip() or "the base image is not built: run scripts/peers/baseimage"
        raise pytest.UsageError(f"{said} (./scripts/test does it for you)")
    return done.stdout.strip()


@pytest.fixture(scope="session")
def base_image(podman: Podman) -> str:
    """localhost/microweave-base:<key>, made by scripts/peers/baseimage (cached)."""
    return find_base_image(podman)


def build_image(podman: Podman, base_image: str, tag: str, log: Path, context: Path = REPO) -> None:
    """`podman build` of `context`'s Dockerfile (the repository's) on `base_image`; its output in `log`.
    Untagged images of earlier builds (~220 MB each: the build stage) are removed afterwards,
    so the storage does not grow by one at every change of the repository."""
    started = time.time()
    argv = podman.argv(
        "build", "--format", "docker", "--tag", tag,
        "--build-arg", f"PYTHON_BASE={base_image}",
        "--build-arg", f"PIP_ARGS=--cert {HOST_CA_BUNDLE}",
        "--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
        str(context),
    )  # fmt: skip
    for _ in range(2):
        with log.open("wb") as out:
            done = subprocess.run(
                argv, env=podman.env, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=900
            )
        # buildah's cache lookup can trip over a layer that is being removed ("checking if
        # cached image exists from a previous build: ... layer not known", buildah#5674, fixed
        # in 1.43; Debian's podman 4.3 has 1.28): once, a second build goes through
        if done.returncode == 0 or "layer not known" not in log.read_text(errors="replace"):
            break
    if done.returncode != 0:
        raise AssertionError(f"podman build failed ({done.returncode}):\n{log.read_text()[-4000:]}")
    podman("image", "prune", "--force", "--filter", f"until={int(started)}", check=False)


@pytest.fixture(scope="session")
def greeter_image(podman: Podman, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The greeter image, built once per session from the repository's Dockerfile."""
    build_image(podman, base_image, GREETER_IMAGE, tmp_path_factory.mktemp("podman-build") / "build.log")
    return GREETER_IMAGE


@pytest.fixture
def containers(podman: Podman) -> Iterator[Containers]:
    """Containers of this test; all removed afterwards, whatever happened."""
    started = Containers(podman)
    try:
        yield started
    finally:
        with contextlib.suppress(Exception):
            started.remove_all()


def image_size_mb(podman: Podman, image: str) -> float:
    """The image's size as podman reports it (its layers, uncompressed), in MB."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).strip()) / 1e6
