"""Generate greeter_pb2.py and greeter_pb2_grpc.py from greeter.proto, next to it.

    python examples/proto_greeter/build.py           # regenerate now
    ensure_generated()                               # what service.py and client.py do on import

The generated files are not committed: grpcio's generated code refuses to load under a grpcio
older than the grpcio-tools that made it, so each checkout builds its own. They are remade when
missing, older than the .proto, or made by a different grpcio than the one installed.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "greeter.proto"
OUTPUTS = [HERE / "greeter_pb2.py", HERE / "greeter_pb2_grpc.py", HERE / "greeter_pb2.pyi"]


def _made_by_other_grpc() -> bool:
    import grpc

    text = OUTPUTS[1].read_text()
    made_with = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
    return made_with is not None and made_with.group(1) != grpc.__version__


def stale() -> bool:
    if not all(out.exists() for out in OUTPUTS):
        return True
    source = PROTO.stat().st_mtime
    return any(out.stat().st_mtime < source for out in OUTPUTS) or _made_by_other_grpc()


def generate() -> None:
    try:
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit(
            "generating the protobuf code needs grpcio-tools: pip install grpcio-tools "
            '(from a checkout: .venv/bin/pip install -e ".[dev]")'
        ) from None
    include = Path(protoc.__file__).resolve().parent / "_proto"  # well-known types
    # Generate into a temporary directory, then move: a process importing meanwhile (a client
    # started next to the service) sees the old files or the new ones, never half-written ones.
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{HERE}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {PROTO} (exit {code})")
        for out in OUTPUTS:
            os.replace(Path(tmp) / out.name, out)


def ensure_generated() -> None:
    if stale():
        generate()


if __name__ == "__main__":
    generate()
    print("generated", ", ".join(out.name for out in OUTPUTS), file=sys.stderr)
