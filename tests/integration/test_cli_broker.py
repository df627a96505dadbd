"""`microweave publish`, `microweave subscribe` and the subscriptions `describe` shows, as a
user runs them: each command a process of its own, on core NATS and on direct:// (no server,
subscribers found in a local:// registry)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from cli_helpers import REPO, CliProcess, assert_clean, cli, registry_env, wait_for_service
from engines import free_port
from engines.nats import NatsServer
from engines.redis import RedisServer
from helpers import wait_until

from microweave._backends import load_broker

SUBSCRIBER_SERVICE = "tests/integration/services/subscriber.py"


class Subscribe:
    """`microweave subscribe ...` running: stdout (the events) and stderr in files of their own,
    so the JSON lines are read apart from what is said to a human."""

    def __init__(self, *args: str, env: dict[str, str], logs: Path, name: str = "subscribe") -> None:
        self.stdout_path = logs / f"{name}.out"
        self.stderr_path = logs / f"{name}.err"
        self._files: list[IO[bytes]] = [self.stdout_path.open("wb"), self.stderr_path.open("wb")]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "microweave.cli", "subscribe", *args],
            stdout=self._files[0], stderr=self._files[1], stdin=subprocess.DEVNULL, env=env, cwd=REPO,
        )  # fmt: skip

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_listening(self) -> None:
        """Until it says it listens (it subscribed: a publish from now on reaches it)."""

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"subscribe exited with {self.proc.returncode}:\n{self.stderr}")
            return "listening on" in self.stderr

        wait_until(listening, timeout=30, what="`microweave subscribe` to listen")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"subscribe still running after {timeout}s\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
            ) from None

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for file in self._files:
            file.close()


@pytest.fixture
def subscribers() -> Iterator[list[Subscribe]]:
    """Every `Subscribe` a test starts, killed by PID at the end if still running."""
    started: list[Subscribe] = []
    yield started
    for subscriber in started:
        subscriber.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A private local:// registry, and no broker named by the environment (direct:// then)."""
    return registry_env(tmp_path / "registry")


def _published_id(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    published = subprocess.run(
        [sys.executable, "-m", "microweave.cli", "publish", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60, input=stdin,
    )  # fmt: skip
    assert published.returncode == 0, published.stdout + published.stderr
    message_id = published.stdout.strip()
    assert len(message_id) == 32 and message_id.isalnum(), published.stdout  # one id, nothing else
    return message_id


# -- core NATS ---------------------------------------------------------------------------------


def test_subscribe_json_on_core_nats_gets_the_events_publish_sent(
    nats_engine: NatsServer, env: dict[str, str], tmp_path: Path, subscribers: list[Subscribe]
) -> None:
    url = nats_engine.url
    scripted = Subscribe("orders.placed", "--count", "2", "--json", "--broker", url, env=env, logs=tmp_path)
    human = Subscribe(
        "orders.placed", "--count", "2", "--headers", "--queue", "screen", "--broker", url,
        env={**env, "COLUMNS": "200"}, logs=tmp_path, name="human",
    )  # fmt: skip
    subscribers += [scripted, human]
    scripted.wait_listening()
    human.wait_listening()

    # the publisher names the broker go-micro style, through the environment
    publisher_env = {**env, "MICRO_BROKER": "nats", "MICRO_BROKER_ADDRESS": nats_engine.address}
    first = _published_id(
        "orders.placed", '{"order": 1, "items": ["tea"]}', "-H", "X-Tenant=acme", env=publisher_env
    )
    body_file = tmp_path / "order.json"
    body_file.write_text('{"order": 2, "note": "caf\u00e9"}\n')
    second = _published_id("orders.placed", f"@{body_file}", env=publisher_env)

    assert scripted.wait() == 0, scripted.stderr
    first_event, second_event = scripted.events()
    assert first_event["id"] == first
    assert first_event["topic"] == "orders.placed"
    assert first_event["attempt"] == 1
    assert first_event["body"] == {"order": 1, "items": ["tea"]}
    assert first_event["headers"]["X-Tenant"] == "acme"
    assert first_event["headers"]["Micro-Id"] == first
    assert second_event["id"] == second
    assert second_event["body"] == {"order": 2, "note": "caf\u00e9"}
    assert_clean(scripted.stderr)

    # broadcast: the queue group of one on the side got both too, shown for a human
    assert human.wait() == 0, human.stderr
    shown = human.stdout
    assert shown.index(first) < shown.index(second)  # in the order they were published
    assert "attempt 1" in shown
    assert "X-Tenant: acme" in shown  # --headers
    assert '"items": [\n    "tea"\n  ]' in shown  # the body as indented JSON
    assert '"note": "caf\u00e9"' in shown


def test_subscribe_json_shows_a_body_that_is_not_json_as_base64(
    nats_engine: NatsServer, env: dict[str, str], tmp_path: Path, subscribers: list[Subscribe]
) -> None:
    subscriber = Subscribe(
        "raw", "--count", "1", "--json", "--broker", nats_engine.url, env=env, logs=tmp_path
    )
    subscribers.append(subscriber)
    subscriber.wait_listening()
    # JSON, but labelled as something else: a script gets the exact bytes
    body = '{"not": "read as JSON"}'
    _published_id(
        "raw", body, "-H", "Content-Type=application/octet-stream", "--broker", nats_engine.url, env=env
    )
    assert subscriber.wait() == 0, subscriber.stderr
    (event,) = subscriber.events()
    assert "body" not in event
    assert base64.b64decode(event["body_base64"]) == body.encode()


def test_subscribe_shows_a_hostile_event_escaped_and_cut_to_size(
    nats_engine: NatsServer, env: dict[str, str], tmp_path: Path, subscribers: list[Subscribe]
) -> None:
    plain = {k: v for k, v in env.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    subscriber = Subscribe(
        "hostile", "--count", "2", "--headers", "--broker", nats_engine.url,
        env={**plain, "COLUMNS": "200"}, logs=tmp_path,
    )  # fmt: skip
    subscribers.append(subscriber)
    subscriber.wait_listening()

    binary = b"\x1b[2J" + bytes(range(256)) * 40

    async def publish() -> None:
        # a publisher the CLI does not control: a terminal escape in a header and in the body
        async with load_broker(nats_engine.url) as broker:
            await broker.publish(
                "hostile", binary, headers={"X-Evil": "\x1b]0;owned\x07"}, content_type="x/y"
            )
            await broker.publish("hostile", json.dumps({"text": "\u202e" + "x" * 50_000}).encode())

    asyncio.run(publish())
    assert subscriber.wait() == 0, subscriber.stderr
    shown = subscriber.stdout
    # nothing reaches the terminal raw (rich writes no styles of its own to a file)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "X-Evil: \\x1b]0;owned\\x07" in shown
    assert "b'\\x1b[2J\\x00\\x01" in shown  # not JSON: a bytes literal
    assert f"more bytes of {len(binary):,}; --json prints them (base64)" in shown
    assert "\\u202e" in shown
    assert "characters; --json prints the whole body" in shown
    assert len(shown) < 10_000  # cut: the bodies were 10 KiB and 50 KiB


def test_subscribe_stops_cleanly_on_ctrl_c_and_sigterm(
    nats_engine: NatsServer, env: dict[str, str], tmp_path: Path, subscribers: list[Subscribe]
) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        subscriber = Subscribe("quiet", "--broker", nats_engine.url, env=env, logs=tmp_path, name=sig.name)
        subscribers.append(subscriber)
        subscriber.wait_listening()
        subscriber.proc.send_signal(sig)
        assert subscriber.wait() == 0, subscriber.stderr
        assert "stopped after 0 events" in subscriber.stderr
        assert_clean(subscriber.stdout + subscriber.stderr)


# -- an at-least-once broker (Redis Streams) ---------------------------------------------------


def test_subscribe_count_leaves_the_events_after_the_nth_to_the_queue_group(
    redis_engine: RedisServer, env: dict[str, str], tmp_path: Path, subscribers: list[Subscribe]
) -> None:
    url = redis_engine.url
    # the queue group must exist before the events, or they are not kept for it
    first = Subscribe(
        "jobs", "--queue", "workers", "--count", "1", "--json", "--broker", url, env=env, logs=tmp_path
    )
    subscribers.append(first)
    first.wait_listening()
    ids = [_published_id("jobs", json.dumps({"n": n}), "--broker", url, env=env) for n in range(4)]
    assert first.wait() == 0, first.stderr
    assert [e["id"] for e in first.events()] == ids[:1]

    # the three left wait in the group and are shared by the members that come, in order, none
    # lost; one handed more than its --count gives the rest back unacknowledged (nacked) for the
    # next member (whether a member is handed one more before it leaves is a race)
    second = Subscribe(
        "jobs",
        "--queue",
        "workers",
        "--count",
        "2",
        "--json",
        "--broker",
        url,
        env=env,
        logs=tmp_path,
        name="second",
    )
    subscribers.append(second)
    assert second.wait() == 0, second.stderr
    third = Subscribe(
        "jobs",
        "--queue",
        "workers",
        "--count",
        "1",
        "--json",
        "--broker",
        url,
        env=env,
        logs=tmp_path,
        name="third",
    )
    subscribers.append(third)
    assert third.wait() == 0, third.stderr
    assert [e["id"] for e in second.events() + third.events()] == ids[1:]


# -- direct:// (the default: no server) ---------------------------------------------------------


def test_subscribe_json_on_direct_gets_the_events_publish_sent(
    env: dict[str, str], tmp_path: Path, subscribers: list[Subscribe]
) -> None:
    # neither command names a broker: direct://, subscribers found in the local:// registry
    subscriber = Subscribe("invoices.paid", "--count", "2", "--json", env=env, logs=tmp_path)
    subscribers.append(subscriber)
    subscriber.wait_listening()
    # it registered a node of its own, whose record names the topic: that is how publishers find it
    (record,) = json.loads(cli("services", "--json", env=env).stdout)
    (endpoint,) = record["endpoints"]
    assert endpoint["metadata"]["topic"] == "invoices.paid"
    assert endpoint["metadata"]["subscriber"] == "true"
    described = cli("describe", record["name"], env=env)
    assert described.returncode == 0, described.stderr
    assert "invoices.paid" in described.stdout.partition("subscriptions")[2]
    assert "endpoints" not in described.stdout  # nothing to call: no empty endpoints table

    first = _published_id("invoices.paid", '{"invoice": 1}', "-H", "X-Tenant=acme", env=env)
    second = _published_id("invoices.paid", "-", env=env, stdin='{"invoice": 2}')
    assert subscriber.wait() == 0, subscriber.stderr
    events = subscriber.events()
    assert [e["id"] for e in events] == [first, second]
    assert [e["body"] for e in events] == [{"invoice": 1}, {"invoice": 2}]
    assert events[0]["headers"]["X-Tenant"] == "acme"
    assert all(e["topic"] == "invoices.paid" and e["attempt"] == 1 for e in events)
    # gone from the registry once it exited: a publisher no longer finds it
    assert json.loads(cli("services", "--json", env=env).stdout) == []


def test_publish_on_direct_reaches_a_service_subscriber(env: dict[str, str], tmp_path: Path) -> None:
    with CliProcess("run", SUBSCRIBER_SERVICE, env=env, log=tmp_path / "service.log") as service:
        wait_for_service("accounts", env=env, process=service)
        message_id = _published_id("user.created", '{"id": 7, "name": "ada"}', env=env)

        def received() -> list[dict[str, Any]]:
            lines = [line for line in service.output().splitlines() if line.startswith("{")]
            return [json.loads(line) for line in lines]

        (line,) = wait_until(received, timeout=30, what="the service's subscriber to get the event")
        assert line == {"subscriber": "welcome", "id": message_id, "body": {"id": 7, "name": "ada"}}


# -- describe ------------------------------------------------------------------------------------


def test_describe_shows_a_services_subscriptions(env: dict[str, str], tmp_path: Path) -> None:
    # describe reads the registry record only: which broker carries the events does not matter
    service_env = {**env, "MICRO_BROKER": "memory://"}
    with CliProcess("run", SUBSCRIBER_SERVICE, env=service_env, log=tmp_path / "service.log") as service:
        wait_for_service("accounts", env=env, process=service)
        described = cli("describe", "accounts", env=env)
        assert described.returncode == 0, described.stderr
        shown = described.stdout
        endpoints, _, subscriptions = shown.partition("subscriptions")
        assert subscriptions, shown  # the table is there
        rows = [line for line in subscriptions.splitlines() if "Subscriber." in line]
        cells = [[c.strip() for c in row.strip("│ ").split("│")] for row in rows]
        assert cells == [
            ["user.created", "mailer", "Subscriber.Welcome", "UserCreated {id: int, name: str}"],
            ["audit", "-", "Subscriber.Audit", "bytes"],
        ]
        assert "Accounts.Count" in endpoints
        assert "Subscriber." not in endpoints  # not endpoints to call

        # the JSON is the registry record: subscribers are endpoints with go-micro's metadata
        (record,) = json.loads(cli("describe", "accounts", "--json", env=env).stdout)
        by_name = {e["name"]: e for e in record["endpoints"]}
        assert by_name["Subscriber.Welcome"]["metadata"] == {
            "topic": "user.created",
            "subscriber": "true",
            "queue": "mailer",
        }


def test_describe_of_a_service_without_subscribers_has_no_subscriptions_table(
    env: dict[str, str], tmp_path: Path
) -> None:
    with CliProcess("run", "examples/greeter/service.py", env=env, log=tmp_path / "greeter.log") as service:
        wait_for_service("greeter", env=env, process=service)
        described = cli("describe", "greeter", env=env)
    assert described.returncode == 0, described.stderr
    assert "Greeter.SayHello" in described.stdout
    assert "subscriptions" not in described.stdout


# -- mistakes and outages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{bad", "the body is not valid JSON (Expecting property name"),
        ('{"a": NaN}', "NaN is not a JSON value"),
        ("", "the body is not valid JSON (Expecting value"),
        ("@/no/such/file.json", "cannot read /no/such/file.json"),
    ],
)
def test_publish_bad_json_is_a_usage_error_before_connecting(
    body: str, message: str, env: dict[str, str]
) -> None:
    # a broker nobody listens on: had the command connected, it would have failed with exit 1
    down = f"nats://127.0.0.1:{free_port()}"
    published = cli("publish", "t", body, "--broker", down, env=env)
    assert published.returncode == 2, published.stderr
    assert message in " ".join(published.stderr.split())  # rich wraps the usage panel
    assert published.stdout == ""
    assert "Traceback" not in published.stderr


def test_publish_bad_header_is_a_usage_error(env: dict[str, str]) -> None:
    published = cli("publish", "t", "{}", "-H", "no-equals-sign", env=env)
    assert published.returncode == 2
    assert "'no-equals-sign' is not key=value" in published.stderr


def test_publish_to_a_broker_that_is_down_names_it_and_says_what_to_do(env: dict[str, str]) -> None:
    port = free_port()
    published = cli(
        "publish", "t", "{}", "--broker", f"nats://ops:hunter2@127.0.0.1:{port}?connect_timeout=1", env=env
    )
    assert published.returncode == 1, published.stdout + published.stderr
    assert published.stdout == ""
    said = " ".join(published.stderr.split())
    assert f"127.0.0.1:{port}" in said
    assert "hint: start the broker at nats://ops:" in said
    assert "hunter2" not in said
    assert_clean(published.stderr)


def test_subscribe_to_a_broker_that_is_down_names_it(env: dict[str, str]) -> None:
    port = free_port()
    subscribed = cli(
        "subscribe", "t", "--count", "1", "--broker", f"nats://127.0.0.1:{port}?connect_timeout=1", env=env
    )
    assert subscribed.returncode == 1, subscribed.stdout + subscribed.stderr
    said = " ".join(subscribed.stderr.split())
    assert f"nats://127.0.0.1:{port}" in said
    assert f"hint: start the broker at nats://127.0.0.1:{port}, or pick another with --broker" in said
    assert_clean(subscribed.stderr)


def test_an_unknown_broker_scheme_names_the_known_ones(env: dict[str, str]) -> None:
    for command in (["publish", "t", "{}"], ["subscribe", "t"]):
        ran = cli(*command, "--broker", "kafka://127.0.0.1:9092", env=env)
        assert ran.returncode == 2, ran.stderr
        assert "unknown broker scheme 'kafka'" in ran.stderr
        assert "nats://" in ran.stderr
        assert_clean(ran.stderr)


@pytest.mark.parametrize("command", ["publish", "subscribe"])
def test_help(command: str, env: dict[str, str]) -> None:
    helped = cli(command, "--help", env=env)
    assert helped.returncode == 0, helped.stderr
    assert "--broker" in helped.stdout
