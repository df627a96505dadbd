"""Project templates: `microweave new` renders them into a new service project, and this
repository's own Dockerfile and Kubernetes files are rendered from the same templates (for the
greeter example), so the two never drift apart (`scripts/deploy-files --check` in the tests).

A template is a file under `templates/`, rendered by replacing tokens spelled `__KEY__` (plain
text, so Helm's `{{ }}` and the shell's `$VAR` in the files stay as they are). A path component
`dot-x` becomes `.x` (a dotfile would be left out of some packaging tools).

    templates/deploy/    what ships a service: Dockerfile, .dockerignore, deploy/k8s, deploy/helm
    templates/project/   the rest of a new project: pyproject, README, the service, its tests
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

__all__ = ["TEMPLATES", "ScaffoldError", "render_text", "render_tree", "write_tree"]

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
    return PurePosixPath(*("." + part[4:] if part.startswith("dot-") else part for part in parts))


_Found = list[tuple[PurePosixPath, Path]]


def _walk(root: Path, prefix: PurePosixPath | None = None) -> _Found:
    prefix = prefix or PurePosixPath()
    found: _Found = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            found.extend(_walk(entry, prefix / entry.name))
        else:
            found.append((prefix / entry.name, entry))
    return found


def render_tree(kind: str, values: Mapping[str, str]) -> dict[PurePosixPath, str]:
    """Every template under `templates/<kind>/`, rendered: output path -> text."""
    root = TEMPLATES / kind
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
