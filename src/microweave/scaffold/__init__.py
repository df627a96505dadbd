"""Project templates: `microweave new` renders them into a new service project, and this
repository's own Dockerfile and Kubernetes files are rendered from the same templates (for the
greeter example), so the two never drift apart (`scripts/deploy-files --check` in the tests).

A template is a file under `templates/`, rendered by replacing tokens spelled `__KEY__` (plain
text, so Helm's `{{ }}` and the shell's `$VAR` in the files stay as they are). A path component
`dot-x` becomes `.x` (a dotfile would be left out of some packaging tools), and a trailing
`.tmpl` is dropped: Python templates carry it so this repository's linters, type checker and
test runner leave them alone (they are Python only once rendered; the tests lint the result).
A real dotfile or dot-directory under `templates/` is never a template (they are spelled
`dot-x`): it is what a tool left there (`.ruff_cache`, `.mypy_cache`), and is skipped.

    templates/deploy/         what ships a service: Dockerfile, .dockerignore, deploy/k8s, deploy/helm
    templates/project/base/   the rest of a new project: pyproject, README, a typed service, its tests
    templates/project/proto/  `--proto`: laid over base (same paths replace): a .proto and a servicer
"""

from __future__ import annotations

import keyword
import re
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

__all__ = [
    "TEMPLATES",
    "ScaffoldError",
    "name_problem",
    "new_project",
    "project_values",
    "render_project",
    "render_text",
    "render_tree",
    "write_tree",
]

#: a plain directory (the wheel installs it unzipped); scripts/deploy-files loads this module
#: by path, without importing microweave
TEMPLATES = Path(__file__).resolve().parent / "templates"

_TOKEN = re.compile(r"__([A-Z][A-Z0-9_]*[A-Z0-9])__")


class ScaffoldError(Exception):
    """A template names a token no value was given for (a bug of the template or its caller)."""


def render_text(text: str, values: Mapping[str, str], *, where: str = "template") -> str:
    """`text` with each `__KEY__` replaced by `values["KEY"]`; an unknown token is an error."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ScaffoldError(f"{where}: no value for __{key}__ (known: {', '.join(sorted(values))})")
        return values[key]

    return _TOKEN.sub(replace, text)


def _output_path(relative: PurePosixPath, values: Mapping[str, str]) -> PurePosixPath:
    parts = [render_text(part, values, where=str(relative)) for part in relative.parts]
    parts = ["." + part[4:] if part.startswith("dot-") else part for part in parts]
    parts[-1] = parts[-1].removesuffix(".tmpl")
    return PurePosixPath(*parts)


_Found = list[tuple[PurePosixPath, Path]]


def _walk(root: Path, prefix: PurePosixPath | None = None) -> _Found:
    prefix = prefix or PurePosixPath()
    found: _Found = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__" or entry.name.startswith("."):
            continue  # a tool's leftovers (templates spell their dotfiles `dot-x`)
        if entry.is_dir():
            found.extend(_walk(entry, prefix / entry.name))
        else:
            found.append((prefix / entry.name, entry))
    return found


def render_tree(
    kind: str, values: Mapping[str, str], *, templates: Path = TEMPLATES
) -> dict[PurePosixPath, str]:
    """Every template under `templates/<kind>/`, rendered: output path -> text."""
    root = templates / kind
    rendered = {}
    for relative, entry in _walk(root):
        text = entry.read_text(encoding="utf-8")
        rendered[_output_path(relative, values)] = render_text(text, values, where=f"{kind}/{relative}")
    return rendered


def write_tree(files: Mapping[PurePosixPath, str], dest: Path) -> list[Path]:
    """Write rendered files under `dest` (directories made as needed); the paths written."""
    written = []
    for relative, text in files.items():
        path = dest / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# -- a new project ------------------------------------------------------------------------

#: a DNS-1123 label that starts with a letter: it names the Kubernetes objects, the Helm chart,
#: the image and the registry entry; 40 leaves room for the suffixes Kubernetes adds to pod names
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")
NAME_RULE = (
    "lowercase letters, digits and '-', starting with a letter and not ending with '-', "
    "at most 40 characters (a DNS-1123 label: it names the Kubernetes objects and the chart)"
)
#: what the generated code imports besides the standard library: a package of that name would
#: shadow it
_TAKEN = frozenset({"microweave", "msgspec", "grpc", "google", "pytest", "tests"})


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a new service, or None if it can."""
    if _NAME.fullmatch(name) is None:
        return f"{name!r} is not a valid service name: use {NAME_RULE}"
    package = name.replace("-", "_")
    if keyword.iskeyword(package):
        clash = "is a Python keyword"
    elif package in sys.stdlib_module_names:
        clash = "would shadow the standard library's module of that name"
    elif package in _TAKEN:
        clash = "would shadow a package the service imports"
    else:
        return None
    return f"{name!r}: its Python package {package!r} {clash}; pick another name, such as {name}-svc"


def project_values(name: str) -> dict[str, str]:
    """The token values of a new project called `name` (already valid).

    The image copies `src` to /app and runs `microweave run PKG.service` there: a module path,
    found from the working directory (/app) as a package, so its relative imports and the
    generated protobuf modules import as they do under pytest and once installed.
    """
    problem = name_problem(name)
    if problem is not None:
        raise ScaffoldError(problem)
    package = name.replace("-", "_")
    return {
        "NAME": name,
        "PKG": package,
        "CLASS": "".join(part.capitalize() for part in name.split("-")),
        "VERSION": "0.1.0",
        "TARGET": f"{package}.service",
        "APP_DIR": "src",
        "EXTRAS": "",  # the project's own dependencies name microweave's extras
        "IMAGE": f"localhost/{name}:0.1.0",
    }


def render_project(name: str, *, proto: bool = False) -> dict[PurePosixPath, str]:
    """Every file of a new project: project/base, project/proto over it, and the deploy files."""
    values = project_values(name)
    files = render_tree("project/base", values)
    if proto:
        files.update(render_tree("project/proto", values))
    files.update(render_tree("deploy", values))
    return files


def new_project(name: str, dest: Path, *, proto: bool = False) -> list[Path]:
    """Write a new project called `name` into `dest` (which must not exist or be empty).

    The protobuf code of a `proto` project is generated afterwards (cli/new.py), since it
    needs grpcio-tools; this function uses the standard library only.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ScaffoldError(f"{dest} already exists and is not an empty directory")
    return write_tree(render_project(name, proto=proto), dest)
