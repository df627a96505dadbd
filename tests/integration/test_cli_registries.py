"""The `microweave` command with the server-backed registries (etcd, Consul, NATS, mDNS): the
schemes it offers in --help, the hint each configuration mistake gets, and what a user sees
when the registry is unreachable, run as a user runs it (a subprocess) against a real etcd."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from cli_helpers import assert_clean, cli, registry_env
from engines import free_port
from engines.etcd import EtcdServer

from microweave._backends import REGISTRIES

COMMANDS = (("services",), ("describe", "greeter"), ("call", "greeter", "Greeter.SayHello", "{}"))
SERVED = [s for s, (_, _, extra) in REGISTRIES.items() if extra is not None]  # with docs pages


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return registry_env(tmp_path / "registry")


def _flat(text: str) -> str:
    """--help's text without rich's box drawing and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize(
    "where", [(), ("services",), ("call",), ("run",)], ids=lambda w: w[0] if w else "global"
)
def test_help_lists_every_registry_scheme_in_the_table(where: tuple[str, ...], env: dict[str, str]) -> None:
    shown = cli(*where, "--help", env=env)
    assert shown.returncode == 0, shown.stderr
    text = _flat(shown.stdout)
    for scheme in REGISTRIES:
        assert f"{scheme}://" in text, (scheme, text)
    assert "docs/registry/<scheme>.md" in text


@pytest.mark.parametrize(
    ("url", "said", "hint"),
    [
        ("etcd://127.0.0.1:2379?tll=3", "did you mean ttl?", "docs/registry/etcd.md"),
        ("consul://a:b:c", "host:port", "docs/registry/consul.md"),
        ("nats://127.0.0.1:4222?colour=red", "colour", "docs/registry/nats.md"),
        ("etdc://127.0.0.1:2379", "unknown registry scheme 'etdc'", "check the scheme's spelling"),
    ],
)
def test_a_registry_url_mistake_gets_a_hint_that_fits_it(
    url: str, said: str, hint: str, env: dict[str, str]
) -> None:
    for args in COMMANDS:
        done = cli("--registry", url, *args, env=env)
        assert done.returncode == 2, done
        assert_clean(done.stdout + done.stderr)
        error, hinted = done.stderr.strip().splitlines()
        assert error.startswith("error:") and said in error, done.stderr
        assert hinted.startswith("hint:") and hint in hinted, done.stderr
        assert "local://" not in hinted, done.stderr  # not an example for another backend
    if url.startswith("etdc"):
        for scheme in SERVED:  # every server-backed scheme named, from the table
            assert f"{scheme}://" in hinted


def test_the_environment_s_registry_gets_the_same_hint(env: dict[str, str]) -> None:
    """MICRO_REGISTRY=etcd with a bad address: the hint points at etcd's page too."""
    env = {**env, "MICRO_REGISTRY": "etcd", "MICRO_REGISTRY_ADDRESS": "127.0.0.1:2379?tls=maybe"}
    done = cli("services", env=env)
    assert done.returncode == 2, done
    error, hinted = done.stderr.strip().splitlines()
    assert "etcd://127.0.0.1:2379" in error and "tls='maybe' is not true or false" in error, error
    assert "docs/registry/etcd.md" in hinted, hinted


def _one_line_about(done_stderr: str, url: str) -> str:
    lines = [line for line in done_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done_stderr
    (line,) = lines
    assert url in line and "is etcd running there and reachable?" in line, line
    return line


def test_an_unreachable_etcd_is_one_line_naming_it(env: dict[str, str]) -> None:
    url = f"etcd://127.0.0.1:{free_port()}"
    for args in COMMANDS:
        done = cli("--registry", url, *args, env=env)
        assert done.returncode == 1, done
        assert_clean(done.stdout + done.stderr)
        _one_line_about(done.stderr, url)
        assert done.stdout == ""


def test_an_etcd_that_goes_away(etcd_own: EtcdServer, env: dict[str, str]) -> None:
    """Up: the commands work (an empty prefix); stopped: the same commands say it in one line;
    back: they work again, nothing to restart on our side."""
    url = etcd_own.url(f"/cli-{time.monotonic_ns()}")
    listed = cli("--registry", url, "services", env=env)
    assert listed.returncode == 0 and "no services in" in listed.stderr, listed
    missing = cli("--registry", url, "describe", "greeter", env=env)
    assert missing.returncode == 1 and "greeter not found" in missing.stderr, missing
    etcd_own.stop()
    try:
        for args in COMMANDS:
            done = cli("--registry", url, *args, env=env)
            assert done.returncode == 1, done
            assert_clean(done.stdout + done.stderr)
            _one_line_about(done.stderr, etcd_own.address)
    finally:
        etcd_own.start()
    again = cli("--registry", url, "services", env=env)
    assert again.returncode == 0 and "no services in" in again.stderr, again
