"""`microweave config get|set|watch|dump`: a service's layered settings, read as it reads them.

The sources are the command's `--source` URLs (repeat them: later wins), else MICRO_CONFIG's
(read through `_backends.settings()`, the one place that reads the environment). The commands
build the same `Config` a service builds, so what they print is what a service with those
sources sees: merged, interpolated, and with every secret masked unless `--reveal`.

Masking here walks into lists as well (a list of mappings that holds a `password` is masked
too), and is applied to every value printed, so no command shows a secret by default even if a
value reaches it unmasked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Iterator
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.markup import escape

from .._backends import CONFIG_SOURCES, _table, config_urls, settings
from ..config import MISSING, Change, Config, Secret
from ..config.secret import MASK, mask_credentials
from ..errors import ConfigurationError, Unavailable
from ..service import run_async
from .output import CliError, err, fail, print_error, reporting_errors

__all__ = ["config_app", "masked", "render"]

T = TypeVar("T")

config_app = typer.Typer(
    name="config",
    help="Read, write and watch layered config: files, env, etcd, Consul (as a service sees it).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _schemes() -> str:
    table = _table("microweave.config_sources", CONFIG_SOURCES)
    return ", ".join(
        f"{s}://" for s in [*CONFIG_SOURCES, *sorted(s for s in table if s not in CONFIG_SOURCES)]
    )


SourceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        "-s",
        metavar="URL",
        help=f"A config source (repeat: later sources win): one of {_schemes()}; "
        "e.g. -s file://settings.yaml -s env://APP_ -s etcd://127.0.0.1:2379/config/app. "
        "Default: $MICRO_CONFIG. Options of each: docs/config.md.",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")]
RevealFlag = Annotated[
    bool, typer.Option("--reveal", help="Show secret values (password, token, ...) instead of masking them.")
]
ServiceOption = Annotated[
    str | None,
    typer.Option(
        "--service",
        metavar="TARGET",
        help="Read the config as this service does (a file or module:attr, as for `microweave run`): "
        "its sources unless --source is given, its Secret fields masked, its bound models validated.",
        show_default=False,
    ),
]
SecretOption = Annotated[
    list[str] | None,
    typer.Option(
        "--secret",
        metavar="KEY",
        help="Mask this key too (repeat; globs such as db.* work). Keys named like passwords and "
        "tokens are always masked.",
        show_default=False,
    ),
]
_HOW = (
    "give sources with --source URL (repeat for layers: -s file://settings.yaml -s env://APP_), "
    "or set MICRO_CONFIG='file://settings.yaml env://APP_'"
)


def source_urls(given: list[str] | None) -> list[str]:
    """The command's sources: --source, else MICRO_CONFIG; none is a usage error saying how."""
    if given:
        return list(given)
    env = settings().config
    urls = config_urls(env) if env else []
    if not urls:
        raise CliError("no config sources", hint=_HOW, code=2)
    return urls


def open_config(source: list[str] | None, service: str | None, secret: list[str] | None) -> Config:
    """The config a command reads: the service's own (its sources, models and secrets) with
    --service, else one of the --source/MICRO_CONFIG sources; --secret adds masked keys."""
    if service is None:
        return Config(source_urls(source), secrets=secret or ())
    from .target import load_service

    found = load_service(service).config
    if not source and not secret:
        return found
    urls = list(source) if source else [s.url for s in found.sources]
    return Config(urls, secrets=[*(secret or ()), *found.secrets])


# -- what is printed -----------------------------------------------------------------


def masked(config: Config, key: str, value: Any, *, reveal: bool = False) -> Any:
    """`value` (found at dotted `key`) with every secret in it replaced by the mask: a key
    the config calls secret (by name, `secrets=`, or under such a key), inside mappings and
    inside lists (an element's keys are named as if the list were a mapping). `reveal` shows
    them, Secrets included."""
    if isinstance(value, Secret):
        return value.reveal() if reveal else MASK
    if not reveal and key and config.is_secret(key):
        return MASK
    if isinstance(value, dict):
        return {
            k: masked(config, f"{key}.{k}" if key else str(k), v, reveal=reveal) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [masked(config, key, v, reveal=reveal) for v in value]
    if isinstance(value, str) and not reveal:
        return mask_credentials(value)
    return value


def _json(value: Any, *, indent: int | None = 2) -> str:
    # str(): a date from YAML/TOML, and a Secret (its mask) if one ever gets here unmasked
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


def render(value: Any, *, as_json: bool) -> str:
    """A value as the commands print it: JSON with --json; else text as itself, a mapping or
    list as YAML (block style, keys in source order), another scalar in its JSON spelling."""
    if as_json:
        return _json(value)
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        if not value:
            return _json(value)
        try:
            return yaml.safe_dump(
                value, sort_keys=False, allow_unicode=True, default_flow_style=False
            ).rstrip()
        except yaml.YAMLError:  # a value YAML cannot represent: JSON says it all the same
            return _json(value)
    return _json(value)


def _short(value: Any) -> str:
    """One change's value on one line."""
    if value is MISSING:
        return "(unset)"
    if isinstance(value, str):
        return value
    return _json(value, indent=None)


def change_line(change: Change, config: Config, *, reveal: bool, as_json: bool) -> str:
    old, new = (
        v if v is MISSING else masked(config, change.key, v, reveal=reveal) for v in (change.old, change.new)
    )
    if as_json:
        row: dict[str, Any] = {"key": change.key, "source": change.source}
        row.update({name: v for name, v in (("old", old), ("new", new)) if v is not MISSING})
        return _json(row, indent=None)
    return f"{change.key}: {_short(old)} -> {_short(new)}  ({change.source})"


# -- errors --------------------------------------------------------------------------


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """What a user can act on, as one message and an exit code: a configuration mistake (a
    bad URL, a document that does not parse, a read-only source) exits 2, a source that
    cannot be reached exits 1 with its detail; never a traceback."""
    with reporting_errors():
        try:
            yield
        except ConfigurationError as exc:
            fail(exc.detail, hint="source URLs and their options: docs/config.md", code=2)
        except Unavailable as exc:
            print_error(exc, hint="check the source's URL (--source, MICRO_CONFIG) and that it is reachable")
            raise typer.Exit(1) from None


async def _read(config: Config, key: str, reveal: bool) -> tuple[Any, list[str]]:
    async with config:
        value = config.get(key, default=MISSING)
        where = [s.url for s in config.sources]
        return (MISSING if value is MISSING else masked(config, key, value, reveal=reveal)), where


def _show(
    key: str,
    source: list[str] | None,
    service: str | None,
    secret: list[str] | None,
    *,
    reveal: bool,
    as_json: bool,
) -> list[str]:
    """What get and dump share: print the merged value at `key` ("" is the whole config) as a
    service with those sources reads it, masked unless `reveal`; returns the sources' URLs. A
    key that is not there is an error naming the sources (the whole config always is)."""
    where: list[str]
    value, where = run_async(_read(open_config(source, service, secret), key, reveal))
    if value is MISSING:
        raise CliError(
            f"no config key {key!r} in {', '.join(where)}",
            hint="list the keys there are with `microweave config dump`",
        )
    print(render(value, as_json=as_json))
    return where


# -- commands ------------------------------------------------------------------------

KeyArgument = Annotated[
    str, typer.Argument(metavar="KEY", help="A dotted key: db.port, or db for everything under it.")
]


@config_app.command("get")
def get(
    key: KeyArgument,
    source: SourceOption = None,
    json_: JsonFlag = False,
    reveal: RevealFlag = False,
    service: ServiceOption = None,
    secret: SecretOption = None,
) -> None:
    """Print the merged value at KEY (a mapping as YAML, or JSON with --json); secrets masked."""
    with config_errors():
        _show(key, source, service, secret, reveal=reveal, as_json=json_)


@config_app.command("dump")
def dump(
    source: SourceOption = None,
    json_: JsonFlag = False,
    reveal: RevealFlag = False,
    service: ServiceOption = None,
    secret: SecretOption = None,
) -> None:
    """Print the whole merged config (YAML, or JSON with --json); secrets masked unless --reveal."""
    with config_errors():
        where = _show("", source, service, secret, reveal=reveal, as_json=json_)
        err.print(f"[dim]merged from {escape(', '.join(where))} (later wins)[/]")


async def _write(urls: list[str], key: str, value: str) -> str:
    config = Config(urls)
    try:
        target = next((s for s in reversed(config.sources) if s.writable), None)
        if target is None:
            read_only = ", ".join(s.url for s in config.sources)
            raise CliError(
                f"cannot write to {read_only}: file and env sources are read-only",
                hint="config set writes to etcd or Consul: add --source etcd://HOST:2379/PREFIX "
                "(or consul://HOST:8500/PREFIX); to change a file, edit it; env values come "
                "from the environment of the service's process",
                code=2,
            )
        await target.set(key, value)
        return target.url
    finally:
        await config.stop()  # closes the sources it built; none was started


@config_app.command("set")
def set_(
    key: KeyArgument,
    value: Annotated[str, typer.Argument(metavar="VALUE", help="Text, stored as a leaf (JSON for a list).")],
    source: SourceOption = None,
) -> None:
    """Write VALUE at KEY in the last writable source (etcd, Consul): services watching see it."""
    with config_errors():
        urls = source_urls(source)
        where = run_async(_write(urls, key, value))
    err.print(f"set {escape(key or '(document)')} in {escape(where)}")  # not the value: it may be secret


async def _until_signalled(work: Awaitable[T]) -> T | None:
    """`work`'s result, or None once SIGINT or SIGTERM arrives (the work is then cancelled,
    so its `async with` blocks close what they opened): Ctrl-C ends a watch cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    finally:
        stopped.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            if stop.is_set():
                # stopping already: a second signal (Ctrl-C twice, or `timeout` signalling the
                # process and then its group) must not break the loop's shutdown into a traceback
                signal.signal(sig, signal.SIG_IGN)


async def _watch(config: Config, prefix: str, reveal: bool, as_json: bool) -> None:
    async with config, config.watch(prefix) as changes:
        where = ", ".join(s.url for s in config.sources)
        err.print(f"watching {escape(prefix or '(everything)')} in {escape(where)}; Ctrl-C to stop")
        async for change in changes:
            print(change_line(change, config, reveal=reveal, as_json=as_json), flush=True)


@config_app.command("watch")
def watch(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="Only keys under this dotted key (default: all).")
    ] = "",
    source: SourceOption = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per change.")] = False,
    reveal: RevealFlag = False,
    service: ServiceOption = None,
    secret: SecretOption = None,
) -> None:
    """Print each change as it comes (key: old -> new  (source)); Ctrl-C stops."""
    # the config's own reports (a rejected update, an outage and its end) go to stderr
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    with config_errors():
        config = open_config(source, service, secret)
        run_async(_until_signalled(_watch(config, prefix, reveal, json_)))
