"""Prometheus and services registered in Consul (docs/observability.md, "Prometheus's own Consul
discovery"): `microweave prometheus-sd --registry consul://...` gives a real Prometheus the admin
endpoints, and the facts the docs build on hold: Consul holds a node's gRPC address as the
instance's address, no service Meta, and the node metadata (admin_address among it) only as
hex(zlib(JSON)) tags, which Prometheus's relabeling cannot read."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from cli_helpers import CliProcess, cli, registry_env, wait_for_service
from engines.prometheus import PrometheusServer
from metrics_kit import BACKEND


def test_prometheus_sd_reads_consul_and_consul_holds_the_admin_address_only_in_compressed_tags(
    consul_agents: Any, prometheus_server: PrometheusServer, tmp_path: Path
) -> None:
    agent = consul_agents()
    env = registry_env(tmp_path / "unused")
    env["MICRO_REGISTRY"] = agent.url
    with CliProcess("run", BACKEND, env=env, log=tmp_path / "backend.log") as backend:
        (record,) = wait_for_service("backend", env=env, process=backend)
        (node,) = record["nodes"]
        admin = node["metadata"]["admin_address"]

        done = cli("prometheus-sd", "--output", str(prometheus_server.targets_file), env=env)
        assert done.returncode == 0, done.stderr
        (target,) = prometheus_server.wait_targets({admin})
        assert target["labels"]["microweave_service"] == "backend"
        assert target["labels"]["microweave_node"] == node["id"]

        # what consul_sd_configs would see of the node
        (instance,) = agent.api("GET", "/v1/catalog/service/backend")
        assert instance["ServiceID"] == node["id"]
        assert (
            f"{instance['ServiceAddress']}:{instance['ServicePort']}" == node["address"]
        )  # gRPC, not /metrics
        assert not instance["ServiceMeta"]
        tags = instance["ServiceTags"]
        assert not any("admin_address" in tag for tag in tags)
        metadata: dict[str, str] = {}
        for tag in tags:
            if tag.startswith("t-"):
                metadata.update(json.loads(zlib.decompress(bytes.fromhex(tag[2:]))))
        assert metadata["admin_address"] == admin
