"""A Kubernetes control plane for the manifest tests: kube-apiserver and kube-controller-manager
(built from k8s.io/kubernetes by scripts/peers/kube) on a dedicated Debian etcd, plus kubectl.

`kube_cluster` (session) starts, on free loopback ports:
- an etcd of its own (the apiserver's storage; never the etcd the registry tests use),
- kube-apiserver: a token file (one admin token, group system:masters), RBAC, service-account
  keys made here, a self-signed serving certificate in its --cert-dir, and
  `--endpoint-reconciler-type=none` (the default reconciler refuses a 127.0.0.1 advertise address),
- kube-controller-manager with the deployment and replicaset controllers, no leader election:
  a Deployment gets its ReplicaSet and Pods. There is no kubelet and no scheduler, so the pods
  stay Pending; a Pod's admission (ServiceAccount, PodSecurity) still runs in the apiserver.
Each is stopped by PID at the end: the controller-manager, then the apiserver, then its etcd.
`cluster.kubeconfig` is a kubeconfig file for kubectl and helm.

The binaries are not built here (a cold build takes ~25 minutes): a missing one fails with the
script to run.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

from engines import Engine, free_port, run
from engines.etcd import EtcdServer

__all__ = ["KubeCluster", "peer_binary"]

KUBE_VERSION = "1.37.2"
#: the controllers the tests need: a Deployment makes a ReplicaSet, which makes Pods
CONTROLLERS = "deployment,replicaset"
#: ClusterIPs for Services (the apiserver allocates one per Service)
SERVICE_RANGE = "10.96.0.0/24"


def peer_binary(script: str, what: str | None = None) -> Path:
    """The path scripts/peers/<script> prints in its `--path` mode (a binary, or a directory of
    them); a missing build fails the test with the script to run (never a skip). `what`: the
    binaries' names for the message (default: the script's)."""
    done = subprocess.run(
        [str(REPO / "scripts" / "peers" / script), "--path"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise pytest.UsageError(
            f"{what or script} not built: run scripts/peers/{script} (./scripts/test does it for you)\n"
            f"{done.stderr.strip()[-2000:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def _write_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """An RSA key pair the apiserver signs and checks service-account tokens with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = directory / "sa.key", directory / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _https_ok(url: str, token: str | None = None) -> bool:
    """True if GET `url` answers 200 (self-signed certificate: not verified, loopback only)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=2, context=context) as reply:
        return bool(reply.status == 200)


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager; `kubectl(...)` runs against it."""

    def __init__(self, base: Path) -> None:
        binaries = peer_binary("kube", "kube-apiserver, kube-controller-manager and kubectl are")
        self.kubectl_path = binaries / "kubectl"
        self.base = base
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        (base / "etcd").mkdir()
        self.etcd = EtcdServer(base / "etcd")

        tokens = base / "tokens.csv"
        tokens.write_text(f'{self.token},admin,admin,"system:masters"\n')
        tokens.chmod(0o600)
        sa_key, sa_pub = _write_service_account_keys(base)
        self.apiserver = Engine(
            "kube-apiserver",
            [
                str(binaries / "kube-apiserver"),
                f"--etcd-servers={self.etcd.client_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={base / 'apiserver-certs'}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
            ready=lambda: _https_ok(f"{self.server}/readyz", self.token),
            log_dir=base,
            ready_timeout=120.0,
        )
        self.kubeconfig = base / "kubeconfig"
        self.kubeconfig.write_text(self._kubeconfig())
        self.kubeconfig.chmod(0o600)
        manager_port = free_port()
        self.controller_manager = Engine(
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={CONTROLLERS}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={manager_port}",
                f"--cert-dir={base / 'controller-manager-certs'}",
                "--profiling=false",
            ],
            ready=lambda: _https_ok(f"https://127.0.0.1:{manager_port}/healthz"),
            log_dir=base,
            ready_timeout=120.0,
        )

    def _kubeconfig(self) -> str:
        """JSON is YAML: a kubeconfig with one cluster, one user (the admin token), one context."""
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                # the serving certificate is self-signed by the apiserver; loopback only
                "clusters": [
                    {"name": "test", "cluster": {"server": self.server, "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "admin", "user": {"token": self.token}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                "current-context": "test",
            },
            indent=2,
        )

    def start(self) -> KubeCluster:
        self.etcd.start()
        self.apiserver.start()
        self.controller_manager.start()
        return self

    def stop(self) -> None:
        """The controller-manager, then the apiserver, then its etcd (not the other way round:
        an apiserver without its etcd retries and logs for a long time)."""
        self.controller_manager.stop()
        self.apiserver.stop()
        self.etcd.stop()

    def kubectl(
        self, *args: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """kubectl against this cluster; fails the test with its stderr unless `check=False`."""
        done = run([str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args], input=stdin)
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done

    def get_json(self, *args: str) -> dict[str, Any]:
        """`kubectl get ... -o json`, parsed."""
        return dict(json.loads(self.kubectl("get", *args, "-o", "json").stdout))

    def new_namespace(self, name: str, labels: Sequence[str] = ()) -> str:
        """A namespace with its `default` ServiceAccount (the serviceaccount controller does not
        run here, and Pod admission needs it)."""
        self.kubectl("create", "namespace", name)
        if labels:
            self.kubectl("label", "namespace", name, *labels)
        self.kubectl("create", "serviceaccount", "default", "--namespace", name)
        return name

    def logs(self) -> str:
        """The tails of the control plane's logs, for a failing assertion's message."""
        return "\n".join(
            f"--- {engine.name}\n{engine.output()[-3000:]}"
            for engine in (self.apiserver, self.controller_manager)
        )


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """One Kubernetes control plane for the session; each test works in namespaces of its own."""
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
