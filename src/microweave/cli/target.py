"""Finding the Service a user means by `path/to/file.py`, `pkg.module` or either with `:attr`.

A file is imported with its own directory on sys.path (as `python file.py` would run it), so
modules next to it (generated `*_pb2.py`, helpers) import the way they do when run directly;
a module name is looked up from the current directory first, as uvicorn and flask do.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from rich.traceback import Traceback

from ..errors import ConfigurationError
from ..service import Service
from .output import CliError, err

__all__ = ["load_service", "split_target"]

_HERE = str(Path(__file__).resolve().parent)


def split_target(target: str) -> tuple[str, str | None]:
    """`a/b.py:svc` → (`a/b.py`, `svc`); `pkg.mod` → (`pkg.mod`, None)."""
    where, sep, attr = target.rpartition(":")
    if sep and where and attr.isidentifier():
        return where, attr
    return target, None


def _is_file(where: str) -> bool:
    return where.endswith(".py") or os.sep in where or "/" in where


def _module_name(path: Path) -> str:
    name = path.stem
    if name.isidentifier() and name not in sys.modules:
        return name
    return f"_microweave_target_{abs(hash(str(path)))}"


def _import_file(where: str) -> ModuleType:
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        hint = "give a path to a .py file, or a module name such as `myapp.service:service`"
        raise CliError(f"no such file: {where}", hint=hint, code=2)
    sys.path.insert(0, str(path.parent))
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot import {where} as Python code", code=2)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(where: str) -> ModuleType:
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        # the target itself is missing (not one of its own imports, which the traceback shows)
        if exc.name and (where == exc.name or where.startswith(f"{exc.name}.")):
            hint = "run from the directory that contains it, or give the path: microweave run path/to/file.py"
            raise CliError(f"no module named {where!r}", hint=hint, code=2) from None
        raise


def _user_traceback(exc: BaseException) -> Traceback:
    """The traceback from the user's code on: import machinery and our frames are noise."""
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename.startswith("<frozen")
        or tb.tb_frame.f_code.co_filename.startswith(_HERE)
    ):
        tb = tb.tb_next
    return Traceback.from_exception(type(exc), exc, tb, show_locals=False)


def _import(where: str) -> ModuleType:
    try:
        return _import_file(where) if _is_file(where) else _import_module(where)
    except CliError:
        raise
    except ConfigurationError as exc:
        # a setting the message names (MICRO_ADMIN_ADDRESS=bogus): no bug to find in a traceback
        raise CliError(
            f"{where}: {exc.detail}",
            hint="fix the setting it names: an argument in the code, or a MICRO_* environment variable",
            code=2,
        ) from None
    except Exception as exc:
        # A bug in the user's module: here the traceback is the useful part, trimmed to their code.
        err.print(_user_traceback(exc))
        raise CliError(
            f"importing {where} failed: {type(exc).__name__}: {exc}",
            hint="fix the error above; the traceback starts in your code",
        ) from None


def load_service(target: str) -> Service:
    where, attr = split_target(target)
    module = _import(where)
    if attr is not None:
        if not hasattr(module, attr):
            raise CliError(f"{where} has no attribute {attr!r}", hint=_choices(module, where), code=2)
        found = getattr(module, attr)
        if not isinstance(found, Service):
            raise CliError(
                f"{where}:{attr} is a {type(found).__name__}, not a microweave.Service",
                hint=_choices(module, where),
                code=2,
            )
        return found
    services = _services(module)
    if not services:
        raise CliError(
            f"no microweave.Service found in {where}",
            hint='create one at module level: service = Service("name")',
            code=2,
        )
    if len(services) > 1:
        names = ", ".join(services)
        raise CliError(
            f"{where} holds several services ({names})",
            hint=f"pick one: microweave run {where}:{next(iter(services))}",
            code=2,
        )
    return next(iter(services.values()))


def _services(module: ModuleType) -> dict[str, Service]:
    """Module-level Services by attribute name, each object once (aliases are not a choice)."""
    seen: set[int] = set()
    out: dict[str, Service] = {}
    for name, value in vars(module).items():
        if isinstance(value, Service) and id(value) not in seen:
            seen.add(id(value))
            out[name] = value
    return out


def _choices(module: ModuleType, where: str) -> str:
    services = _services(module)
    if not services:
        return f"{where} holds no microweave.Service"
    return "services in it: " + ", ".join(f"{where}:{name}" for name in services)
