"""`microweave prometheus-sd`: Prometheus file-based service discovery from any registry.

Prometheus reads a JSON file of target groups (`file_sd_configs`) and re-reads it when it
changes. This command writes one group per node that advertises its admin endpoint
(`admin_address` in its node metadata), from whatever registry the services use, once or, with
`--watch`, again after every change. The file is replaced atomically (a temporary file in the
same directory, renamed over it), so Prometheus never reads half a file.

Target labels are `microweave_service`, `microweave_version` and `microweave_node`, not `service`,
`version` or `node`: our metrics carry a `service` label of their own (on the client side it
names the callee), and Prometheus renames a scraped label that a target label also sets (to
`exported_service`), which would break every query on `service`; go-micro's Prometheus wrapper
uses `micro_version`, and `version`/`node` are common in users' own metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..errors import MicroError
from ..logs import printable
from ..registry import Action, Registry
from ..service import run_async
from .admin_nodes import AdminNode, list_records, split_admin_nodes
from .options import RegistryOption, open_registry, registry_url
from .output import CliError, err, reporting_errors
from .signals import until_signal

__all__ = ["prometheus_sd", "render_targets", "target_groups", "write_atomically"]

#: with --watch, the registry is read again this often even when no change was announced
#: (polling backends coalesce changes; a watch can miss one while it reconnects)
REREAD_EVERY = 30.0
#: longest wait between two attempts to watch or read a registry that fails
MAX_RETRY_DELAY = 30.0


def target_groups(nodes: Sequence[AdminNode]) -> list[dict[str, Any]]:
    """Prometheus target groups: one per node with an admin address, in a stable order."""
    return [
        {
            "targets": [node.admin_address],
            "labels": {
                "microweave_service": node.service,
                "microweave_version": node.version,
                "microweave_node": node.node,
            },
        }
        for node in nodes
        if node.admin_address is not None
    ]


def render_targets(nodes: Sequence[AdminNode]) -> str:
    return json.dumps(target_groups(nodes), indent=2) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a temporary file beside it, then a rename.

    The file gets the mode a plain `open()` would give it (0666 less the umask), not
    mkstemp's 0600, so a Prometheus running as another user can read it.
    """
    directory = path.parent
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CliError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="--output must name a file in an existing directory you can write to",
        ) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}", hint="check --output") from None


class Notes:
    """Says on stderr which nodes are left out, once per node, not at every rewrite."""

    def __init__(self) -> None:
        self._said: set[tuple[str, str, str]] = set()

    def skipped(self, nodes: Sequence[AdminNode]) -> None:
        current: set[tuple[str, str, str]] = set()
        for node in nodes:
            if node.admin_address is not None:
                continue
            key = (node.service, node.node, node.reason)
            current.add(key)
            if key not in self._said:
                where = f"{escape(printable(node.node))} of {escape(printable(node.service))}"
                err.print(f"[dim]note:[/] skipped node {where}: {escape(node.reason)}")
        self._said = current  # only nodes still there: bounded by the registry, not by its history

    @staticmethod
    def absent(names: Sequence[str], nodes: Sequence[AdminNode], where: str) -> None:
        found = {node.service for node in nodes}
        for name in names:
            if name not in found:
                err.print(f"[dim]note:[/] no node of {escape(name)} in {escape(where)}")


def _summary(nodes: Sequence[AdminNode]) -> str:
    targets = [n for n in nodes if n.admin_address is not None]
    services = len({n.service for n in targets})
    return f"{len(targets)} target{'s' * (len(targets) != 1)} of {services} service{'s' * (services != 1)}"


async def _once(url: str | None, names: Sequence[str]) -> list[AdminNode]:
    async with open_registry(url) as registry:
        nodes = split_admin_nodes(await list_records(registry, names))
        Notes.absent(names, nodes, repr(registry))
        return nodes


async def _follow(registry: Registry, names: Sequence[str], changed: asyncio.Event) -> None:
    """Set `changed` whenever the registry says one of the services changed; re-subscribe
    (after a growing pause) when the watch fails."""
    delay = 1.0
    while True:
        try:
            async with await registry.watch(None) as watcher:
                changed.set()  # anything between the last read and this subscription
                async for event in watcher:
                    delay = 1.0
                    if not names or event.action is Action.RESYNC or event.service.name in names:
                        changed.set()
        except (MicroError, OSError) as exc:
            detail = exc.detail if isinstance(exc, MicroError) else str(exc)
            err.print(f"[yellow]watch failed:[/] {escape(detail)}; watching again in {delay:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_RETRY_DELAY)


async def _watch(url: str | None, names: Sequence[str], output: Path, min_interval: float) -> None:
    """Rewrite `output` after every change, at most once per `min_interval`, until cancelled."""
    notes = Notes()
    written: str | None = None
    delay = 1.0
    async with open_registry(url) as registry:
        changed = asyncio.Event()
        follower = asyncio.create_task(_follow(registry, names, changed))
        err.print(f"watching {escape(repr(registry))}; writing {escape(str(output))}; Ctrl-C to stop")
        try:
            while True:
                changed.clear()
                read_at = time.monotonic()
                try:
                    nodes = split_admin_nodes(await list_records(registry, names))
                except (
                    MicroError,
                    OSError,
                ) as exc:  # keep the last file: an outage is no reason to drop targets
                    detail = exc.detail if isinstance(exc, MicroError) else str(exc)
                    err.print(
                        f"[yellow]registry read failed:[/] {escape(detail)}; "
                        f"{escape(str(output))} kept as it was; reading again in {delay:.0f} s"
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY)
                    continue
                delay = 1.0
                notes.skipped(nodes)
                text = render_targets(nodes)
                if text != written:
                    write_atomically(output, text)
                    written = text
                    when = time.strftime("%H:%M:%S")
                    err.print(f"{when} wrote {_summary(nodes)} to {escape(str(output))}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), REREAD_EVERY)
                # a burst of changes becomes one rewrite: at most one read per min_interval
                await asyncio.sleep(max(0.0, read_at + min_interval - time.monotonic()))
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower


def _check_interval(value: float) -> float:
    if not value > 0 or value == float("inf"):
        raise typer.BadParameter(f"{value} is not a number of seconds > 0")
    return value


def prometheus_sd(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the targets to FILE (replaced atomically), the file a file_sd_configs "
            "entry of Prometheus names. Default: print them.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    service: Annotated[
        list[str] | None,
        typer.Option(
            "--service",
            "-s",
            metavar="NAME",
            help="Only nodes of this service (repeat for several). Default: every service.",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="Keep FILE up to date as nodes come and go, until Ctrl-C or SIGTERM."
        ),
    ] = False,
    min_interval: Annotated[
        float,
        typer.Option(
            "--min-interval",
            metavar="SECONDS",
            help="With --watch: at most one rewrite per SECONDS (a burst of changes is one rewrite).",
            callback=_check_interval,
        ),
    ] = 1.0,
    registry: RegistryOption = None,
) -> None:
    """Write Prometheus file-based service discovery targets: the admin address (/metrics) of
    every node in the registry, labelled microweave_service, microweave_version, microweave_node."""
    url = registry_url(ctx, registry)
    names = service or []
    with reporting_errors():
        if watch:
            if output is None:
                raise CliError(
                    "--watch needs --output FILE",
                    hint="e.g. --watch --output targets/microweave.json",
                    code=2,
                )
            target = output

            async def follow() -> None:
                await until_signal(lambda: _watch(url, names, target, min_interval))

            run_async(follow())
            err.print("stopped")
            return
        nodes = run_async(_once(url, names))
        Notes().skipped(nodes)
        text = render_targets(nodes)
        if output is None:
            print(text, end="")
            return
        write_atomically(output, text)
        err.print(f"wrote {_summary(nodes)} to {escape(str(output))}")
