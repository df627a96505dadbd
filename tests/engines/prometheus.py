"""Prometheus (Debian's `prometheus`, 2.42) scraping targets from a file_sd_configs file.

The test writes the targets file (with `microweave prometheus-sd`); Prometheus re-reads it
within a second (refresh_interval 1s) and scrapes every target each second. Its first scrape
of a new target can still come ~5-12 s later (its discovery updates are batched every 5 s and
each target gets a scrape offset): wait with `wait_targets`, never a fixed sleep.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engines import Engine, find_binary, free_port, run

__all__ = ["PrometheusServer"]

_GLOBAL = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
"""
#: the default job: the targets `microweave prometheus-sd --output` writes
_FILE_SD = """\
  - job_name: microweave
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"""


class PrometheusServer:
    """One Prometheus on a free loopback port, its TSDB in a temporary directory, its scrape
    targets in `targets_file` (not written here: the test writes it), or from `scrape_configs`
    (YAML list items, indented two spaces) when given."""

    def __init__(self, base: Path, *, scrape_configs: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = base / "targets" / "microweave.json"
        self.targets_file.parent.mkdir(parents=True)
        self.config_file = base / "prometheus.yml"
        jobs = scrape_configs or _FILE_SD.format(targets=json.dumps(str(self.targets_file)))
        self.config_file.write_text(_GLOBAL + jobs)
        argv = [
            find_binary("prometheus", debian="prometheus"),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
        ]
        self.engine = Engine("prometheus", argv, ready=self._ready, log_dir=base, ready_timeout=30)

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
            return bool(reply.status == 200)

    def check_config(self) -> str:
        """`promtool check config` on the configuration this server runs; its output."""
        done = run([find_binary("promtool", debian="prometheus"), "check", "config", str(self.config_file)])
        assert done.returncode == 0, f"promtool rejects {self.config_file}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its `data`, after checking `status` is success."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (an error from Prometheus fails the test)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def wait_targets(self, addresses: set[str], *, timeout: float = 40.0) -> list[dict[str, Any]]:
        """Wait until exactly `addresses` are the active targets, all up (scraped once at least)."""
        limit = time.monotonic() + timeout
        while True:
            targets = self.targets()
            found = {t["labels"]["instance"]: t for t in targets}  # the address after relabeling
            if set(found) == addresses and all(t["health"] == "up" for t in targets):
                return targets
            if time.monotonic() > limit:
                shown = [(a, t["health"], t.get("lastError")) for a, t in found.items()]
                raise AssertionError(f"targets {sorted(addresses)} not all up after {timeout} s: {shown}")
            time.sleep(0.25)

    def start(self) -> PrometheusServer:
        self.engine.start()
        return self

    def stop(self) -> None:
        self.engine.stop()


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus of this test's own, scraping what `server.targets_file` lists every second."""
    base = tmp_path / "prometheus"
    base.mkdir()
    server = PrometheusServer(base)
    server.check_config()  # the configuration the tests rely on is one Prometheus accepts
    server.start()
    try:
        yield server
    finally:
        server.stop()
