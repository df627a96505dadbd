"""`microweave new`: the generated project passes its own tests and linters as generated, and
each of them fails when the project is broken (so passing means something).

Everything runs as a user would: the `microweave` console script of this virtualenv generates
the project, then this virtualenv's pytest, ruff and mypy run in the project's directory with
its own configuration (its pyproject.toml), without installing it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from cli_helpers import REPO, assert_clean, cli, registry_env, wait_for_service
from engines.podman import HOST_LOOPBACK, Containers, Podman, build_image

pytestmark = pytest.mark.timeout(300)

BIN = Path(sys.executable).parent
MICROWEAVE = str(BIN / "microweave")

#: the longest name allowed: its package and class names stretch every templated line
LONGEST = "abcdefghij-klmnopqrst-uvwxyzabcd-efghijk"
assert len(LONGEST) == 40

#: (variant, name): both kinds of project, with a usual name and with the extremes
PROJECTS = [("typed", "hello-svc"), ("proto", "hello-svc"), ("typed", LONGEST), ("proto", "x")]

NEW_IMAGE = "localhost/microweave-new-hello-svc:test"


def inside(url: str) -> str:
    """The registry URL as a container reaches it (the host's loopback is 10.0.2.2 there)."""
    return url.replace("127.0.0.1", HOST_LOOPBACK, 1)


def _env() -> dict[str, str]:
    """This environment without what would steer the tools: no MICRO_* settings, no pytest
    options from the outer run, no PYTHONPATH (the project's pyproject puts src on the path)."""
    drop = ("MICRO_", "PYTEST_", "PYTHONPATH", "MYPY", "RUFF_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | {"NO_COLOR": "1"}


def run(args: list[str], cwd: Path, *, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def new(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([MICROWEAVE, "new", *args], cwd)


def tool(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m <tool> ...` with this virtualenv's python, in the project's directory."""
    return run([sys.executable, "-m", *args], project)


def generate(parent: Path, variant: str, name: str) -> Path:
    made = new(name, *(["--proto"] if variant == "proto" else []), cwd=parent)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "next:" in made.stderr and "pytest" in made.stderr
    return parent / name


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Each of PROJECTS generated once for the module (tests that break one work on a copy)."""
    made = {}
    for variant, name in PROJECTS:
        made[variant, name] = generate(tmp_path_factory.mktemp(variant), variant, name)
    return made


@pytest.fixture
def copy_of(projects: dict[tuple[str, str], Path], tmp_path: Path) -> Callable[[str], Path]:
    """A copy of the hello-svc project of a variant, to break."""

    def copy(variant: str) -> Path:
        return Path(shutil.copytree(projects[variant, "hello-svc"], tmp_path / variant))

    return copy


def passed(result: subprocess.CompletedProcess[str]) -> int:
    """How many tests pytest's summary line says passed."""
    found = re.search(r"(\d+) passed", result.stdout)
    return int(found.group(1)) if found else 0


# -- what the command writes ----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["typed", "proto"])
def test_the_project_has_its_service_tests_and_shipping_files(
    projects: dict[tuple[str, str], Path], variant: str
) -> None:
    project = projects[variant, "hello-svc"]
    files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
    assert {
        "pyproject.toml",
        "README.md",
        ".gitignore",
        "src/hello_svc/__init__.py",
        "src/hello_svc/service.py",
        "tests/test_service.py",
    } <= files
    if variant == "proto":
        generated = {f"src/hello_svc/hello_svc{suffix}" for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")}
        assert {"src/hello_svc/hello_svc.proto", *generated} <= files
    dockerfile = (project / "Dockerfile").read_text()
    assert 'CMD ["hello_svc.service"]' in dockerfile
    assert "COPY src /app" in dockerfile
    assert not [f for f in files if "__" in Path(f).name.replace("__init__", "") or f.endswith(".tmpl")]
    for path in project.rglob("*"):
        if path.is_file():
            assert not re.search(r"__[A-Z][A-Z0-9_]*__", path.read_text()), path


def test_a_proto_project_depends_on_the_runtimes_its_generated_code_checks_for(
    projects: dict[tuple[str, str], Path],
) -> None:
    """The _pb2 modules refuse an older protobuf, the _pb2_grpc module an older grpcio, than the
    grpcio-tools that generated them: the project's dependencies say so, so pip never pairs
    them with older runtimes."""
    project = projects["proto", "hello-svc"]
    package = project / "src" / "hello_svc"
    pb2 = (package / "hello_svc_pb2.py").read_text()
    pb2_grpc = (package / "hello_svc_pb2_grpc.py").read_text()
    major, minor, patch = re.findall(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb2)[0]
    [grpc_needed] = re.findall(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", pb2_grpc)
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"protobuf>={major}.{minor}.{patch}" in dependencies
    assert f"grpcio>={grpc_needed}" in dependencies
    typed = tomllib.loads((projects["typed", "hello-svc"] / "pyproject.toml").read_text())
    assert not [d for d in typed["project"]["dependencies"] if d.startswith(("grpcio", "protobuf"))]


# -- its tests and linters pass -------------------------------------------------------------


@pytest.mark.parametrize(("variant", "name"), PROJECTS)
def test_its_tests_pass(projects: dict[tuple[str, str], Path], variant: str, name: str) -> None:
    result = tool(projects[variant, name], "pytest", "-q", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed(result) >= 4, result.stdout


@pytest.mark.parametrize(("variant", "name"), PROJECTS)
def test_its_linters_pass(projects: dict[tuple[str, str], Path], variant: str, name: str) -> None:
    project = projects[variant, name]
    for args in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        result = tool(project, *args)
        assert result.returncode == 0, f"{args}:\n{result.stdout}{result.stderr}"
    mypy = tool(project, "mypy")
    # its configuration checks the service and the tests, strictly
    assert re.search(r"no issues found in [3-9] source files", mypy.stdout), mypy.stdout


# -- and they fail when the project is broken -----------------------------------------------


@pytest.mark.parametrize("variant", ["typed", "proto"])
def test_a_broken_handler_fails_its_tests(copy_of: Callable[[str], Path], variant: str) -> None:
    project = copy_of(variant)
    service = project / "src/hello_svc/service.py"
    text = service.read_text()
    assert 'f"Hello {letter}"' in text
    service.write_text(text.replace('f"Hello {letter}"', 'f"Hi {letter}"'))
    result = tool(project, "pytest", "-q", "-p", "no:cacheprovider")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout and "test_say_hello_stream_greets_each_letter" in result.stdout


@pytest.mark.parametrize("variant", ["typed", "proto"])
def test_its_linters_catch_what_they_are_for(copy_of: Callable[[str], Path], variant: str) -> None:
    project = copy_of(variant)
    service = project / "src/hello_svc/service.py"
    text = service.read_text()
    # a misspelt field (mypy), an unused import (ruff check), a line left unformatted (format)
    service.write_text(
        text.replace('return HelloReply(message=f"Hello', 'return HelloReply(mesage=f"Hello')
        .replace("from __future__ import annotations\n", "from __future__ import annotations\n\nimport os\n")
        .replace("if __name__ == ", "if  __name__ == ")
    )
    mypy = tool(project, "mypy")
    assert mypy.returncode == 1 and "Unexpected keyword argument" in mypy.stdout, mypy.stdout
    check = tool(project, "ruff", "check", ".")
    assert check.returncode == 1 and "F401" in check.stdout, check.stdout
    fmt = tool(project, "ruff", "format", "--check", ".")
    assert fmt.returncode == 1 and "service.py" in fmt.stdout, fmt.stdout


# -- it runs as the image runs it -----------------------------------------------------------


@pytest.mark.parametrize("variant", ["typed", "proto"])
def test_it_runs_as_the_image_runs_it(
    projects: dict[tuple[str, str], Path], variant: str, tmp_path: Path
) -> None:
    """The image copies src/ to /app and runs `microweave run hello_svc.service` there: the same
    from the project's src/, then a call by name through the registry, then SIGTERM."""
    env: Mapping[str, str] = registry_env(tmp_path / "registry")
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [MICROWEAVE, "run", "hello_svc.service"],
        cwd=projects[variant, "hello-svc"] / "src",
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_service("hello-svc", env=env)
        called = cli("call", "hello-svc", "HelloSvc.SayHello", '{"name": "Ada"}', env=env)
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout) == {"message": "Hello Ada"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "run.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.timeout(900)
@pytest.mark.xdist_group("podman")  # with test_container.py: one podman storage
def test_its_image_builds_registers_in_etcd_and_answers_a_host_call(
    projects: dict[tuple[str, str], Path],
    podman: Podman,
    base_image: str,
    containers: Containers,
    etcd_registry_url: str,
    tmp_path: Path,
) -> None:
    """The project's own Dockerfile, as generated, built by podman (microweave from a wheel of
    this checkout in ./wheels, as the Dockerfile's header says), run, called by name from the
    host through etcd, and stopped by `podman stop` with exit 0."""
    project = Path(shutil.copytree(projects["typed", "hello-svc"], tmp_path / "hello-svc"))
    wheel = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", "wheels", str(REPO)], project)
    assert wheel.returncode == 0, wheel.stderr
    try:
        build_image(podman, base_image, NEW_IMAGE, tmp_path / "build.log", context=project)
        container = containers.run(NEW_IMAGE, env={"MICRO_REGISTRY": inside(etcd_registry_url)})
        env = registry_env(tmp_path / "unused") | {"MICRO_REGISTRY": etcd_registry_url}
        wait_for_service("hello-svc", env=env, timeout=60)
        called = cli("call", "hello-svc", "HelloSvc.SayHello", '{"name": "Ada"}', env=env)
        assert called.returncode == 0, called.stderr + container.logs()[-3000:]
        assert json.loads(called.stdout) == {"message": "Hello Ada"}
        podman("stop", "--time", "30", container.id)
        assert container.exit_code() == 0, container.logs()[-3000:]
    finally:
        containers.remove_all()
        podman("rmi", "--force", NEW_IMAGE, check=False)


# -- what it refuses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("Hello", "lowercase letters"),
        ("9lives", "starting with a letter"),
        ("hello_svc", "lowercase letters, digits and '-'"),
        ("hello-", "not ending with '-'"),
        ("a" * 41, "at most 40 characters"),
        ("for", "is a Python keyword"),
        ("email", "standard library"),
        ("microweave", "shadow a package the service imports"),
        # installed with microweave: `microweave run typer.service` found no module in it
        ("typer", "clash with the module of that name installed here"),
        ("yaml", "clash with the module of that name installed here"),
    ],
)
def test_a_bad_name_is_refused_with_what_is_allowed(tmp_path: Path, name: str, said: str) -> None:
    result = new(name, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert said in " ".join(result.stderr.replace("│", " ").split()), result.stderr
    assert_clean(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "hello-svc").mkdir()
    (tmp_path / "hello-svc" / "notes.txt").write_text("mine")
    result = new("hello-svc", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "already exists and is not empty" in result.stderr
    assert_clean(result.stderr)
    assert [p.name for p in (tmp_path / "hello-svc").iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["hello-svc"]  # no staging directory left


def test_a_file_in_the_way_is_named_as_one(tmp_path: Path) -> None:
    (tmp_path / "hello-svc").write_text("mine")
    result = new("hello-svc", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "already exists and is a file" in result.stderr
    assert (tmp_path / "hello-svc").read_text() == "mine"


def test_a_dir_that_cannot_hold_the_project_is_said_plainly(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = new("hello-svc", "--dir", "notes.txt/sub", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    said = " ".join(result.stderr.split())
    assert "could not create notes.txt/sub/hello-svc: Not a directory" in said, result.stderr
    assert "give --dir a directory you can write to" in said
    assert "Errno" not in said and ".hello-svc-" not in said  # no staging directory's name
    assert_clean(result.stderr)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_an_empty_directory_and_dir_are_fine(tmp_path: Path) -> None:
    (tmp_path / "parent" / "hello-svc").mkdir(parents=True)
    result = new("hello-svc", "--dir", str(tmp_path / "parent"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "parent/hello-svc/src/hello_svc/service.py").is_file()
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == ["hello-svc"]


def test_proto_without_grpcio_tools_says_what_to_install(tmp_path: Path) -> None:
    # grpcio-tools hidden from this process only: the virtualenv keeps it
    hide = "import sys; sys.modules['grpc_tools'] = None; from microweave.cli import main; main()"
    result = run([sys.executable, "-c", hide, "new", "hello-svc", "--proto"], tmp_path)
    assert result.returncode == 1, result.stderr
    assert "pip install grpcio-tools" in result.stderr
    assert_clean(result.stderr)
    assert list(tmp_path.iterdir()) == []
