"""etcd (Debian's etcd-server, 3.4) for the tests: plain, with auth, with TLS.

`etcd_server` is one server for the session; the conformance factory gives each test its own
key prefix on it, so tests never see each other's keys. `etcd_own`, `etcd_auth` and `etcd_tls`
are servers of one test each, for tests that stop or restart etcd or change its settings.
Election timeout 500 ms / heartbeat 100 ms make etcd's smallest lease 1 s (with the defaults it
is 2 s), so TTL tests stay short. TLS keys are generated at test time, never committed.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import shutil
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engines import Engine, config_backend, find_binary, free_port, registry_backend, run

__all__ = ["EtcdServer", "make_certificates"]

ROOT_PASSWORD = "root-secret-pw"


class EtcdServer:
    """One etcd on fixed free ports: `engine.stop()` / `engine.start()` is an outage."""

    def __init__(self, base: Path, *, tls: Path | None = None) -> None:
        self.port, peer, self.metrics_port = free_port(), free_port(), free_port()
        self.tls = tls
        scheme = "https" if tls else "http"
        self.client_url = f"{scheme}://127.0.0.1:{self.port}"
        self.address = f"127.0.0.1:{self.port}"
        self.data = data = base / "data"
        argv = [
            find_binary("etcd", debian="etcd-server"),
            "--name", "t",
            "--data-dir", str(data),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"t=http://127.0.0.1:{peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}",
            "--election-timeout", "500",
            "--heartbeat-interval", "100",
        ]  # fmt: skip
        if tls:
            argv += [
                "--cert-file", str(tls / "server.pem"),
                "--key-file", str(tls / "server.key"),
                "--client-cert-auth",
                "--trusted-ca-file", str(tls / "ca.pem"),
            ]  # fmt: skip
        self.engine = Engine("etcd", argv, ready=self._ready, log_dir=base)

    def _ready(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/health"
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(json.loads(reply.read()).get("health") == "true")

    def start(self) -> EtcdServer:
        self.engine.start()
        return self

    def ctl(self, *args: str, user: str | None = None, check: bool = True, stdin: str | None = None) -> str:
        """etcdctl (v3 API) against this server; its stdout (`stdin`: e.g. a value to put)."""
        argv = [find_binary("etcdctl", debian="etcd-client"), f"--endpoints={self.client_url}"]
        if user:
            argv.append(f"--user={user}")
        if self.tls:
            argv += [f"--cacert={self.tls / 'ca.pem'}", f"--cert={self.tls / 'client.pem'}"]
            argv.append(f"--key={self.tls / 'client.key'}")
        done = run([*argv, *args], env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}, input=stdin)
        if check and done.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def metric(self, name: str, **labels: str) -> float:
        """The sum of one Prometheus metric over the series matching `labels`."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def url(self, prefix: str = "", **query: str) -> str:
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"etcd://{self.address}{prefix}" + (f"?{tail}" if tail else "")

    def stop(self) -> None:
        self.engine.stop()

    def wipe(self) -> None:
        """Forget every key, lease and revision (a stopped etcd comes back empty)."""
        assert self.engine.process is None, "stop etcd first"
        shutil.rmtree(self.data, ignore_errors=True)


def make_certificates(directory: Path) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(stem: str, key: Any, cert: x509.Certificate) -> None:
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_bytes = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path = directory / f"{stem}.key"
        path.write_bytes(key_bytes)
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("microweave test CA"))
        .issuer_name(name("microweave test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for stem, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"microweave test {stem}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write(stem, key, cert)
    return directory


@contextlib.contextmanager
def _server(base: Path, *, tls: Path | None = None) -> Iterator[EtcdServer]:
    server = EtcdServer(base, tls=tls).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the session; give each test its own prefix (see `etcd_registry_url`)."""
    with _server(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def etcd_registry_url(etcd_server: EtcdServer) -> str:
    """A registry URL on the session's etcd, with a prefix of this test's own."""
    return etcd_server.url(f"/test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def etcd_own(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own, to stop, kill and start again."""
    base = tmp_path / "etcd-own"
    base.mkdir()
    with _server(base) as server:
        yield server


@pytest.fixture
def etcd_auth(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd with authentication on: user root, password ROOT_PASSWORD."""
    base = tmp_path / "etcd-auth"
    base.mkdir()
    with _server(base) as server:
        server.ctl("user", "add", f"root:{ROOT_PASSWORD}")
        server.ctl("auth", "enable")
        yield server


@pytest.fixture
def etcd_tls(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd serving TLS only and requiring client certificates, from a fresh test CA;
    `server.tls` is the directory holding ca.pem, client.pem and client.key."""
    base = tmp_path / "etcd-tls"
    certs = base / "certs"
    certs.mkdir(parents=True)
    with _server(base, tls=make_certificates(certs)) as server:
        yield server


@registry_backend("etcd")
@contextlib.asynccontextmanager
async def etcd_backend(request: pytest.FixtureRequest, **options: Any) -> AsyncIterator[Any]:
    from microweave.registry import from_url

    url = request.getfixturevalue("etcd_registry_url")
    async with from_url(url, **options) as registry:
        yield registry


@config_backend("etcd")
@contextlib.asynccontextmanager
async def etcd_config_backend(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """An etcd config source on the session's etcd, under a prefix of this test's own."""
    from microweave._backends import load_config_source

    server: EtcdServer = request.getfixturevalue("etcd_server")
    source = load_config_source(server.url(f"/config-{uuid.uuid4().hex[:12]}"))
    try:
        yield source
    finally:
        await source.aclose()
