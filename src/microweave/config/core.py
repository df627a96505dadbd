"""Config: the layers of its sources merged into one tree, kept current, read typed.

Every update goes through `_apply`, synchronously, so readers never see half of one: parse the
items that changed, rebuild that source's layer, merge all layers, interpolate `${VAR:default}`,
validate every bound model. Only what holds replaces the old tree, and the bound models,
watchers and hooks see the change. An item that does not parse, or whose value does not
validate, is rejected on its own: it keeps its last good value, one error line names the
source and the key, and the other keys of the same update still arrive.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from .._backends import environ, load_config_source
from .._tasks import cancel_all
from ..errors import ConfigurationError, MicroError
from ..registry.outage import Outage
from . import MISSING, Change, Item, Snapshot, Source
from .parse import ParseError, check_key, parse
from .secret import MASK, Secret, looks_secret, mask_credentials
from .tree import Unset, build, flatten, interpolate, leaves, merge
from .views import ConversionError, converter, secret_fields

__all__ = ["Bound", "Config", "ConfigWatch"]

log = logging.getLogger("microweave.config")
T = TypeVar("T")
Hook = Callable[[list[Change]], Awaitable[None] | None]


class _Layer:
    """What one source holds: its raw snapshot, the items parsed from it, their tree.

    `raw` is the last snapshot seen (the same one again is nothing new); `accepted` the items
    committed, key by key: what the next update is compared with, so a rejected key is tried
    again with the next update instead of being forgotten."""

    __slots__ = ("accepted", "loaded", "parsed", "preparsed", "raw", "rejected", "source", "tree")

    def __init__(self, source: Source) -> None:
        self.source = source
        self.raw: Snapshot = {}
        self.accepted: Snapshot = {}
        #: key -> the item last rejected there (None: its removal), so it is logged once
        self.rejected: dict[str, Item | None] = {}
        #: key -> (item, its value or ParseError), parsed on a thread just before `_apply`
        self.preparsed: dict[str, tuple[Item, Any]] = {}
        self.parsed: dict[str, Any] = {}
        self.tree: dict[str, Any] = {}
        self.loaded = False


#: past this many changed keys in one update that does not hold, the update is rejected as a
#: whole instead of key by key (each try rebuilds and validates the whole config)
_ONE_BY_ONE = 64
_GONE = object()
#: documents larger than this (bytes) are parsed on a thread, off the event loop
_BIG_DOCUMENT = 64 << 10


def _differs(old: Any, new: Any) -> bool:
    # NaN differs from itself: a NaN read again is not a change
    return bool(old != new) and not (old != old and new != new)


def _size(item: Item) -> int:
    return len(item.data) if isinstance(item.data, bytes | str) else 0


def _parse_all(items: Mapping[str, Item]) -> dict[str, tuple[Item, Any]]:
    out: dict[str, tuple[Item, Any]] = {}
    for key, item in items.items():
        try:
            out[key] = (item, parse(item, root=key == "", depth=check_key(key)))
        except ParseError as exc:
            out[key] = (item, exc)
    return out


def _copy(value: Any) -> Any:
    """A copy of a tree's mappings and lists (leaves are shared: a Secret is not copyable)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _name(key: str) -> str:
    """A key as an error names it: a peer's key of megabytes does not become a log line."""
    if not key:
        return "(document)"
    return _printable(key if len(key) <= 200 else f"{key[:200]}... ({len(key)} characters)")


def _printable(text: str) -> str:
    """`text` with control characters escaped: a newline or a terminal escape in a peer's key
    (or in a reason quoting a key inside its document) would forge log lines."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class _NotLoaded(dict[str, Any]):
    """The index of a config that has not been read yet: a read says so, instead of handing
    out defaults nobody configured (a free check: `get` does one dict lookup either way)."""

    def get(self, key: str, default: Any = None) -> Any:
        raise ConfigurationError(f"config key {key!r} is read before the config has started; start it first")

    def __contains__(self, key: object) -> bool:
        return bool(self.get(str(key)))


class Bound(Generic[T]):
    """A validated instance of a model, built from the config under `prefix`, replaced by a new
    instance (never mutated) when an update changes it and validates."""

    __slots__ = ("_convert", "_value", "model", "prefix")

    def __init__(self, model: type[T], prefix: str) -> None:
        self.model = model
        self.prefix = prefix
        self._convert = converter(model, prefix)
        self._value: T | None = None

    @property
    def value(self) -> T:
        if self._value is None:
            raise ConfigurationError(
                f"{self!r} is read before its config has started: read it in handlers, or after"
                " `await config.start()` (a Service starts its config before it listens)"
            )
        return self._value

    def __repr__(self) -> str:
        return f"<Bound {getattr(self.model, '__name__', self.model)} at {self.prefix or '(root)'!r}>"


class ConfigWatch:
    """Changes under a prefix, in order. A watcher that falls behind does not grow without
    bound: pending changes of the same key are folded into one (first old, last new), so it
    holds at most one entry per key and still ends at the current values."""

    def __init__(self, config: Config, prefix: str) -> None:
        self._config = config
        self.prefix = prefix
        self._pending: OrderedDict[str, Change] = OrderedDict()
        self._ready = asyncio.Event()
        self.closed = False

    def matches(self, key: str) -> bool:
        p = self.prefix
        return not p or key == p or key.startswith(p + ".")

    def offer(self, change: Change) -> None:
        earlier = self._pending.pop(change.key, None)
        if earlier is not None:
            change = Change(change.key, earlier.old, change.new, change.source)
            if change.old == change.new:
                return  # changed and changed back before anyone looked: nothing to say
        self._pending[change.key] = change
        self._ready.set()

    def __aiter__(self) -> ConfigWatch:
        return self

    async def __anext__(self) -> Change:
        while not self._pending:
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popitem(last=False)[1]

    async def aclose(self) -> None:
        self.closed = True
        self._ready.set()
        self._config._watches.discard(self)

    async def __aenter__(self) -> ConfigWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _OneAtATime:
    """An async hook run one call at a time: changes that arrive while it runs wait, folded
    per key (first old, last new), and are handed over in one call when it is done. A hook
    slower than the updates thus holds one task and one entry per key, not a task per update."""

    def __init__(
        self, hook: Callable[[list[Change]], Awaitable[None]], tasks: set[asyncio.Task[None]]
    ) -> None:
        self.hook = hook
        self._tasks = tasks
        self._pending: OrderedDict[str, Change] = OrderedDict()
        self._running: asyncio.Task[None] | None = None

    def __call__(self, changes: list[Change]) -> None:
        for change in changes:
            earlier = self._pending.pop(change.key, None)
            if earlier is not None:
                change = Change(change.key, earlier.old, change.new, change.source)
            self._pending[change.key] = change
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._run())
            self._tasks.add(self._running)

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = list(self._pending.values())
                self._pending.clear()
                try:
                    await self.hook(batch)
                except Exception:
                    log.exception("config change hook %r raised", self.hook)
        finally:
            if self._running is not None:
                self._tasks.discard(self._running)
            self._running = None


class Config:
    """Settings from `sources` (URLs or `Source` instances), later sources winning.

    `secrets` names keys (globs allowed, e.g. "db.*") whose values are masked wherever the
    config shows them, besides the fields of bound models typed `Secret` and keys named like
    secrets (password, token, api_key, ...). `interpolate=False` leaves `${...}` as written.
    """

    def __init__(
        self,
        sources: Sequence[str | Source] = (),
        *,
        secrets: Iterable[str] = (),
        interpolate: bool = True,
    ) -> None:
        if isinstance(sources, str | Source):
            sources = [sources]
        self._specs = list(sources)
        self._owned: list[Source] = []
        self.sources: tuple[Source, ...] = ()
        self._layers: list[_Layer] = []
        self._build_sources()  # now: a bad URL fails here, not at start
        self._secret_globs = list(secrets)
        self._secret_keys: set[str] = set()
        self._secret_cache: dict[str, bool] = {}
        self._interpolate = interpolate
        self._flat: dict[str, Any] = _NotLoaded()
        self._leaves: dict[str, Any] = {}
        self._bound: list[Bound[Any]] = []
        self._watches: set[ConfigWatch] = set()
        self._hooks: list[tuple[str, Hook]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self.started = False

    def _build_sources(self) -> None:
        """Sources from the specs; those built from URLs are this config's to close (and to
        build again, so a stopped config can start again)."""
        self._owned = []
        built: list[Source] = []
        for spec in self._specs:
            if isinstance(spec, Source):
                built.append(spec)
            else:
                source = load_config_source(spec)
                self._owned.append(source)
                built.append(source)
        self.sources = tuple(built)
        self._layers = [_Layer(s) for s in built]
        self._fresh = True  # not started with yet: a failed start closed what it built

    def __repr__(self) -> str:
        return f"<Config {', '.join(s.url for s in self.sources) or '(no sources)'}>"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Read every source in order and validate the bound models; then watch. A source
        that cannot be read (unless optional), a document that does not parse and a model
        that does not validate each stop the start with an error naming them."""
        if self.started:
            return
        if not self._fresh:
            self._build_sources()  # started before (even if it failed): fresh sources and layers
        self._fresh = False
        try:
            for layer in self._layers:
                try:
                    snapshot = await layer.source.read()
                except MicroError as exc:
                    if not layer.source.optional:
                        raise
                    log.warning(
                        "config %s is unreadable, empty until it answers: %s", layer.source.url, exc.detail
                    )
                    continue
                self._load(layer, snapshot)
            self._commit(self._candidate(), source="")
        except BaseException:
            await self._close_owned()
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow(layer)) for layer in self._layers]
        self.started = True

    def _load(self, layer: _Layer, snapshot: Snapshot) -> None:
        parsed = {}
        for key, item in snapshot.items():
            try:
                parsed[key] = parse(item, root=key == "", depth=check_key(key))
            except ParseError as exc:
                raise ConfigurationError(f"config {layer.source.url}: {_name(key)}: {exc}") from None
        layer.raw = layer.accepted = snapshot
        layer.parsed, layer.tree, layer.loaded = parsed, build(parsed.items()), True

    async def stop(self) -> None:
        """Stop watching; watchers and async hooks end; sources this config built are closed."""
        tasks, self._tasks = self._tasks, []
        await cancel_all(tasks)
        # async hooks still running end with the config (a stopped config outlives none of
        # its tasks); one that already raised was logged by _hook_done
        hooks, self._hook_tasks = list(self._hook_tasks), set()
        for hook in hooks:
            hook.cancel()
        await asyncio.gather(*hooks, return_exceptions=True)
        for watch in list(self._watches):
            await watch.aclose()
        await self._close_owned()
        self.started = False

    async def _close_owned(self) -> None:
        for source in self._owned:
            try:
                await source.aclose()
            except Exception:
                log.exception("closing config %s failed", source.url)

    async def __aenter__(self) -> Config:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _follow(self, layer: _Layer) -> None:
        """Keep one layer current: read it until it answers (an optional source that was
        down at start), then apply each snapshot its watch yields."""
        source = layer.source
        outage = Outage(f"config {source.url}", logger=log)
        while not layer.loaded:
            try:
                snapshot = await source.read()
            except MicroError as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.recovered()
            layer.loaded = True
            await self._apply_parsed(layer, snapshot)
        while True:
            changes = source.watch()
            if changes is None:
                return
            try:
                async for snapshot in changes:
                    await self._apply_parsed(layer, snapshot)
                    outage.recovered()
            except Exception as exc:  # a source's bug must not end the watch for good
                log.exception("config %s: its watch failed; restarting it", source.url)
                await asyncio.sleep(outage.failed(exc))
            else:
                return

    # -- updates ----------------------------------------------------------------------

    async def _apply_parsed(self, layer: _Layer, snapshot: Snapshot) -> None:
        """`_apply`, with large changed documents parsed on a thread first: a hostile or huge
        YAML document takes seconds to parse, and the event loop serves calls meanwhile."""
        big = {
            key: item
            for key, item in snapshot.items()
            if layer.accepted.get(key) != item and _size(item) > _BIG_DOCUMENT
        }
        if big:
            layer.preparsed = await asyncio.to_thread(_parse_all, big)
        try:
            self._apply(layer, snapshot)
        finally:
            layer.preparsed = {}

    def _apply(self, layer: _Layer, snapshot: Snapshot) -> None:
        """Commit what holds of a source's new snapshot, key by key.

        Keys that changed against what was last accepted are parsed; together they usually
        validate and are committed at once. If not, each is tried in turn on top of those that
        held, so one bad key (a typo in etcd) holds back only itself: the others arrive, and
        the bad one keeps its last good value until it is fixed, or until a later change makes
        it fit. A rejection is logged once per bad item, not again with every later update."""
        if snapshot == layer.raw:
            return  # seen already (a spurious yield, or the same update again)
        layer.raw = snapshot
        accepted = layer.accepted
        changed = sorted(k for k in snapshot.keys() | accepted.keys() if snapshot.get(k) != accepted.get(k))
        if not changed:
            return  # back to what was committed
        url = layer.source.url
        parsed: dict[str, Any] = {}
        for key in changed:
            if key not in snapshot:
                continue
            try:
                early = layer.preparsed.get(key)
                if early is not None and early[0] == snapshot[key]:
                    if isinstance(early[1], ParseError):
                        raise early[1]
                    parsed[key] = early[1]
                    continue
                parsed[key] = parse(snapshot[key], root=key == "", depth=check_key(key))
            except ParseError as exc:
                self._reject(layer, key, snapshot[key], str(exc))
        keys = [k for k in changed if k in parsed or k not in snapshot]
        if not keys:
            return
        candidate = self._attempt(layer, snapshot, keys, parsed)
        if isinstance(candidate, str):
            if len(keys) == 1 or len(keys) > _ONE_BY_ONE:
                for key in keys:
                    self._reject(layer, key, snapshot.get(key), candidate)
                return
            taken: list[str] = []
            for key in keys:
                attempt = self._attempt(layer, snapshot, [*taken, key], parsed)
                if isinstance(attempt, str):
                    self._reject(layer, key, snapshot.get(key), attempt)
                else:
                    taken.append(key)
                    candidate = attempt
            if not taken:
                return
            keys = taken
        assert not isinstance(candidate, str)
        self._accept(layer, snapshot, keys, parsed)
        self._commit(candidate, source=url)

    def _attempt(
        self, layer: _Layer, snapshot: Snapshot, keys: list[str], parsed: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Any]] | str:
        """The config with `keys` of the snapshot taken into the layer: the candidate, or why
        it does not hold. The layer is left as it was."""
        previous = (layer.parsed, layer.tree)
        trial = dict(layer.parsed)
        for key in keys:
            if key in parsed:
                trial[key] = parsed[key]
            else:
                trial.pop(key, None)
        layer.parsed, layer.tree = trial, build(trial.items())
        try:
            return self._candidate()
        except ConfigurationError as exc:
            return exc.detail
        finally:
            layer.parsed, layer.tree = previous

    def _accept(self, layer: _Layer, snapshot: Snapshot, keys: list[str], parsed: dict[str, Any]) -> None:
        accepted = dict(layer.accepted)
        for key in keys:
            if key in parsed:
                layer.parsed[key] = parsed[key]
                accepted[key] = snapshot[key]
            else:
                layer.parsed.pop(key, None)
                accepted.pop(key, None)
            layer.rejected.pop(key, None)
        layer.parsed = dict(layer.parsed)
        layer.tree = build(layer.parsed.items())
        layer.accepted = accepted

    def _reject(self, layer: _Layer, key: str, item: Item | None, why: str) -> None:
        """Log a rejected item once: the same item rejected again (it is retried with each
        update of its source) says nothing new."""
        if layer.rejected.get(key, _GONE) == item:
            return
        layer.rejected[key] = item
        what = f"the removal of {_name(key)}" if item is None else _name(key)
        log.error(
            "config %s: rejected %s: %s; keeping the last good value", layer.source.url, what, _printable(why)
        )

    def _candidate(self) -> tuple[dict[str, Any], list[Any]]:
        """The merged, interpolated tree and every bound model's new instance, or
        ConfigurationError saying what does not hold."""
        tree: dict[str, Any] = {}
        try:
            for layer in self._layers:
                # only sources this host controls may name its environment: a writer of a
                # shared etcd or Consul prefix must not read ${AWS_SECRET_ACCESS_KEY} out
                # through a value that a handler echoes
                own = self._interpolate and layer.source.interpolates
                tree = merge(tree, interpolate(layer.tree, environ().get) if own else layer.tree)
        except Unset as exc:
            if self.is_secret(exc.key):  # the ${...} may be part of the secret itself
                raise ConfigurationError(
                    f"{exc.key}: names a variable that is not set and has no default"
                ) from None
            raise ConfigurationError(str(exc)) from None
        flat = flatten(tree)
        instances = []
        for bound in self._bound:
            instances.append(self._validate(bound, flat))
        return flat, instances

    def _validate(self, bound: Bound[Any], flat: Mapping[str, Any]) -> Any:
        data = flat.get(bound.prefix, {})
        try:
            return bound._convert(data)
        except ConversionError as exc:
            raise ConfigurationError(f"{bound!r} does not validate: {exc}") from None

    def _commit(self, candidate: tuple[dict[str, Any], list[Any]], *, source: str) -> None:
        flat, instances = candidate
        before = self._leaves
        self._flat = flat
        self._leaves = leaves(flat)
        for bound, instance in zip(self._bound, instances, strict=True):
            if bound._value is None or instance != bound._value:  # unchanged: keep the instance
                bound._value = instance
        if not source:
            return  # the first load: nothing changed for anyone yet
        changes = [
            Change(key, self._shown(key, before.get(key, MISSING)), self._shown(key, new), source)
            for key, new in self._leaves.items()
            if _differs(before.get(key, MISSING), new)
        ]
        changes += [
            Change(key, self._shown(key, old), MISSING, source)
            for key, old in before.items()
            if key not in self._leaves
        ]
        if changes:
            self._notify(changes)

    def _shown(self, key: str, value: Any) -> Any:
        if value is MISSING or isinstance(value, Secret):
            return value
        if self.is_secret(key):
            return Secret(value if isinstance(value, str) else str(value))
        if isinstance(value, list):  # a leaf, but its mappings may name secrets (users[].token)
            return [self._shown(key, v) for v in value]
        if isinstance(value, dict):
            return {k: self._shown(f"{key}.{k}", v) for k, v in value.items()}
        return value

    def _notify(self, changes: list[Change]) -> None:
        for watch in self._watches:
            for change in changes:
                if watch.matches(change.key):
                    watch.offer(change)
        for prefix, hook in list(self._hooks):  # a hook may remove itself (or another)
            mine = [c for c in changes if not prefix or c.key == prefix or c.key.startswith(prefix + ".")]
            if not mine:
                continue
            try:
                result = hook(mine)
            except Exception:
                log.exception("config change hook %r raised", hook)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_done)

    def _hook_done(self, task: asyncio.Future[None]) -> None:
        self._hook_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("config change hook raised", exc_info=task.exception())

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str, type: Any = None, default: Any = None) -> Any:
        """The value at a dotted key (a mapping for a key with keys under it), converted to
        `type` when given ("5432" from the environment reads as 5432); `default` when the key
        is not there. A value that does not convert raises ConfigurationError."""
        value = self._flat.get(key, MISSING)
        if value is MISSING:
            return default
        if type is None or value.__class__ is type:
            return value
        if type is Secret:
            return value if isinstance(value, Secret) else Secret(str(value))
        try:
            return converter(type, key)(value)
        except ConversionError as exc:
            raise ConfigurationError(f"config key {key}: {exc}") from None

    def __contains__(self, key: str) -> bool:
        return key in self._flat

    def bind(self, model: type[T], prefix: str = "") -> Bound[T]:
        """A typed view of the subtree at `prefix`: `.value` is an instance of `model`
        (pydantic, msgspec Struct, dataclass), swapped for a new one on every update that
        changes it and validates. Fields typed `Secret` are masked everywhere."""
        bound = Bound(model, prefix)
        self._secret_keys |= secret_fields(model, prefix)
        self._secret_cache.clear()
        if self.started:
            bound._value = self._validate(bound, self._flat)  # raises: not bound
        self._bound.append(bound)
        return bound

    def watch(self, prefix: str = "") -> ConfigWatch:
        """`async for change in config.watch("db")`: each change under the prefix, from now."""
        watch = ConfigWatch(self, prefix)
        self._watches.add(watch)
        return watch

    def on_change(self, hook: Hook, prefix: str = "") -> Callable[[], None]:
        """Call `hook(changes)` after each update that changes keys under `prefix`. An async
        hook runs as a task, one call at a time: changes that come meanwhile are handed over
        together when it returns. Returns a function that removes the hook."""
        if inspect.iscoroutinefunction(hook):
            hook = _OneAtATime(hook, self._hook_tasks)
        entry = (prefix, hook)
        self._hooks.append(entry)
        return lambda: self._hooks.remove(entry) if entry in self._hooks else None

    @property
    def secrets(self) -> tuple[str, ...]:
        """The keys and globs declared secret: `secrets=` and bound models' `Secret` fields
        (names that look like secrets are masked besides these)."""
        return (*self._secret_globs, *sorted(self._secret_keys))

    def is_secret(self, key: str) -> bool:
        """Whether the key's value is masked: a `Secret` field of a bound model, a key given
        in `secrets=`, or a key named like a secret; and anything under such a key."""
        found = self._secret_cache.get(key)
        if found is None:
            parts = key.split(".")
            found = any(self._one_secret(".".join(parts[: i + 1])) for i in range(len(parts)))
            if len(self._secret_cache) < 100_000:
                self._secret_cache[key] = found
        return found

    def _one_secret(self, key: str) -> bool:
        return (
            key in self._secret_keys
            or looks_secret(key)
            or any(fnmatch.fnmatchcase(key, glob) for glob in self._secret_globs)
        )

    def dump(self, *, reveal: bool = False) -> dict[str, Any]:
        """The merged settings as one tree; secret values, and the passwords of URLs in any
        value, masked unless `reveal`."""
        tree: dict[str, Any] = self._flat.get("", {})
        if reveal:
            copied: dict[str, Any] = _copy(tree)  # the caller's to change: not the live tree
            return copied

        def mask(prefix: str, node: Any) -> Any:
            if isinstance(node, list):  # an element's keys are named as the list's own
                return [mask(prefix, value) for value in node]
            if isinstance(node, str):
                return mask_credentials(node)
            if not isinstance(node, dict):
                return node
            out: dict[str, Any] = {}
            for key, value in node.items():
                path = f"{prefix}.{key}" if prefix else key
                out[key] = MASK if self.is_secret(path) else mask(path, value)
            return out

        masked: dict[str, Any] = mask("", tree)
        return masked

    # -- writes -----------------------------------------------------------------------

    async def set(self, key: str, value: str, *, source: str | None = None) -> None:
        """Write `value` at `key` in the source whose URL is `source`, else in the last
        writable one; the change comes back through its watch like anyone else's."""
        await self._writable(source).set(key, value)

    async def delete(self, key: str, *, source: str | None = None) -> None:
        await self._writable(source).delete(key)

    def _writable(self, url: str | None) -> Source:
        if url is not None:
            for candidate in self.sources:
                if candidate.url == url:
                    return candidate
            raise ConfigurationError(f"no config source {url}; the sources are: {self!r}")
        for candidate in reversed(self.sources):
            if candidate.writable:
                return candidate
        raise ConfigurationError(
            f"none of the config sources can be written ({', '.join(s.url for s in self.sources)});"
            " add an etcd:// or consul:// source"
        )
