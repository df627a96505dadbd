"""Config sources for the config conformance suite that need no engine: memory and file.

Each factory takes the pytest request and yields a fresh, empty, writable Source of its own,
as the engines' factories (`@config_backend` in tests/engines/) do. A file is not writable by
design (the config reads it; people and deploy tools write it), so the file factory yields a
`WrittenFile`: a FileSource whose `set` and `delete` write the file, as a deploy would (a new
file renamed over the old one), from the keys set so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from microweave.config import Item, Source
from microweave.config.parse import ParseError, parse
from microweave.config.sources.file import FileSource
from microweave.config.sources.memory import MemorySource
from microweave.config.tree import build

__all__ = ["CONFIG_KIT", "WrittenFile"]

#: how often the file factory's source looks for a change (seconds): short, so tests are
FILE_INTERVAL = 0.05


class WrittenFile(FileSource):
    """A YAML file rewritten whole on each set/delete. The keys set are laid out the way an
    etcd or Consul source lays out its keys (the "" key is a YAML document at the root, a
    dotted key is a "text" leaf, deeper keys over the document), so the same test means the
    same thing here; a key whose text does not parse makes the whole file that text (a file
    holds one document: one bad part is a bad file)."""

    writable = True
    #: an error about any key names the file's one document, "(document)"
    one_document = True

    def __init__(self, path: Path) -> None:
        path.write_text("{}\n")
        super().__init__(path, interval=FILE_INTERVAL)
        self._texts: dict[str, str] = {}

    async def set(self, key: str, value: str) -> None:
        self._texts[key] = value
        self._write()

    async def delete(self, key: str) -> None:
        if self._texts.pop(key, None) is not None:
            self._write()

    def _write(self) -> None:
        parsed: dict[str, Any] = {}
        body = None
        for key, text in self._texts.items():
            try:
                parsed[key] = parse(Item(text, "yaml" if key == "" else "text"), root=key == "")
            except ParseError:
                body = text  # the bad text is the file
                break
        if body is None:
            body = json.dumps(build(parsed.items()))  # JSON is YAML
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(body)
        os.replace(tmp, self.path)  # a new inode: seen at the next check, never half-written


@contextlib.asynccontextmanager
async def memory_config(request: pytest.FixtureRequest) -> AsyncIterator[Source]:
    yield MemorySource(name=f"conformance-{uuid.uuid4().hex[:8]}")


@contextlib.asynccontextmanager
async def file_config(request: pytest.FixtureRequest) -> AsyncIterator[Source]:
    tmp: Path = request.getfixturevalue("tmp_path")
    source = WrittenFile(tmp / "settings.yaml")
    try:
        yield source
    finally:
        await source.aclose()


CONFIG_KIT = {"memory": memory_config, "file": file_config}
