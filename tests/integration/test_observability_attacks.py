"""Observability under attack (issue 11): what a hostile peer or a hostile registry entry can do
to a node's logs, metrics and admin endpoint, and to `microweave stats` and `prometheus-sd`.

Real processes and sockets: a `microweave run` node writing text logs, a node record whose
admin address or /metrics page was chosen by an attacker, the CLI run as a user runs it.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import CliProcess, assert_clean, cli, registry_env, wait_for_service
from metrics_kit import register_stopped_node

from microweave import Client, Service
from microweave.errors import MicroError
from microweave.registry.local import LocalRegistry

LOGGED = "tests/integration/services/logged.py"
#: a line a peer would like the node's log to show as the node's own
FORGED = "2026-01-01 00:00:00,000 CRITICAL root: FORGED"


# -- logs: a peer's strings never start a line of their own --------------------------------------


def test_peer_strings_in_text_access_lines_cannot_forge_lines_or_colour_them(tmp_path: Path) -> None:
    env = registry_env(tmp_path / "registry")
    env.update(MICRO_LOG_FORMAT="text", MICRO_ACCESS_LOG="1", MICRO_LOG_LEVEL="info")
    log = tmp_path / "back.log"
    with CliProcess("run", f"{LOGGED}:back", env=env, log=log) as process:
        wait_for_service("logged-back", env=env, process=process)

        async def attack() -> None:
            async with Client(registry=LocalRegistry(tmp_path / "registry"), transports=("tcp",)) as client:
                for endpoint in (f"Back.Nope\n{FORGED} endpoint", "Back.\x1b[31mred\x1b[0m\r\x85\u2028"):
                    with pytest.raises(MicroError):
                        await client.call("logged-back", endpoint, {"text": "x"})
                caller = {"micro-from-service": f"evil\n{FORGED} caller\x1b[2J"}
                await client.call("logged-back", "Back.Note", {"text": "x"}, metadata=caller)

        asyncio.run(attack())
        assert process.stop() == 0, process.output()
    text = log.read_text()
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith(FORGED)], text
    assert "\x1b" not in text and "\r" not in text and "\x85" not in text and "\u2028" not in text
    access = [line for line in lines if "microweave.access" in line]
    assert len(access) == 3, text
    assert any("Back/Nope\\n2026-01-01" in line for line in access), access  # escaped, still shown
    assert any("from evil\\n2026-01-01" in line for line in access), access


def test_a_traced_node_logs_no_line_a_peer_wrote_in_its_baggage(tmp_path: Path) -> None:
    """OpenTelemetry's baggage propagator warns about a header it drops, quoting it whole (up to
    the 64 KiB a header block holds) or one line per bad member: a peer's newlines, escapes and
    bulk in the node's log, and one request worth hundreds of lines."""
    env = registry_env(tmp_path / "registry")
    env.update(MICRO_LOG_FORMAT="text", MICRO_LOG_LEVEL="info", OTEL_TRACES_EXPORTER="console")
    log = tmp_path / "back.log"
    with CliProcess("run", f"{LOGGED}:back", env=env, log=log) as process:
        wait_for_service("logged-back", env=env, process=process)

        async def attack() -> None:
            async with Client(registry=LocalRegistry(tmp_path / "registry"), transports=("tcp",)) as client:
                for baggage in (
                    "k=" + "v" * 9000 + f"\n{FORGED} whole header",  # over 8192 bytes: quoted whole
                    f"bad key\n{FORGED} member=1",  # a member that does not parse
                    "a;," * 2700,  # 8100 bytes of members that do not parse: one warning each
                    "a b=c," * 1300 + "good=1",  # the same, members with an "="
                    ",".join(f"k{i}=v" for i in range(1000)),  # over 180 members
                    ",".join(["\u00e9=\x1b[2J"] * 100),  # non-ASCII, escapes
                ):
                    reply = await client.call(
                        "logged-back", "Back.Note", {"text": "x"}, metadata={"baggage": baggage}
                    )
                    assert reply == {"text": "noted x"}

        asyncio.run(attack())
        assert process.stop() == 0, process.output()
    text = log.read_text()
    assert FORGED not in text and "\x1b" not in text, text[-3000:]
    assert text.count("baggage") <= 8, text[-3000:]  # at most a line or two per request
    assert len(text) < 64 * 1024, len(text)


class Liar:
    """A node whose errors say what it likes: its detail goes back to whoever called it."""

    async def lie(self, req: dict[str, Any]) -> dict[str, Any]:
        from microweave.errors import BadRequest

        raise BadRequest(f"no\n{FORGED} from a callee\x1b[2J")


class Asker:
    client: Client | None = None

    async def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert Asker.client is not None
        reply: dict[str, Any] = await Asker.client.call("liar", "Liar.Lie", req)
        return reply


async def test_an_error_detail_a_callee_chose_stays_on_its_line_in_the_callers_log(
    registry_dir: Path,
) -> None:
    import io
    import logging

    from microweave.logs import TextFormatter

    liar = Service("liar", drain_delay=0, grace=2, admin_address=False)
    liar.handler(Liar)
    asker = Service("asker", drain_delay=0, grace=2, admin_address=False)
    asker.handler(Asker)
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("microweave.server")
    logger.addHandler(handler)
    await liar.start()
    await asker.start()
    try:
        async with Client(transports=("tcp",), timeout=20) as client:
            Asker.client = client
            with pytest.raises(MicroError) as failed:
                await client.call("asker", "Asker.Ask", {})
            assert failed.value.code == 400
    finally:
        Asker.client = None
        logger.removeHandler(handler)
        await asker.stop()
        await liar.stop()
    text = written.getvalue()
    assert "a call it made failed" in text, text
    assert not [line for line in text.splitlines() if line.startswith(FORGED)], text
    assert "\x1b" not in text, text


# -- the admin endpoint: one host holding connections open does not lock the probes out ----------


async def test_one_host_holding_every_admin_connection_leaves_room_for_the_probes() -> None:
    from microweave.admin import AdminServer, Readiness

    readiness = Readiness("held")
    await readiness.start()
    readiness.serving()
    server = AdminServer(readiness, "127.0.0.1:0", max_connections=8)
    await server.start()
    held: list[asyncio.StreamWriter] = []
    try:
        host, port = str(server.address).rsplit(":", 1)
        readers = []
        for _ in range(8):  # silent connections, kept open for the keep-alive timeout
            reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.1", 0))
            readers.append(reader)
            held.append(writer)
        # the server took 6 of them and closed the last 2 (3/4 of its 8 from one host)
        closed = [await asyncio.wait_for(r.read(), 20) for r in readers[6:]]
        assert closed == [b"", b""]
        # a kubelet or a Prometheus on another address
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=("127.0.0.2", 0))
        held.append(writer)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 20)
        assert reply.startswith(b"HTTP/1.1 200"), reply
    finally:
        for writer in held:
            writer.close()
        await server.stop()
        await readiness.stop()


# -- metrics: whatever a peer sends, the series stay those of the endpoints served ----------------


class Echo:
    async def echo(self, req: dict[str, Any]) -> dict[str, Any]:
        return req


async def test_random_paths_callers_and_metadata_on_tcp_and_grpc_add_no_series(registry_dir: Path) -> None:
    from prometheus_client import REGISTRY, generate_latest

    name = f"card_{uuid.uuid4().hex[:8]}"
    service = Service(name, drain_delay=0, grace=2, admin_address=False)
    service.handler(Echo)

    def rnd(n: int = 10) -> str:
        return "".join(random.choices(string.ascii_letters, k=n))

    def series() -> list[str]:
        text = generate_latest(REGISTRY).decode()
        return [line for line in text.splitlines() if f'"{name}"' in line and not line.startswith("#")]

    await service.start()
    try:
        for transport in ("tcp", "grpc"):
            async with Client(transports=(transport,), timeout=20, metrics=False) as client:
                await client.call(name, "Echo.Echo", {"a": 1})

                async def one() -> None:
                    metadata = {rnd(6).lower(): rnd(), "micro-from-service": rnd(), "baggage": f"{rnd()}=1"}
                    with pytest.raises(MicroError):
                        await client.call(name, f"{rnd()}.{rnd()}", {}, metadata=metadata)

                for _ in range(20):
                    await asyncio.gather(*(one() for _ in range(100)))
        found = series()
    finally:
        await service.stop()
    endpoints = {line.split('endpoint="')[1].split('"')[0] for line in found if 'endpoint="' in line}
    assert endpoints == {"Echo.Echo", "unknown"}, found
    # Echo.Echo ok and unknown fail, each a count, a histogram of 15 buckets + sum + count, on 2
    # transports; plus the in-flight gauge: nowhere near one series per request sent
    assert len(found) < 100, found


class Relay:
    """Calls `card_back` over gRPC with the metadata its own caller sent (tracing's, a user's)."""

    client: Client | None = None

    async def relay(self, req: dict[str, Any]) -> dict[str, Any]:
        assert Relay.client is not None
        reply: dict[str, Any] = await Relay.client.call("card_back", "Echo.Echo", req)
        return reply


async def test_metadata_grpc_cannot_carry_is_refused_with_a_clear_error_on_every_hop(
    registry_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """tcp carries any text in metadata, gRPC printable ASCII only: a value a peer sent a node
    over tcp travels on (trace context and user keys propagate) into the node's gRPC calls,
    where grpc-core refused it with a raw ExecuteBatchError and wrote its own lines on stderr."""
    back = Service("card_back", drain_delay=0, grace=2, admin_address=False)
    back.handler(Echo)
    front = Service("card_front", drain_delay=0, grace=2, admin_address=False)
    front.handler(Relay)
    await back.start()
    await front.start()
    try:
        async with (
            Client(transports=("grpc",), timeout=20) as grpc_client,
            Client(transports=("tcp",)) as tcp,
        ):
            Relay.client = grpc_client
            assert await grpc_client.call("card_back", "Echo.Echo", {"a": 1}, metadata={"k": "v"}) == {"a": 1}
            for metadata in (
                {"x-user": "a\nb"},
                {"x-user": "\u00e9"},
                {"x user": "v"},
                {"baggage": "k=v\x1b"},
            ):
                with pytest.raises(MicroError) as direct:
                    await grpc_client.call("card_back", "Echo.Echo", {}, metadata=metadata)
                assert direct.value.code == 400, direct.value
                assert "metadata" in direct.value.detail, direct.value.detail
                with pytest.raises(MicroError) as relayed:  # tcp takes it; the node's gRPC call does not
                    await tcp.call("card_front", "Relay.Relay", {}, metadata=metadata)
                assert relayed.value.code == 400, relayed.value
    finally:
        Relay.client = None
        await front.stop()
        await back.stop()
    assert "Illegal header" not in capfd.readouterr().err


# -- a hostile registry entry: its admin address and its /metrics page --------------------------


class _Page(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile_page() -> Iterator[tuple[str, type[_Page]]]:
    """An HTTP server on loopback answering every GET with `page.body`: (host:port, page)."""
    page = type("Page", (_Page,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", page
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


_OK_BUCKET = (
    'micro_request_duration_seconds_bucket{service="evil",endpoint="E.Ok",status="success",transport="tcp"'
)
INF_PAGE = f"""# TYPE micro_request_total counter
micro_request_total{{service="evil",endpoint="E.Inf",status="success",code="200",transport="tcp"}} +Inf
micro_request_total{{service="evil",endpoint="E.Inf",status="fail",code="500",transport="tcp"}} 1e308
micro_request_total{{service="evil",endpoint="E.Big",status="success",code="200",transport="tcp"}} 1e308
micro_request_total{{service="evil",endpoint="E.Nan",status="success",code="200",transport="tcp"}} NaN
micro_request_total{{service="evil",endpoint="E.Neg",status="success",code="200",transport="tcp"}} -Inf
micro_request_total{{service="evil",endpoint="E.Ok",status="success",code="200",transport="tcp"}} 3
micro_request_total{{service="evil",endpoint="E.\x1b]0;title\x07\x1b[2J",status="success",transport="t"}} 1
# TYPE micro_request_duration_seconds histogram
{_OK_BUCKET},le="0.1"}} 3
{_OK_BUCKET},le="-Inf"}} +Inf
{_OK_BUCKET},le="+Inf"}} 3
# TYPE micro_server_in_flight gauge
micro_server_in_flight{{service="evil"}} +Inf
""".encode()


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON:\n{text}")

    return json.loads(text, parse_constant=refuse)


def test_stats_of_a_node_sending_inf_and_nan_prints_json_and_a_table(
    tmp_path: Path, hostile_page: tuple[str, type[_Page]]
) -> None:
    address, page = hostile_page
    page.body = INF_PAGE
    root = tmp_path / "registry"
    env = registry_env(root)
    # two nodes sending the same page: 1e308 twice overflows a sum to inf too
    for node in ("evil-1", "evil-2\x1b[2J"):
        asyncio.run(register_stopped_node(root, "evil", "1.0", node, admin_address=address))

    done = cli("stats", "evil", "--once", "--json", "--interval", "0.2", env=env)
    assert done.returncode == 0, done.stderr
    snapshot = _strict_json(done.stdout)
    rows = {row["endpoint"]: row for row in snapshot["endpoints"]}
    assert rows["E.Ok"]["total"]["calls"] == 6, rows
    assert_clean(done.stderr)

    table = cli("stats", "evil", "--once", "--interval", "0.2", env=env)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "E.Ok" in table.stdout and "2/2 nodes answered" in table.stdout, table.stdout
    # the node's id and its label values are the attacker's: no terminal escape gets through
    assert "\x1b" not in table.stdout and "\x07" not in table.stdout, table.stdout
    assert_clean(table.stdout + table.stderr)


def test_stats_of_a_node_with_thousands_of_endpoints_shows_the_busiest_and_says_how_many_more(
    tmp_path: Path, hostile_page: tuple[str, type[_Page]]
) -> None:
    """A page may name any number of endpoints (16 MiB of them): the table a person reads shows
    the busiest (rendering 20,000 rows took rich ~10 s and ~200 MB at every refresh); --json
    still has them all."""
    address, page = hostile_page
    family = "# TYPE micro_request_total counter\n"
    sample = 'micro_request_total{{service="many",endpoint="E.{0}",status="success",transport="t"}} {1}\n'
    page.body = (family + "".join(sample.format(i, 1 + (i == 7777) * 1000) for i in range(20000))).encode()
    root = tmp_path / "registry"
    env = registry_env(root)
    asyncio.run(register_stopped_node(root, "many", "1.0", "many-1", admin_address=address))

    table = cli("stats", "many", "--once", "--interval", "0.2", env=env, timeout=120)
    assert table.returncode == 0, table.stdout + table.stderr
    rows = [line for line in table.stdout.splitlines() if " E." in line]
    assert 0 < len(rows) <= 100, len(rows)
    assert any(" E.7777 " in row for row in rows), rows  # the busiest is shown
    assert "more endpoints" in table.stdout and "--json" in table.stdout, table.stdout[-2000:]
    assert_clean(table.stdout + table.stderr)

    done = cli("stats", "many", "--once", "--json", "--interval", "0.2", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(_strict_json(done.stdout)["endpoints"]) == 20000


def test_prometheus_sd_writes_only_the_host_port_targets_a_node_may_advertise(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    env = registry_env(root)
    good = {"127.0.0.1:9100", "[::1]:9100", "node-1.example.com:9100", "metrics_host:80"}
    bad = [
        "evil\x1b[31m:80",  # a terminal escape
        "h\x00st:80",
        "x\x7f:80",
        "[a]b]:80",  # brackets that are no IPv6 literal
        "x]:80",
        "[x:80",
        "[not-an-ip]:80",
        "a%2fb:80",  # an escaped slash
        "a,b:80",
        "$(id):80",
        "a:\u0668\u0660",  # Arabic-Indic digits: str.isdigit() says yes, Prometheus no
        "a:080080",
    ]
    nodes = [*sorted(good), *bad]

    async def register() -> None:
        for i, address in enumerate(nodes):
            await register_stopped_node(root, "sd", "1.0", f"sd-{i}\x1b[2J", admin_address=address)

    asyncio.run(register())
    done = cli("prometheus-sd", env=env)
    assert done.returncode == 0, done.stderr
    targets = {t for group in json.loads(done.stdout) for t in group["targets"]}
    assert targets == good, targets
    assert done.stderr.count("skipped node") == len(bad), done.stderr
    assert "\x1b" not in done.stderr and "\x00" not in done.stderr
    assert_clean(done.stderr)
