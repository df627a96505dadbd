"""`microweave prometheus-sd`'s file: Prometheus' target-group shape, written atomically."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from microweave.cli.admin_nodes import AdminNode
from microweave.cli.output import CliError
from microweave.cli.prometheus_sd import render_targets, target_groups, write_atomically

NODES = [
    AdminNode("greeter", "1.0.0", "greeter-1", "127.0.0.1:9101"),
    AdminNode("greeter", "1.0.0", "greeter-2", None, "no admin_address in its metadata"),
    AdminNode("store", "", "store-1", "[::1]:9102"),
]


def test_one_group_per_node_with_an_admin_address_and_labels_that_do_not_clash() -> None:
    groups = target_groups(NODES)
    assert groups == [
        {
            "targets": ["127.0.0.1:9101"],
            "labels": {
                "microweave_service": "greeter",
                "microweave_version": "1.0.0",
                "microweave_node": "greeter-1",
            },
        },
        {
            "targets": ["[::1]:9102"],
            "labels": {"microweave_service": "store", "microweave_version": "", "microweave_node": "store-1"},
        },
    ]
    # the metrics' own labels must survive a scrape unrenamed (Prometheus would make a scraped
    # `service` that a target label also sets `exported_service`)
    for group in groups:
        assert not {"service", "endpoint", "status", "code", "transport", "instance", "job"} & set(
            group["labels"]
        )
    assert json.loads(render_targets(NODES)) == groups
    assert json.loads(render_targets([])) == []


def test_the_file_is_replaced_whole_readable_by_others_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "targets.json"
    target.write_text("old")
    inode = target.stat().st_ino
    old_umask = os.umask(0o022)
    try:
        write_atomically(target, render_targets(NODES))
    finally:
        os.umask(old_umask)
    assert json.loads(target.read_text()) == target_groups(NODES)
    assert target.stat().st_ino != inode  # a rename, not a rewrite in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # Prometheus may run as another user
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]


def test_a_directory_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"cannot write .*missing/targets.json: No such file") as caught:
        write_atomically(tmp_path / "missing" / "targets.json", "[]")
    assert "existing directory" in caught.value.hint
    target = tmp_path / "a-directory"
    target.mkdir()
    with pytest.raises(CliError, match="cannot write"):
        write_atomically(target, "[]")  # a rename over a directory fails: reported, temp removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory"]
