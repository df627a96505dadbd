"""`microweave new NAME [--proto]`: scaffold a service project that passes its own tests and
linters as generated, with its Dockerfile, Kubernetes manifests and Helm chart."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..scaffold import ScaffoldError, name_problem, new_project, project_values
from .output import CliError, err, reporting_errors

__all__ = ["new"]

_PROTOC_HINT = 'pip install grpcio-tools (from a microweave checkout: pip install -e ".[dev]")'


def _check_name(name: str) -> str:
    problem = name_problem(name) or _installed_clash(name)
    if problem is not None:
        raise typer.BadParameter(problem)
    return name


def _installed_clash(name: str) -> str | None:
    """Why `name` cannot be used here: its package is a module already installed where
    microweave runs (typer, rich, yaml, ...: one of microweave's own dependencies, or the
    user's). Whichever comes first on the path would hide the other: `microweave run
    PKG.service` would find no `service` in it, or microweave would import the project."""
    package = name.replace("-", "_")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a broken installed module: it still takes the name
        return f"{name!r}: a module {package!r} is already installed here; pick another name"
    if spec is None:
        return None
    return (
        f"{name!r}: its Python package {package!r} would clash with the module of that name "
        f"installed here (python -c 'import {package}' finds it); pick another name, such as {name}-svc"
    )


def _generate_proto(project: Path, package: str) -> list[Path]:
    """The messages (`_pb2.py`, `.pyi`) and the servicer base (`_pb2_grpc.py`) of the project's
    .proto, made now with grpcio-tools so the project imports and type-checks as generated."""
    protoc = importlib.import_module("grpc_tools.protoc")  # optional, and untyped

    src = project / "src"
    proto = src / package / f"{package}.proto"
    include = Path(str(protoc.__file__)).resolve().parent / "_proto"  # google/protobuf/*.proto
    args = [f"-I{src}", f"-I{include}", f"--python_out={src}", f"--pyi_out={src}"]
    code: int = protoc.main(["grpc_tools.protoc", *args, f"--grpc_python_out={src}", str(proto)])
    if code != 0:
        raise CliError(f"protoc failed on {proto} (exit {code})", hint="its message is above")
    stem = src / package / f"{package}_pb2"
    generated = [stem.with_suffix(".py"), stem.with_suffix(".pyi"), stem.with_name(f"{stem.name}_grpc.py")]
    _pin_runtimes(project / "pyproject.toml", generated[0], generated[2])
    return generated


_PROTOBUF_NEEDED = re.compile(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),")
_GRPC_NEEDED = re.compile(r"GRPC_GENERATED_VERSION = '([0-9.]+)'")
_DEPENDENCIES = 'dependencies = ["microweave[etcd,consul,nats]>=0.1"'


def _pin_runtimes(pyproject: Path, pb2: Path, pb2_grpc: Path) -> None:
    """The generated code refuses older protobuf and grpcio runtimes than the grpcio-tools that
    made it: the project depends on those versions or newer, so pip never installs older ones."""
    protobuf = _PROTOBUF_NEEDED.search(pb2.read_text(encoding="utf-8"))
    grpcio = _GRPC_NEEDED.search(pb2_grpc.read_text(encoding="utf-8"))
    text = pyproject.read_text(encoding="utf-8")
    if protobuf is None or grpcio is None or _DEPENDENCIES not in text:
        return  # a grpcio-tools that writes no version check needs no pin
    pins = f', "grpcio>={grpcio.group(1)}", "protobuf>={".".join(protobuf.groups())}"'
    pyproject.write_text(text.replace(_DEPENDENCIES, _DEPENDENCIES + pins, 1), encoding="utf-8")


def _write(name: str, dest: Path, *, proto: bool) -> list[Path]:
    """The project, written into a sibling temporary directory and renamed into place, so a
    failure (protoc, a full disk) leaves no half-made project behind to refuse the next try."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=dest.parent) as tmp:
        staging = Path(tmp) / name
        written = new_project(name, staging, proto=proto)
        if proto:
            written += _generate_proto(staging, project_values(name)["PKG"])
        if dest.exists():
            dest.rmdir()  # empty (new() checked); rename cannot replace a directory
        shutil.move(staging, dest)
    return [dest / path.relative_to(staging) for path in written]


def new(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME",
            help="The service's name: lowercase letters, digits and '-', starting with a letter "
            "(its Python package replaces '-' with '_').",
            callback=_check_name,
            show_default=False,
        ),
    ],
    proto: Annotated[
        bool,
        typer.Option("--proto", help="A .proto and a grpcio servicer instead of typed msgspec handlers."),
    ] = False,
    directory: Annotated[
        Path,
        typer.Option("--dir", metavar="PATH", help="Where to create the NAME directory.", file_okay=False),
    ] = Path("."),
) -> None:
    """Create a service project: the service, its tests, a Dockerfile, Kubernetes manifests and a
    Helm chart, passing its own tests and linters as generated."""
    with reporting_errors():
        dest = directory / name
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise CliError(
                f"{dest} already exists and is {'not empty' if dest.is_dir() else 'a file'}",
                hint="pick another NAME or --dir, or remove it first",
                code=2,
            )
        if proto and importlib.util.find_spec("grpc_tools") is None:
            raise CliError("--proto generates the protobuf code with grpcio-tools, which is not installed",
                           hint=_PROTOC_HINT)  # fmt: skip
        try:
            written = _write(name, dest, proto=proto)
        except ScaffoldError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:  # the errno and the staging directory's name tell a user little
            raise CliError(
                f"could not create {dest}: {exc.strerror or exc}",
                hint=f"give --dir a directory you can write to (this one: {dest.parent})",
            ) from None
        _report(name, dest, written)


def _report(name: str, dest: Path, written: list[Path]) -> None:
    values = project_values(name)
    err.print(f"[bold green]created[/] {escape(str(dest))} ({len(written)} files):")
    for path in sorted(written):
        err.print(f"  {escape(str(path.relative_to(dest)))}")
    next_steps = (
        f"  cd {dest}\n"
        "  python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'\n"
        "  pytest && ruff check . && mypy\n"
        f"  microweave run {values['TARGET']}\n"
        f"  podman build --format docker -t {values['IMAGE']} .\n"
    )
    more = "README.md has the rest: calls, the image, Kubernetes, Helm."
    err.print(f"\n[bold]next:[/]\n{escape(next_steps)}{more}")
