"""The greeter's image, built by podman from the repository's Dockerfile on a base image made
locally (mmdebstrap + podman import), running in containers: registered in a real etcd on the
host, called by a host client, and stopped by `podman stop` under a load of calls without one
failing, its node leaving the registry before the container exits.

Network (tests/engines/podman.py): slirp4netns with the host's loopback reachable as 10.0.2.2,
ports published on the host's 127.0.0.1 under the numbers they listen on inside, and
MICRO_ADVERTISE_ADDRESS=127.0.0.1, so every advertised address is one the host can dial.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import pathlib
import shutil
import urllib.error
import urllib.request
from collections.abc import Awaitable

import msgspec
import pytest
from engines.etcd import EtcdServer
from engines.podman import HOST_LOOPBACK, Container, Containers, Podman
from helpers import REPO, async_wait_until, say_hello_until

from microweave import Client
from microweave.registry import Action, Registry
from microweave.registry import from_url as registry_from_url

# the first test of a session builds the image (~1-2 min with a warm pip cache)
# one podman storage: under pytest-xdist these tests share a worker (a build's prune of
# earlier build stages must not meet another worker's build)
pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("podman")]

#: a container's own address on slirp4netns (podman's default for that network)
CONTAINER_ADDRESS = "10.0.2.100"


class HelloRequest(msgspec.Struct):
    name: str


class HelloReply(msgspec.Struct):
    message: str


def inside(url: str) -> str:
    """The registry URL as a container reaches it (the host's loopback is 10.0.2.2 there)."""
    return url.replace("127.0.0.1", HOST_LOOPBACK, 1)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def ready(container: Container) -> tuple[int, str]:
    """/health/ready of the container, from the host: its status once it answers 200."""

    async def answered() -> tuple[int, str] | None:
        try:
            status, body = await asyncio.to_thread(http_get, container.admin_url("/health/ready"))
        except OSError:
            status, body = 0, ""
        if status == 200:
            return status, body
        if not await asyncio.to_thread(container.running):
            raise AssertionError(f"the container exited before it was ready:\n{container.logs()[-3000:]}")
        return None

    found = await async_wait_until(answered, timeout=60, interval=0.2, what="/health/ready to answer 200")
    assert found is not None
    return found


async def node_of(registry: Registry, container: Container) -> str:
    """The id of the container's node, found in the registry by its advertised gRPC address."""
    address = f"127.0.0.1:{container.ports['grpc']}"

    async def registered() -> str | None:
        for record in await registry.get_service("greeter"):
            for node in record.nodes:
                if node.address == address:
                    return node.id
        return None

    return await async_wait_until(registered, timeout=30, what=f"a greeter node at {address} in etcd")


def served(container: Container) -> float:
    """Greeter.SayHello calls the container's node served, read from its /metrics (a node's
    own calls out are micro_client_request_total)."""
    _, text = http_get(container.admin_url("/metrics"))
    total = 0.0
    for line in text.splitlines():
        if line.startswith("micro_request_total{") and 'endpoint="Greeter.SayHello"' in line:
            total += float(line.rpartition(" ")[2])
    return total


@contextlib.asynccontextmanager
async def registry_on(url: str) -> collections.abc.AsyncIterator[Registry]:
    registry = registry_from_url(url)
    try:
        yield registry
    finally:
        await registry.aclose()


async def test_the_image_serves_as_a_healthy_non_root_pid_1_without_compilers(
    podman: Podman, greeter_image: str, containers: Containers, etcd_registry_url: str
) -> None:
    greeter = containers.run(greeter_image, env={"MICRO_REGISTRY": inside(etcd_registry_url)})
    status, body = await ready(greeter)  # from the host, through the published admin port
    assert status == 200, body

    assert greeter.exec("id", "-u").strip() == "10001"
    # python is PID 1 (no shell, no init in between): it gets podman's SIGTERM itself
    argv = greeter.exec("cat", "/proc/1/cmdline").split("\0")
    assert argv[1:4] == ["/opt/venv/bin/microweave", "run", "service.py"], argv
    # no set-user-id programs left (su, mount, passwd): nothing becomes root again
    setuid = greeter.exec("find", "/", "-xdev", "-type", "f", "-perm", "/6000", check=False)
    assert setuid.split() == []
    compilers = greeter.exec(
        "python",
        "-c",
        "import shutil; print([c for c in ('gcc', 'cc', 'c++', 'clang', 'make', 'ld') if shutil.which(c)])",
    )
    assert compilers.strip() == "[]"
    # the image's own HEALTHCHECK (podman keeps it in --format docker images)
    podman("healthcheck", "run", greeter.id)
    image = json.loads(podman("image", "inspect", greeter_image))[0]
    assert image["Config"]["User"] == "10001:10001"
    assert "/health/live" in " ".join(image["Healthcheck"]["Test"])


async def test_a_container_registers_in_etcd_and_a_host_client_calls_it(
    greeter_image: str, containers: Containers, etcd_registry_url: str
) -> None:
    greeter = containers.run(greeter_image, env={"MICRO_REGISTRY": inside(etcd_registry_url)})
    await ready(greeter)
    async with registry_on(etcd_registry_url) as registry:
        node_id = await node_of(registry, greeter)
        [record] = await registry.get_service("greeter")
        [node] = record.nodes
        # every advertised address is the published one, never the container's own 10.0.2.100
        assert node.id == node_id
        assert node.metadata["tcp_address"] == f"127.0.0.1:{greeter.ports['tcp']}"
        assert node.metadata["admin_address"] == f"127.0.0.1:{greeter.ports['admin']}"

    for transports in (("tcp",), ("grpc",)):
        async with Client(registry=etcd_registry_url, transports=transports, timeout=20) as client:
            reply = await client.call(
                "greeter", "Greeter.SayHello", HelloRequest(name="ada"), response=HelloReply
            )
            assert reply == HelloReply(message="Hello ada"), transports
            stream = client.stream(
                "greeter", "Greeter.SayHelloStream", HelloRequest(name="bo"), response=HelloReply
            )
            assert [r.message async for r in stream] == ["Hello b", "Hello o"], transports


async def test_podman_stop_under_load_fails_no_call_and_the_node_leaves_before_the_exit(
    podman: Podman,
    greeter_image: str,
    containers: Containers,
    etcd_server: EtcdServer,
    etcd_registry_url: str,
) -> None:
    env = {"MICRO_REGISTRY": inside(etcd_registry_url)}
    leaving, staying = containers.run(greeter_image, env=env), containers.run(greeter_image, env=env)
    await ready(leaving)
    await ready(staying)
    failures: list[str] = []
    calls = 0
    stop_load = asyncio.Event()

    async with registry_on(etcd_registry_url) as registry, Client(registry=registry, timeout=20) as client:
        leaving_node = await node_of(registry, leaving)
        pid1 = leaving.process()
        await node_of(registry, staying)

        def count(reply: HelloReply) -> None:
            nonlocal calls
            calls += 1

        def caller(i: int) -> Awaitable[None]:
            return say_hello_until(stop_load, client, i, failures, HelloReply, count)

        # what happened, in the order this test saw it
        seen: list[str] = []

        async def watch_leaving(watcher: collections.abc.AsyncIterator[object]) -> None:
            async for event in watcher:
                action, record = event.action, event.service  # type: ignore[attr-defined]
                if action is Action.DELETE and leaving_node in {n.id for n in record.nodes}:
                    # read after the delete: PID 1 still running then proves the order
                    alive = leaving.alive(pid1)
                    seen.append("deregistered while running" if alive else "deregistered after the exit")
                    return

        watcher = await registry.watch("greeter")
        workers = [asyncio.create_task(caller(i)) for i in range(16)]
        watching = asyncio.create_task(watch_leaving(watcher))
        try:

            async def both_busy() -> bool:
                counts = await asyncio.gather(
                    asyncio.to_thread(served, leaving), asyncio.to_thread(served, staying)
                )
                return min(counts) >= 50

            await async_wait_until(both_busy, timeout=60, interval=0.2, what="both containers to serve calls")

            stopped = await asyncio.create_subprocess_exec(
                *podman.argv("stop", leaving.id), env=podman.env, stdout=asyncio.subprocess.DEVNULL
            )
            assert await stopped.wait() == 0
            assert not leaving.alive(pid1)  # `podman stop` returns once PID 1 has exited
            seen.append("exited")
            await asyncio.wait_for(watching, timeout=30)
            after_exit = calls

            async def still_served() -> bool:  # the load goes on, on the remaining container
                return calls >= after_exit + 300

            await async_wait_until(still_served, timeout=60, what="calls after the container exited")
        finally:
            stop_load.set()
            await asyncio.gather(*workers)
            watching.cancel()
            await watcher.aclose()  # type: ignore[attr-defined]

    logs = leaving.logs()
    assert failures == [], failures[:10]
    # 0: SIGTERM drained and exited by itself; 137 would be podman's SIGKILL after 10 s
    assert leaving.exit_code() == 0, logs[-3000:]
    assert seen[0] == "deregistered while running", seen
    assert "signal received, draining" in logs
    assert "Traceback" not in logs


async def test_the_image_serves_and_drains_on_a_read_only_root_filesystem(
    greeter_image: str, containers: Containers, etcd_registry_url: str
) -> None:
    # Kubernetes runs it with readOnlyRootFilesystem: nothing may need to write under /app, the
    # home directory or anywhere else, not even /tmp (no tmpfs here, unlike podman's default)
    greeter = containers.run(
        greeter_image,
        env={"MICRO_REGISTRY": inside(etcd_registry_url)},
        options=("--read-only", "--read-only-tmpfs=false"),
    )
    await ready(greeter)
    assert greeter.exec("find", "/", "-xdev", "-writable", check=False).split() == []
    async with Client(registry=etcd_registry_url, timeout=20) as client:
        reply = await client.call("greeter", "Greeter.SayHello", HelloRequest(name="ro"), response=HelloReply)
    assert reply == HelloReply(message="Hello ro")
    greeter.podman("stop", greeter.id)
    logs = greeter.logs()
    assert greeter.exit_code() == 0, logs[-3000:]
    assert "Traceback" not in logs


def health_log(podman: Podman, container: Container) -> str:
    """What the image's HEALTHCHECK said, its last run."""
    runs = json.loads(podman("container", "inspect", "--format", "{{json .State.Health.Log}}", container.id))
    return str(runs[-1]["Output"]) if runs else ""


async def test_the_healthcheck_asks_where_the_admin_endpoint_listens_and_says_why_it_fails(
    podman: Podman, greeter_image: str, containers: Containers
) -> None:
    # the admin endpoint on the container's own address, not on the loopback nor a wildcard
    own = containers.run(
        greeter_image, env={"MICRO_REGISTRY": "memory://", "MICRO_ADMIN_ADDRESS": f"{CONTAINER_ADDRESS}:9100"}
    )

    async def healthy() -> bool:
        return await asyncio.to_thread(podman.succeeds, "healthcheck", "run", own.id)

    what = f"the healthcheck on {CONTAINER_ADDRESS}:9100"
    await async_wait_until(healthy, timeout=60, interval=0.5, what=what)

    # the admin endpoint off: there is nothing to ask, which is no reason to call it unhealthy
    off = containers.run(greeter_image, env={"MICRO_REGISTRY": "memory://", "MICRO_ADMIN_ADDRESS": "off"})
    assert podman.succeeds("healthcheck", "run", off.id), health_log(podman, off)
    assert "no admin port to check" in health_log(podman, off)

    # no service answering: unhealthy, and the health log says what was asked, in one line
    silent = containers.run(greeter_image, options=("--entrypoint", "sleep"), args=("300",))
    assert not podman.succeeds("healthcheck", "run", silent.id)
    said = health_log(podman, silent)
    assert said.startswith(f"unhealthy: http://127.0.0.1:{silent.ports['admin']}/health/live: "), said
    assert "Connection refused" in said and "Traceback" not in said, said


def test_the_build_context_leaves_secrets_and_local_state_out(
    podman: Podman, base_image: str, tmp_path: pathlib.Path
) -> None:
    """The repository's .dockerignore (the template's), applied by podman to a project with
    secrets, environments and caches lying around: only the sources and wheels get in."""
    context = tmp_path / "context"
    left_out = [
        ".env", ".env.production", "src/app/.env", "tls/server.pem", "tls/server.key",
        "certs/client.p12", ".netrc", ".pypirc", "pip.conf", ".git-credentials", "deploy/id_ed25519",
        ".git/config", ".venv/pyvenv.cfg", "tests/test_app.py", "src/app/__pycache__/service.cpython-311.pyc",
        ".pytest_cache/README.md", "dist/app-0.1.0.tar.gz",
    ]  # fmt: skip
    kept = ["pyproject.toml", "README.md", "src/app/service.py", "wheels/microweave-0.1.0-py3-none-any.whl"]
    for name in left_out + kept:
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text(f"{name}\n")
    shutil.copy(REPO / ".dockerignore", context / ".dockerignore")
    (context / "Containerfile").write_text(f"FROM {base_image}\nCOPY . /context\n")
    tag = "localhost/microweave-context-probe:test"
    podman("build", "--tag", tag, str(context), timeout=300)
    try:
        listing = podman("run", "--rm", "--network", "none", "--entrypoint", "find", tag, "/context")
    finally:
        podman("rmi", "--force", tag, check=False)
    copied = {line.removeprefix("/context/") for line in listing.split()}
    assert copied & set(left_out) == set(), sorted(copied)
    assert set(kept) <= copied, sorted(copied)
