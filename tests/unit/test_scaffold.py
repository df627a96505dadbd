"""microweave.scaffold: names, token values and what a new project is made of (rendering only;
tests/integration/test_new.py runs the generated projects' own tests and linters)."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from microweave.scaffold import (
    TEMPLATES,
    ScaffoldError,
    name_problem,
    new_project,
    project_values,
    render_project,
    render_text,
    render_tree,
)

TOKEN = re.compile(r"__[A-Z][A-Z0-9_]*[A-Z0-9]__")


@pytest.mark.parametrize("name", ["x", "hello", "hello-svc", "a1", "a-1-b", "a" * 40, "orders2"])
def test_valid_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "not a valid service name"),
        ("Hello", "not a valid service name"),
        ("1abc", "not a valid service name"),
        ("-abc", "not a valid service name"),
        ("abc-", "not a valid service name"),
        ("a_b", "not a valid service name"),
        ("a.b", "not a valid service name"),
        ("a b", "not a valid service name"),
        ("a" * 41, "not a valid service name"),
        ("héllo", "not a valid service name"),
        ("abc\n", "not a valid service name"),
        ("class", "Python keyword"),
        ("email", "standard library"),
        ("asyncio", "standard library"),
        ("microweave", "package the service imports"),
        ("msgspec", "package the service imports"),
        ("tests", "package the service imports"),
    ],
)
def test_invalid_names_say_why(name: str, why: str) -> None:
    problem = name_problem(name)
    assert problem is not None and why in problem
    with pytest.raises(ScaffoldError, match=re.escape(why)):
        project_values(name)


def test_values_of_a_project() -> None:
    assert project_values("hello-svc") == {
        "NAME": "hello-svc",
        "PKG": "hello_svc",
        "CLASS": "HelloSvc",
        "VERSION": "0.1.0",
        "TARGET": "hello_svc.service",
        "APP_DIR": "src",
        "EXTRAS": "",
        "IMAGE": "localhost/hello-svc:0.1.0",
    }
    assert project_values("a-1")["CLASS"] == "A1"
    assert project_values("a-1")["CLASS"].isidentifier()


def test_an_unknown_token_is_an_error() -> None:
    assert render_text("__NAME__ and __init__ and $HOME {{ .Values.x }}", {"NAME": "n"}) == (
        "n and __init__ and $HOME {{ .Values.x }}"
    )
    with pytest.raises(ScaffoldError, match="__PKG__"):
        render_text("import __PKG__", {"NAME": "n"})


def test_typed_project_files() -> None:
    files = render_project("hello-svc")
    expected = {
        "pyproject.toml",
        "README.md",
        ".gitignore",
        "src/hello_svc/__init__.py",
        "src/hello_svc/service.py",
        "tests/test_service.py",
    }
    assert expected <= {str(p) for p in files}
    assert not any(str(p).endswith(".proto") for p in files)
    assert 'Service("hello-svc", version="0.1.0")' in files[PurePosixPath("src/hello_svc/service.py")]
    assert "class HelloSvc:" in files[PurePosixPath("src/hello_svc/service.py")]


def test_proto_project_lays_its_files_over_the_typed_ones() -> None:
    files = render_project("hello-svc", proto=True)
    service = files[PurePosixPath("src/hello_svc/service.py")]
    assert "class Servicer(rpc.HelloSvcServicer):" in service
    assert "service HelloSvc {" in files[PurePosixPath("src/hello_svc/hello_svc.proto")]
    assert "package hello_svc;" in files[PurePosixPath("src/hello_svc/hello_svc.proto")]
    pyproject = files[PurePosixPath("pyproject.toml")]
    assert "grpcio-tools" in pyproject and '"*_pb2.py"' in pyproject
    assert '"hello_svc.hello_svc_pb2_grpc"' in pyproject


@pytest.mark.parametrize("proto", [False, True])
def test_every_token_is_rendered_and_no_template_suffix_is_left(proto: bool) -> None:
    for path, text in render_project("hello-svc", proto=proto).items():
        assert not TOKEN.search(str(path)) and not TOKEN.search(text), path
        assert not path.name.endswith(".tmpl") and not path.name.startswith("dot-"), path


def test_the_deploy_files_come_with_the_project_values() -> None:
    values = project_values("hello-svc")
    files = render_project("hello-svc")
    deploy = render_tree("deploy", values) if (TEMPLATES / "deploy").is_dir() else {}
    for path, text in deploy.items():
        assert files[path] == text
    if PurePosixPath("Dockerfile") in deploy:
        assert 'CMD ["hello_svc.service"]' in deploy[PurePosixPath("Dockerfile")]


def test_python_templates_carry_the_tmpl_suffix() -> None:
    """So this repository's ruff, mypy and pytest never take a template for its own code."""
    root = TEMPLATES / "project"
    assert not list(root.rglob("*.py")) and not list(root.rglob("pyproject.toml"))
    assert list(root.rglob("*.py.tmpl"))


def test_new_project_writes_into_a_new_or_empty_directory_only(tmp_path: Path) -> None:
    written = new_project("hello-svc", tmp_path / "a")
    assert (tmp_path / "a/src/hello_svc/service.py") in written
    assert all(path.is_file() for path in written)
    (tmp_path / "b").mkdir()
    assert new_project("hello-svc", tmp_path / "b")
    with pytest.raises(ScaffoldError, match="not an empty directory"):
        new_project("hello-svc", tmp_path / "a")
    (tmp_path / "file").write_text("")
    with pytest.raises(ScaffoldError, match="not an empty directory"):
        new_project("hello-svc", tmp_path / "file")


@pytest.mark.parametrize("proto", [False, True])
def test_the_pyproject_is_valid_metadata(proto: bool) -> None:
    from packaging.requirements import Requirement  # pytest's own dependency
    from packaging.version import Version

    pyproject = tomllib.loads(render_project("hello-svc", proto=proto)[PurePosixPath("pyproject.toml")])
    project = pyproject["project"]
    assert project["name"] == "hello-svc" and Version(project["version"]) == Version("0.1.0")
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    assert {"etcd", "consul", "nats"} <= requirements[0].extras and requirements[0].name == "microweave"
    assert pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/hello_svc"]
    assert pyproject["tool"]["pytest"]["ini_options"]["pythonpath"] == ["src"]
    assert pyproject["tool"]["mypy"]["strict"] is True


#: what a tool or an editor leaves in a directory it ran in
STRAYS = {".ruff_cache", ".mypy_cache", ".DS_Store"}


def test_what_tools_leave_among_the_templates_is_not_rendered(tmp_path: Path) -> None:
    # ruff, mypy or an editor run inside templates/ leave caches there: a new project got them
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES / "project" / "base", templates / "base")
    (templates / "base" / ".ruff_cache").mkdir(exist_ok=True)
    (templates / "base" / ".ruff_cache" / "CACHEDIR.TAG").write_text("Signature: x\n")
    (templates / "base" / "src" / "__PKG__" / ".mypy_cache").mkdir()
    (templates / "base" / "src" / "__PKG__" / ".mypy_cache" / "3.11.json").write_text("{}")
    (templates / "base" / ".DS_Store").write_text("")
    rendered = render_tree("base", project_values("hello-svc"), templates=templates)
    assert PurePosixPath(".gitignore") in rendered  # dot-gitignore: a template's dotfile
    assert PurePosixPath("src/hello_svc/service.py") in rendered
    strays = [path for path in rendered if any(part in STRAYS for part in path.parts)]
    assert strays == []


@pytest.mark.parametrize("proto", [False, True])
def test_the_readme_says_what_to_do_when_pip_finds_no_microweave(proto: bool) -> None:
    # its first command failed with "No matching distribution found for microweave" on an
    # index without microweave, and the README only told how to get past that for the image
    readme = render_project("hello-svc", proto=proto)[PurePosixPath("README.md")]
    develop = readme.split("## Develop", 1)[1].split("\n## ", 1)[0]
    assert "pip install '/path/to/microweave[etcd,consul,nats]'" in develop
