"""The Kubernetes manifests (deploy/k8s) and the Helm chart (deploy/helm/greeter), and those a
new project gets from the same templates: validated offline, then applied to a real API server.

- kubeconform (scripts/peers/kubeconform) in strict mode against the Kubernetes 1.37 JSON
  schemas of PyPI's kubernetes-validate (unknown fields are errors), on the plain manifests, on
  the chart as `helm template` renders it, and on a scaffold-rendered set for another name; a
  misspelled field is refused (the check can fail).
- `helm lint --strict`; `helm template` with the default values renders the plain manifests'
  objects; the drain timing follows the values.
- kube-apiserver + kube-controller-manager (tests/engines/kube.py): server-side apply of
  deploy/k8s into a namespace that enforces the `restricted` Pod Security Standard, read back;
  the Deployment's ReplicaSet creates Pods (admitted, Pending: there is no kubelet). `helm
  install` into another namespace likewise.

Every binary is built by a scripts/peers script and cached outside the checkout; a missing one
fails with the script to run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from engines import run
from engines.kube import KubeCluster, peer_binary
from helpers import REPO, wait_until

from microweave.scaffold import project_values, render_tree, write_tree

K8S = REPO / "deploy" / "k8s"
CHART = REPO / "deploy" / "helm" / "greeter"
#: the schemas' Kubernetes version (kubernetes-validate ships 1.25 to 1.37)
SCHEMA_VERSION = "1.37.0"

Objects = dict[tuple[str, str], dict[str, Any]]

# one control plane for them all: under pytest-xdist these tests share a worker
pytestmark = pytest.mark.xdist_group("kube")


# -- tools ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kube_schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of kubernetes-validate's strict 1.37 schemas whose `"/api/_definitions.json`
    references point at the copy's own file (kubeconform resolves them as URLs, and the
    package's absolute path means nothing to it)."""
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or spec.origin is None:
        raise pytest.UsageError(
            "kubernetes-validate (its JSON schemas) is needed: .venv/bin/pip install -e '.[dev]'"
        )
    source = Path(spec.origin).parent / "kubernetes-json-schema" / f"v{SCHEMA_VERSION}-local-strict"
    assert (source / "_definitions.json").is_file(), f"no schemas for {SCHEMA_VERSION} in {source}"
    copy = tmp_path_factory.mktemp("kube-schemas")
    absolute = f'"file://{copy}/_definitions.json'
    for schema in source.glob("*.json"):
        text = schema.read_text(encoding="utf-8")
        (copy / schema.name).write_text(text.replace('"/api/_definitions.json', absolute), encoding="utf-8")
    return copy


@pytest.fixture(scope="session")
def kubeconform(kube_schemas: Path) -> Any:
    """kubeconform -strict against the schema copy: a function of paths -> CompletedProcess."""
    binary = peer_binary("kubeconform", "kubeconform is")

    def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
        return run(
            [
                str(binary),
                "-strict",
                "-summary",
                "-kubernetes-version", SCHEMA_VERSION,
                "-schema-location", f"{kube_schemas}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
                *map(str, paths),
            ]
        )  # fmt: skip

    return validate


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """helm with its cache, config and data in a directory of the session's own (not ~/.config):
    a function of args -> CompletedProcess."""
    binary = peer_binary("helm", "helm is")
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        return run([str(binary), *args], env=env)

    return helm


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded (else its output, for the report)."""
    assert done.returncode == 0, f"{done.args[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def parse(*texts: str) -> Objects:
    """The objects of YAML streams, by (kind, name)."""
    objects: Objects = {}
    for text in texts:
        for document in yaml.safe_load_all(text):
            if document:
                objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


def plain_manifests(directory: Path = K8S) -> Objects:
    return parse(*(path.read_text() for path in sorted(directory.glob("*.yaml"))))


@pytest.fixture
def scaffolded(tmp_path: Path) -> Path:
    """The deploy files a new project called billing-api gets (`microweave new`'s templates)."""
    write_tree(render_tree("deploy", project_values("billing-api")), tmp_path)
    return tmp_path


def container(objects: Objects, name: str = "greeter") -> dict[str, Any]:
    containers: list[dict[str, Any]] = objects[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
    return containers[0]


def missing(want: Any, got: Any, path: str = "") -> list[str]:
    """Where `got` (an object read back from the server) lacks or changes what `want` (our
    manifest) says; fields only `got` has (server defaults, status) do not count."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return [f"{path}: {got!r}"]
        return [m for key, value in want.items() for m in missing(value, got.get(key), f"{path}.{key}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r}"]
        pairs = enumerate(zip(want, got, strict=True))
        return [m for i, (w, g) in pairs for m in missing(w, g, f"{path}[{i}]")]
    return [] if want == got else [f"{path}: {got!r} (want {want!r})"]


# -- offline: kubeconform, helm lint and template --------------------------------------------


def test_the_manifests_are_valid_kubernetes_objects(kubeconform: Any) -> None:
    out = ok(kubeconform(K8S))
    assert "Valid: 4, Invalid: 0, Errors: 0, Skipped: 0" in out, out


def test_a_misspelled_field_is_refused(kubeconform: Any, tmp_path: Path) -> None:
    """Strict schemas: an unknown field (a typo the API server would drop or refuse) fails."""
    text = (K8S / "deployment.yaml").read_text()
    assert "readOnlyRootFilesystem" in text
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    done = kubeconform(broken)
    assert done.returncode == 1, done.stdout
    assert "additional properties 'readOnlyRootFileSystem' not allowed" in done.stdout


def test_the_chart_lints_clean(helm: Any) -> None:
    out = ok(helm("lint", "--strict", str(CHART)))
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_the_rendered_chart_is_valid(helm: Any, kubeconform: Any, tmp_path: Path) -> None:
    rendered = tmp_path / "greeter.yaml"
    rendered.write_text(ok(helm("template", "greeter", str(CHART))))
    out = ok(kubeconform(rendered))
    assert "Valid: 4, Invalid: 0, Errors: 0, Skipped: 0" in out, out


def config_checksum(objects: Objects, name: str = "greeter") -> str:
    """Take the chart's checksum/config annotation off its Deployment (the one thing the plain
    manifests lack: a settings change rolls the pods) and return it."""
    annotations = objects[("Deployment", name)]["spec"]["template"]["metadata"]["annotations"]
    checksum: str = annotations.pop("checksum/config")
    return checksum


def test_the_chart_renders_the_plain_manifests(helm: Any) -> None:
    """One content, two forms: with the default values (release name = chart name) the chart's
    objects are the plain manifests' objects, field for field."""
    chart = parse(ok(helm("template", "greeter", str(CHART))))
    config_checksum(chart)
    plain = plain_manifests()
    assert sorted(chart) == sorted(plain)
    for key, obj in plain.items():
        assert chart[key] == obj, f"{key}: the chart renders\n{chart[key]}\nthe manifest says\n{obj}"


def test_a_settings_change_rolls_the_pods(helm: Any) -> None:
    """The pods read the ConfigMap at start only: a new registry changes the pod template."""
    before = parse(ok(helm("template", "greeter", str(CHART))))
    after = parse(ok(helm("template", "greeter", str(CHART), "--set", "registry=nats://nats:4222")))
    assert config_checksum(before) != config_checksum(after)
    assert before[("Deployment", "greeter")] == after[("Deployment", "greeter")]


def test_evictions_take_one_pod_at_a_time(helm: Any) -> None:
    """A PodDisruptionBudget (plain and chart) selects the Deployment's pods and lets one go at
    a time: maxUnavailable, so a one-replica Deployment never blocks a node drain."""
    for objects, name in (
        (plain_manifests(), "greeter"),
        (parse(ok(helm("template", "pay", str(CHART)))), "pay-greeter"),
    ):
        budget = objects[("PodDisruptionBudget", name)]["spec"]
        deployment = objects[("Deployment", name)]["spec"]
        assert budget == {
            "maxUnavailable": 1,
            "selector": deployment["selector"],
            # readiness follows the registry: if it fails on every pod, node drains still proceed
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        }
        labels = deployment["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()


def test_the_drain_timing_adds_up() -> None:
    """SIGKILL comes terminationGracePeriodSeconds after the pod starts terminating: the
    preStop sleep, then SIGTERM and up to MICRO_GRACE of drain, then a margin."""
    objects = plain_manifests()
    pod = objects[("Deployment", "greeter")]["spec"]["template"]["spec"]
    pre_stop = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    grace = objects[("ConfigMap", "greeter-config")]["data"]["MICRO_GRACE"]
    assert pre_stop == ["sleep", "5"] and grace == "10"
    assert pod["terminationGracePeriodSeconds"] == 5 + 10 + 5


def test_the_chart_computes_the_drain_timing_from_its_values(helm: Any) -> None:
    args = ("template", "greeter", str(CHART))
    objects = parse(ok(helm(*args, "--set", "grace=30,preStopSeconds=8,registry=nats://nats:4222")))
    assert (
        objects[("Deployment", "greeter")]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 43
    )
    assert container(objects)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "8"]
    settings = objects[("ConfigMap", "greeter-config")]["data"]
    assert settings["MICRO_GRACE"] == "30" and settings["MICRO_REGISTRY"] == "nats://nats:4222"
    # a fractional grace rounds the period up; no preStop: no lifecycle hook at all
    objects = parse(ok(helm(*args, "--set", "grace=2.5,preStopSeconds=0")))
    assert (
        objects[("Deployment", "greeter")]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 8
    )
    assert "lifecycle" not in container(objects)


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        # addf read "abc" as 0: terminationGracePeriodSeconds 10, and a pod that cannot start
        ("grace=abc", "at '/grace': 'oneOf' failed"),
        ("grace=-1", "at '/grace': 'oneOf' failed"),
        ("preStopSeconds=-5", "minimum: got -5, want 0"),
        ("image=", "at '/image': minLength: got 0, want 1"),
        ("replicas=-1", "at '/replicas': minimum: got -1, want 0"),
        ("ports.admin=abc", "at '/ports/admin': got string, want integer"),
        ("ports.grpc=70000", "at '/ports/grpc': maximum: got 70,000, want 65,535"),
        ("registry=mdns://", "'mdns://' does not match pattern"),
        ("registry=etcd:2379", "'etcd:2379' does not match pattern"),
        ("imagePullPolicy=Sometimes", "at '/imagePullPolicy'"),
        ("graces=30", "additional properties 'graces' not allowed"),
    ],
)
def test_the_chart_refuses_bad_values(helm: Any, setting: str, complaint: str) -> None:
    """values.schema.json: a value the pods cannot run with fails `helm template` (and so
    install and upgrade) with where and why, instead of rendering a broken Deployment."""
    done = helm("template", "greeter", str(CHART), "--set", setting)
    assert done.returncode == 1, f"{setting} rendered:\n{done.stdout[:2000]}"
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    assert complaint in done.stderr, done.stderr


def test_the_chart_takes_good_values(helm: Any) -> None:
    """The schema's control: what an operator may set renders (a fractional grace arrives from
    --set as a string of digits, a broker as an extra setting)."""
    settings = "grace=2.5,preStopSeconds=0,replicas=0,registry=consul://consul:8500,imagePullPolicy=Always"
    extra = "extraSettings.MICRO_BROKER=nats://nats:4222"
    objects = parse(ok(helm("template", "greeter", str(CHART), "--set", settings, "--set", extra)))
    data = objects[("ConfigMap", "greeter-config")]["data"]
    assert data["MICRO_GRACE"] == "2.5" and data["MICRO_BROKER"] == "nats://nats:4222"
    assert objects[("Deployment", "greeter")]["spec"]["replicas"] == 0


def test_the_chart_moves_the_admin_port_everywhere(helm: Any) -> None:
    objects = parse(ok(helm("template", "greeter", str(CHART), "--set", "ports.admin=9200")))
    assert objects[("ConfigMap", "greeter-config")]["data"]["MICRO_ADMIN_ADDRESS"] == "0.0.0.0:9200"
    assert {"name": "admin", "containerPort": 9200, "protocol": "TCP"} in container(objects)["ports"]
    assert [p["port"] for p in objects[("Service", "greeter")]["spec"]["ports"]] == [8080, 9200]
    annotations = objects[("Deployment", "greeter")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9200"


def test_a_new_projects_manifests_and_chart_are_valid(
    scaffolded: Path, helm: Any, kubeconform: Any, tmp_path: Path
) -> None:
    k8s, chart = scaffolded / "deploy" / "k8s", scaffolded / "deploy" / "helm" / "billing-api"
    assert "Valid: 4, Invalid: 0" in ok(kubeconform(k8s))
    assert "0 chart(s) failed" in ok(helm("lint", "--strict", str(chart)))
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(ok(helm("template", "billing-api", str(chart))))
    assert "Valid: 4, Invalid: 0" in ok(kubeconform(rendered))
    objects, chart_objects = plain_manifests(k8s), parse(rendered.read_text())
    config_checksum(chart_objects, "billing-api")
    assert chart_objects == objects
    assert container(objects, "billing-api")["image"] == "localhost/billing-api:0.1.0"


# -- a real API server ---------------------------------------------------------------------

#: the Pod Security Standard our pods meet: the API server refuses a pod that does not
RESTRICTED = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/enforce-version=latest",
)


@pytest.fixture
def namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of this test's own that enforces the restricted Pod Security Standard."""
    name = request.node.name.replace("_", "-")[:50].strip("-").lower()
    yield kube_cluster.new_namespace(name, RESTRICTED)
    # no namespace controller runs here to empty a deleted namespace: leave it


def pods_of(cluster: KubeCluster, namespace: str, instance: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json(
        "pods", "--namespace", namespace, "-l", f"app.kubernetes.io/instance={instance}"
    )["items"]
    return items


def wait_for_pods(cluster: KubeCluster, namespace: str, instance: str, count: int) -> list[dict[str, Any]]:
    """The pods the controller-manager made for the Deployment (polled; the apiserver refuses
    any that break the namespace's Pod Security Standard, and then none come)."""

    def enough() -> list[dict[str, Any]]:
        pods = pods_of(cluster, namespace, instance)
        return pods if len(pods) >= count else []

    try:
        return wait_until(enough, timeout=90, interval=0.5, what=f"{count} pods of {instance} in {namespace}")
    except AssertionError:
        replicasets = cluster.kubectl(
            "get", "replicasets,events", "--namespace", namespace, "-o", "yaml"
        ).stdout
        raise AssertionError(f"no pods for {instance}:\n{replicasets[-4000:]}\n{cluster.logs()}") from None


def check_replicaset_and_pods(cluster: KubeCluster, namespace: str, name: str) -> None:
    pods = wait_for_pods(cluster, namespace, name, 2)
    replicasets = cluster.get_json("replicasets", "--namespace", namespace)["items"]
    assert [rs["metadata"]["ownerReferences"][0]["name"] for rs in replicasets] == [name]
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["name"] == replicasets[0]["metadata"]["name"]
        # admitted by the restricted standard, not scheduled: no scheduler, no kubelet
        assert pod["status"]["phase"] == "Pending"
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


@pytest.mark.timeout(600)
def test_server_side_apply_creates_a_running_deployment(kube_cluster: KubeCluster, namespace: str) -> None:
    """The manifests as an operator applies them: `kubectl apply --server-side -f deploy/k8s`
    (strict field validation on the server), read back with every field we set."""
    out = kube_cluster.kubectl("apply", "--server-side", "--namespace", namespace, "-f", str(K8S)).stdout
    assert "deployment.apps/greeter serverside-applied" in out, out

    # every field we set is there as we wrote it (the server adds defaults we left out)
    for (kind, name), want in plain_manifests().items():
        got = kube_cluster.get_json(kind.lower(), name, "--namespace", namespace)
        assert not (lost := missing(want, got)), f"{kind} {name} lost or changed: {lost}"

    deployment = kube_cluster.get_json("deployment", "greeter", "--namespace", namespace)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 20
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    got = pod["containers"][0]
    assert got["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "admin", "scheme": "HTTP"}
    assert got["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert got["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert got["securityContext"]["readOnlyRootFilesystem"] is True
    assert got["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert got["env"] == [
        {
            "name": "MICRO_ADVERTISE_ADDRESS",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
        }
    ]
    assert got["envFrom"] == [{"configMapRef": {"name": "greeter-config"}}]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    settings = kube_cluster.get_json("configmap", "greeter-config", "--namespace", namespace)["data"]
    assert settings == plain_manifests()[("ConfigMap", "greeter-config")]["data"]
    service = kube_cluster.get_json("service", "greeter", "--namespace", namespace)["spec"]
    assert service["clusterIP"].startswith("10.96.0.")
    assert [(p["name"], p["port"]) for p in service["ports"]] == [("grpc", 8080), ("admin", 9100)]

    check_replicaset_and_pods(kube_cluster, namespace, "greeter")
    # the disruption budget covers exactly the Deployment's pods
    budget = kube_cluster.get_json("poddisruptionbudget", "greeter", "--namespace", namespace)["spec"]
    assert budget["maxUnavailable"] == 1 and budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    selector = ",".join(f"{k}={v}" for k, v in budget["selector"]["matchLabels"].items())
    covered = kube_cluster.get_json("pods", "--namespace", namespace, "-l", selector)["items"]
    assert sorted(p["metadata"]["name"] for p in covered) == sorted(
        p["metadata"]["name"] for p in pods_of(kube_cluster, namespace, "greeter")
    )
    assert len(covered) == 2

    # applying again changes nothing the server would report as a conflict or an error
    again = kube_cluster.kubectl("apply", "--server-side", "--namespace", namespace, "-f", str(K8S)).stdout
    assert again.count("serverside-applied") == 4, again


@pytest.mark.timeout(600)
def test_the_server_refuses_a_misspelled_field(
    kube_cluster: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    """The same typo kubeconform catches offline, caught by the server's strict validation."""
    broken = tmp_path / "deployment.yaml"
    broken.write_text(
        (K8S / "deployment.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")
    )
    done = kube_cluster.kubectl(
        "apply", "--server-side", "--namespace", namespace, "-f", str(broken), check=False
    )
    assert done.returncode != 0
    # server-side apply refuses a field its schema does not declare
    assert "securityContext.readOnlyRootFileSystem: field not declared in schema" in done.stderr
    assert "greeter" not in kube_cluster.kubectl("get", "deployments", "--namespace", namespace).stdout


@pytest.mark.timeout(600)
def test_helm_install_creates_a_running_deployment(
    kube_cluster: KubeCluster, namespace: str, helm: Any
) -> None:
    """`helm install` into another namespace, with a Consul registry: the same objects, the
    chosen setting, Pods from the controller-manager; `helm upgrade` of a setting rolls them."""
    cluster = ("--kubeconfig", str(kube_cluster.kubeconfig), "--namespace", namespace)
    out = ok(helm("install", "greeter", str(CHART), *cluster, "--set", "registry=consul://consul:8500"))
    assert "STATUS: deployed" in out, out
    settings = kube_cluster.get_json("configmap", "greeter-config", "--namespace", namespace)["data"]
    assert settings["MICRO_REGISTRY"] == "consul://consul:8500"
    deployment = kube_cluster.get_json("deployment", "greeter", "--namespace", namespace)
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 20
    check_replicaset_and_pods(kube_cluster, namespace, "greeter")

    upgrade = ("--reuse-values", "--set", "registry=nats://nats:4222,grace=30")
    assert "STATUS: deployed" in ok(helm("upgrade", "greeter", str(CHART), *cluster, *upgrade))
    settings = kube_cluster.get_json("configmap", "greeter-config", "--namespace", namespace)["data"]
    assert settings["MICRO_REGISTRY"] == "nats://nats:4222" and settings["MICRO_GRACE"] == "30"
    deployment = kube_cluster.get_json("deployment", "greeter", "--namespace", namespace)
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5 + 30 + 5
    # a new pod template: the Deployment starts a second ReplicaSet (one surge pod at a time)
    wait_until(
        lambda: len(kube_cluster.get_json("replicasets", "--namespace", namespace)["items"]) == 2,
        timeout=90,
        interval=0.5,
        what="the upgrade's ReplicaSet",
    )
    status = json.loads(ok(helm("status", "greeter", *cluster, "-o", "json")))
    assert status["info"]["status"] == "deployed" and status["version"] == 2


@pytest.mark.timeout(600)
def test_the_namespace_refuses_pods_that_break_the_restricted_standard(
    kube_cluster: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    """The Pod Security check the pods above pass is real: without the seccomp profile the
    apiserver refuses the ReplicaSet's pods (the control for check_replicaset_and_pods)."""
    text = (K8S / "deployment.yaml").read_text()
    loose = tmp_path / "deployment.yaml"
    loose.write_text(text.replace("        seccompProfile:\n          type: RuntimeDefault\n", ""))
    assert loose.read_text() != text
    done = kube_cluster.kubectl("apply", "--server-side", "--namespace", namespace, "-f", str(loose))
    assert 'would violate PodSecurity "restricted:latest": seccompProfile' in done.stderr

    def refused() -> list[str]:
        events = kube_cluster.get_json("events", "--namespace", namespace)["items"]
        return [e["message"] for e in events if e["reason"] == "FailedCreate"]

    messages = wait_until(refused, timeout=90, interval=0.5, what="the ReplicaSet's FailedCreate event")
    assert 'violates PodSecurity "restricted:latest": seccompProfile' in messages[0]
    assert pods_of(kube_cluster, namespace, "greeter") == []
