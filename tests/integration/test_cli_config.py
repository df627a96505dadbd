"""`microweave config get|set|watch|dump` as a user runs them: subprocesses reading real file and
env sources (and a real etcd), checking the merged values, the exit codes and messages of each
mistake, and that a secret's value never reaches the output unless asked for with --reveal."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import CliProcess, assert_clean, cli, registry_env, wait_for_service
from engines import free_port
from engines.etcd import EtcdServer

PASSWORD = "pw-7f3a9c-never-shown"
TOKEN = "tok-51d0e2-never-shown"
ENV_KEY = "key-9b44c1-never-shown"
SECRETS = (PASSWORD, TOKEN, ENV_KEY)

SETTINGS = f"""\
greeting: Hello
db:
  host: localhost
  port: 5432
  password: {PASSWORD}
users:
  - name: ann
    token: {TOKEN}
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No MICRO_* of the developer's; APP_* set here only: the env:// layer's contents."""
    env = {k: v for k, v in registry_env(tmp_path / "registry").items() if not k.startswith("APP_")}
    env.update(APP_DB__PORT="6000", APP_API_KEY=ENV_KEY)  # api_key
    return env


@pytest.fixture
def settings(tmp_path: Path) -> str:
    path = tmp_path / "settings.yaml"
    path.write_text(SETTINGS)
    return f"file://{path}"


def _ok(*args: str, env: dict[str, str]) -> str:
    done = cli("config", *args, env=env)
    assert done.returncode == 0, done
    assert_clean(done.stderr)
    return done.stdout


def _fails(code: int, *args: str, env: dict[str, str], cwd_said: bool = False) -> str:
    """The command exits `code` with a message and no traceback; its stderr (`cwd_said`: the
    message may name the working directory, the repository's)."""
    done = cli("config", *args, env=env)
    assert done.returncode == code, done
    if cwd_said:
        assert "Traceback" not in done.stderr and ".py" not in done.stderr, done.stderr
    else:
        assert_clean(done.stdout + done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("error"), done.stderr
    return " ".join(done.stderr.split())


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


# -- get and dump over file + env ------------------------------------------------------


def test_get_reads_the_merged_value_later_source_wins(settings: str, env: dict[str, str]) -> None:
    layered = ("-s", settings, "-s", "env://APP_")
    assert _ok("get", "db.port", *layered, env=env) == "6000\n"  # env, later, wins
    assert _ok("get", "db.port", "-s", "env://APP_", "-s", settings, env=env) == "5432\n"
    assert _ok("get", "greeting", *layered, env=env) == "Hello\n"
    db = json.loads(_ok("get", "db", *layered, "--json", env=env))
    assert db == {"host": "localhost", "port": "6000", "password": "**********"}
    shown = _ok("get", "db", *layered, env=env)  # a mapping: YAML-ish, one key a line
    assert "host: localhost\n" in shown and "port: '6000'\n" in shown
    assert json.loads(_ok("get", "db.port", "-s", settings, "--json", env=env)) == 5432


def test_sources_come_from_micro_config_else_the_error_says_how(settings: str, env: dict[str, str]) -> None:
    said = _fails(2, "get", "db.port", env=env)
    assert "no config sources" in said and "--source" in said and "MICRO_CONFIG" in said, said
    configured = {**env, "MICRO_CONFIG": f"{settings} env://APP_"}
    assert _ok("get", "db.port", env=configured) == "6000\n"
    # --source replaces MICRO_CONFIG's sources, it does not add to them
    assert _ok("get", "db.port", "-s", settings, env=configured) == "5432\n"


def test_a_missing_key_exits_1_naming_the_sources_read(settings: str, env: dict[str, str]) -> None:
    said = _fails(1, "get", "db.nope", "-s", settings, "-s", "env://APP_", env=env)
    assert "db.nope" in said and settings in said and "env://APP_" in said, said


def test_a_secret_never_appears_unless_revealed(settings: str, env: dict[str, str]) -> None:
    """Name-based secrets (password, token, key: in a file, in a list in a file, in env) are
    masked in dump, dump --json, get of a parent or of the root, and get of the key itself."""
    layered = ("-s", settings, "-s", "env://APP_")
    shown = [
        _ok("dump", *layered, env=env),
        _ok("dump", *layered, "--json", env=env),
        _ok("get", "db", *layered, env=env),
        _ok("get", "db", *layered, "--json", env=env),
        _ok("get", "users", *layered, "--json", env=env),
        _ok("get", "api_key", *layered, env=env),
        _ok("get", "db.password", *layered, env=env),
        _ok("get", "", *layered, "--json", env=env),
    ]
    for text in shown:
        _no_secret(text)
        assert "**********" in text, text
    tree = json.loads(shown[1])
    assert tree["users"] == [{"name": "ann", "token": "**********"}]
    assert tree["api_key"] == "**********" and tree["greeting"] == "Hello"
    # the values are there to be shown: --reveal does (so the checks above can fail)
    revealed = _ok("dump", *layered, "--json", "--reveal", env=env)
    assert all(secret in revealed for secret in SECRETS), revealed
    assert _ok("get", "db.password", *layered, "--reveal", env=env) == f"{PASSWORD}\n"


# -- mistakes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [("bad.json", '{"db": {"port": 5432,', "not valid JSON"), ("bad.yaml", "db: [1, 2\n", "YAML")],
)
def test_a_document_that_does_not_parse_names_the_file(
    name: str, text: str, said: str, tmp_path: Path, env: dict[str, str]
) -> None:
    path = tmp_path / name
    path.write_text(text)
    for args in (("dump",), ("get", "db"), ("watch",)):
        error = _fails(2, *args, "-s", f"file://{path}", env=env)
        assert f"file://{path}" in error and said in error, error


def test_a_missing_file_and_an_unknown_scheme(tmp_path: Path, env: dict[str, str]) -> None:
    error = _fails(1, "dump", "-s", f"file://{tmp_path}/none.yaml", env=env, cwd_said=True)
    assert f"file://{tmp_path}/none.yaml" in error and "no such file" in error, error
    error = _fails(2, "dump", "-s", "etdc://127.0.0.1:2379/app", env=env)
    assert "unknown config source scheme 'etdc'" in error and "etcd://" in error, error


def test_set_on_read_only_sources_says_what_to_do(settings: str, env: dict[str, str]) -> None:
    error = _fails(2, "set", "db.port", "5433", "-s", settings, "-s", "env://APP_", env=env)
    assert "read-only" in error and settings in error and "etcd://" in error, error
    assert "edit" in error  # the file: edit it
    assert _ok("get", "db.port", "-s", settings, env=env) == "5432\n"  # nothing was written


# -- watch -----------------------------------------------------------------------------


def _wait_for(what: Callable[[], bool], process: CliProcess, timeout: float = 30.0) -> None:
    limit = time.monotonic() + timeout
    while not what():
        if not process.alive():
            raise AssertionError(f"{process.args} exited with {process.returncode}:\n{process.output()}")
        if time.monotonic() > limit:
            raise AssertionError(f"not seen after {timeout}s:\n{process.output()}")
        time.sleep(0.05)


def _replace(path: Path, text: str) -> None:
    """As a deploy tool writes: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def test_watch_prints_each_change_masked_and_ctrl_c_ends_it_with_0(
    tmp_path: Path, settings: str, env: dict[str, str]
) -> None:
    path = Path(settings.removeprefix("file://"))
    argv = ("config", "watch", "db", "-s", f"{settings}?interval=0.1")
    with CliProcess(*argv, env=env, log=tmp_path / "watch.log") as watcher:
        _wait_for(lambda: "watching db in" in watcher.output(), watcher)
        new_password = "pw-second-never-shown"
        changed = SETTINGS.replace("port: 5432", "port: 5433").replace(PASSWORD, new_password)
        _replace(path, changed.replace("greeting: Hello", "greeting: Hi"))
        _wait_for(lambda: "db.password:" in watcher.output() and "db.port:" in watcher.output(), watcher)
        _replace(path, "db: [unclosed\n")  # a bad update: said, rejected, the watch goes on
        _wait_for(lambda: "rejected" in watcher.output(), watcher)
        _replace(path, changed.replace("port: 5433", "port: 5434"))
        _wait_for(lambda: "db.port: 5433 -> 5434" in watcher.output(), watcher)
        watcher.signal(signal.SIGINT)
        assert watcher.wait(20) == 0
        out = watcher.output()
    assert f"db.port: 5432 -> 5433  ({settings}" in out, out
    (rejected,) = [line for line in out.splitlines() if "rejected" in line]
    assert str(path) in rejected and "YAML" in rejected, rejected
    assert "db.password: ********** -> **********" in out, out
    assert "greeting" not in out  # outside the prefix
    _no_secret(out)
    assert new_password not in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out


def test_watch_json_lines(tmp_path: Path, settings: str, env: dict[str, str]) -> None:
    path = Path(settings.removeprefix("file://"))
    argv = ("config", "watch", "-s", f"{settings}?interval=0.1", "--json")
    with CliProcess(*argv, env=env, log=tmp_path / "watch.log") as watcher:
        _wait_for(lambda: "watching (everything)" in watcher.output(), watcher)
        _replace(path, SETTINGS.replace("greeting: Hello\n", "") + "extra: 1\n")
        _wait_for(lambda: '"extra"' in watcher.output(), watcher)
        watcher.signal(signal.SIGTERM)
        # signals keep coming while it stops (Ctrl-C held down; `timeout` signals the process,
        # then its group): still exit 0 with no traceback
        limit = time.monotonic() + 20
        while watcher.alive() and time.monotonic() < limit:
            watcher.signal(signal.SIGINT)
            time.sleep(0.005)
        assert watcher.wait(20) == 0, watcher.output()
        assert "Traceback" not in watcher.output() and "interrupted" not in watcher.output()
        lines = [json.loads(line) for line in watcher.output().splitlines() if line.startswith("{")]
    by_key = {row["key"]: row for row in lines}
    assert by_key["greeting"] == {"key": "greeting", "source": by_key["greeting"]["source"], "old": "Hello"}
    assert by_key["extra"]["new"] == 1 and "old" not in by_key["extra"]


# -- etcd ------------------------------------------------------------------------------


@pytest.fixture
def etcd_prefix(etcd_server: EtcdServer) -> str:
    return f"/cli-config-{uuid.uuid4().hex[:12]}"


def test_an_unreachable_etcd_is_its_error_not_a_traceback(env: dict[str, str]) -> None:
    url = f"etcd://127.0.0.1:{free_port()}/app"
    for args in (("dump",), ("get", "db"), ("set", "db.port", "1"), ("watch",)):
        error = _fails(1, *args, "-s", url, env=env)
        assert f"127.0.0.1:{url.split(':')[2].split('/')[0]}" in error, error


def test_etcd_get_dump_set_with_secrets(
    etcd_server: EtcdServer, etcd_prefix: str, settings: str, env: dict[str, str]
) -> None:
    url = etcd_server.url(etcd_prefix)
    etcd_server.ctl("put", f"{etcd_prefix}/db/port", "7000")
    etcd_server.ctl("put", f"{etcd_prefix}/db/password", "etcd-pw-never-shown")
    layered = ("-s", settings, "-s", "env://APP_", "-s", url)
    assert _ok("get", "db.port", *layered, env=env) == "7000\n"  # etcd, last, wins
    for args in (("dump",), ("dump", "--json"), ("get", "db"), ("get", "db", "--json")):
        text = _ok(*args, *layered, env=env)
        _no_secret(text)
        assert "etcd-pw-never-shown" not in text and "**********" in text, text
    done = cli("config", "set", "db.port", "7001", *layered, env=env)
    assert done.returncode == 0, done
    assert url in done.stderr and "7001" not in done.stderr, done.stderr
    assert etcd_server.ctl("get", "--print-value-only", f"{etcd_prefix}/db/port").strip() == "7001"
    assert _ok("get", "db.port", *layered, env=env) == "7001\n"


def test_watch_sees_a_set_from_another_process(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str, env: dict[str, str]
) -> None:
    url = etcd_server.url(etcd_prefix)
    etcd_server.ctl("put", f"{etcd_prefix}/db/port", "7000")
    with CliProcess("config", "watch", "-s", url, env=env, log=tmp_path / "watch.log") as watcher:
        _wait_for(lambda: "watching (everything)" in watcher.output(), watcher)
        for key, value in (("db.port", "7002"), ("db.password", "etcd-pw-2-never-shown")):
            done = cli("config", "set", key, value, "-s", url, env=env)
            assert done.returncode == 0, done
        _wait_for(lambda: "db.password:" in watcher.output(), watcher)
        watcher.signal(signal.SIGINT)
        assert watcher.wait(20) == 0
        out = watcher.output()
    assert f"db.port: 7000 -> 7002  ({url})" in out, out
    assert f"db.password: (unset) -> **********  ({url})" in out, out
    assert "etcd-pw-2-never-shown" not in out and "Traceback" not in out, out


# -- microweave run --config -----------------------------------------------------------

CONFIGURED = "tests/integration/services/configured.py"


def test_run_config_gives_the_service_its_sources(tmp_path: Path, settings: str, env: dict[str, str]) -> None:
    argv = ("run", CONFIGURED, "--config", settings, "--config", "env://APP_")
    with CliProcess(*argv, env=env, log=tmp_path / "run.log") as service:
        wait_for_service("configured", env=env, process=service)
        called = cli("call", "configured", "Settings.Get", '{"key": "db.port"}', env=env)
        assert called.returncode == 0, called
        assert json.loads(called.stdout) == {"value": "6000", "sources": [settings, "env://APP_"]}
        called = cli("call", "configured", "Settings.Get", '{"key": "greeting"}', env=env)
        assert json.loads(called.stdout)["value"] == "Hello"


def test_run_config_over_sources_named_in_code_is_an_error(settings: str, env: dict[str, str]) -> None:
    in_code = {**env, "CONFIGURED_IN_CODE": settings}
    done = cli("run", CONFIGURED, "--config", "env://APP_", env=in_code, timeout=30)
    assert done.returncode == 2, done
    assert "configured names its config sources in code" in done.stderr, done.stderr
    assert_clean(done.stdout + done.stderr)
    done = cli("run", CONFIGURED, "--config", "file://my settings.yaml", env=env, timeout=30)
    assert done.returncode == 2 and "%20" in done.stderr, done


DSN_PASSWORD = "dsnpw-4e21-never-shown"
SERVICE_WITH_SECRET_FIELD = """\
import msgspec
from microweave import Secret, Service


class Database(msgspec.Struct):
    dsn: Secret  # an ordinary name: only the model says it is secret
    port: int = 5432


service = Service("dsn-user", config=["{url}"])
database = service.config.bind(Database, "db")
"""


def test_service_masks_its_secret_fields_and_secret_adds_keys(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "dsn.yaml"
    path.write_text(f"db:\n  dsn: {DSN_PASSWORD}\n  port: 1\nlink: postgres://app:{PASSWORD}@db:5432/x\n")
    target = tmp_path / "dsn_service.py"
    target.write_text(SERVICE_WITH_SECRET_FIELD.format(url=f"file://{path}"))
    plain = _ok("dump", "-s", f"file://{path}", env=env)
    assert DSN_PASSWORD in plain  # nothing says db.dsn is secret: shown (this test can fail)
    assert PASSWORD not in plain and "postgres://app:**********@db:5432/x" in plain  # a URL's password
    for args in (["dump", "--service", str(target)], ["get", "db", "--service", str(target), "--json"]):
        out = _ok(*args, env=env)
        assert DSN_PASSWORD not in out and "**********" in out, out
    by_glob = _ok("dump", "-s", f"file://{path}", "--secret", "db.*", env=env)
    assert DSN_PASSWORD not in by_glob and "port: '**********'" in by_glob
    revealed = _ok("dump", "--service", str(target), "--reveal", env=env)
    assert DSN_PASSWORD in revealed and PASSWORD in revealed
