"""The greeter's container image: its size, and how soon a container answers /health/ready.

    python bench/image.py                 # build the image (podman), then 5 runs
    python bench/image.py --runs 10
    python bench/image.py --no-build      # measure the image the container tests built last
    python bench/image.py --json          # one JSON object on stdout

Needs podman and the base image (scripts/peers/engines, scripts/peers/baseimage), with the
settings the tests use (scripts/peers/podman-env). The image is built from the repository's
Dockerfile on that base (Debian bookworm minbase + python3: no image registry is reachable
here, so the Dockerfile's default python:3.12-slim base cannot be measured on this machine).

- size: the image as podman stores it (layers, uncompressed), the base's share and the
  virtualenv's layer. Target <= 200 MB.
- run -> ready: from starting `podman run --detach` to the first 200 of /health/ready on the
  published admin port (polled every 10 ms), median and max over `--runs` containers, each
  removed afterwards. The service registers in a local:// registry inside its container, so no
  engine is involved. Target <= 2 s.
Single runs on a shared machine are noisy: run again to confirm.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the podman set-up, shared with the tests

IMAGE = "localhost/microweave-greeter:bench"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def run_to_ready(podman: object, image: str, port: int) -> float:
    """Seconds from `podman run` to the first 200 of /health/ready; the container removed."""
    url = f"http://127.0.0.1:{port}/health/ready"
    start = time.perf_counter()
    container_id = podman(  # type: ignore[operator]
        "run", "--detach", "--publish", f"127.0.0.1:{port}:9100",
        "--env", "MICRO_REGISTRY=local", "--env", "MICRO_REGISTRY_ADDRESS=/tmp/registry", image,
    ).strip()  # fmt: skip
    try:
        limit = start + 60
        while not _ready(url):
            if time.perf_counter() > limit:
                raise SystemExit(f"error: the container did not answer {url} within 60 s")
            time.sleep(0.01)
        return time.perf_counter() - start
    finally:
        podman("rm", "--force", "--time", "0", container_id, check=False)  # type: ignore[operator]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="containers started for run -> ready (default 5)")
    parser.add_argument("--no-build", action="store_true", help="measure localhost/microweave-greeter:test")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    import pytest
    from engines import free_port
    from engines.podman import GREETER_IMAGE, Podman, build_image, find_base_image, image_size_mb

    try:
        podman = Podman()
        base = find_base_image(podman)
    except pytest.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    image = GREETER_IMAGE if args.no_build else IMAGE
    if args.no_build and not podman.succeeds("image", "exists", image):
        print(
            f"error: no {image} to measure: the container tests build it "
            "(pytest tests/integration/test_container.py); or run without --no-build",
            file=sys.stderr,
        )
        return 2
    built = None
    if not args.no_build:
        print(f"building {IMAGE} on {base} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            build_image(podman, base, IMAGE, Path(tmp) / "build.log")
            built = time.perf_counter() - start
    layers = json.loads(podman("history", "--format", "json", image))
    # the largest layer a COPY made: /opt/venv from the build stage
    venv_layer = max((layer["size"] for layer in layers if "COPY" in layer.get("CreatedBy", "")), default=0)
    result = {
        "image": image,
        "base": base,
        "size_mb": round(image_size_mb(podman, image), 1),
        "base_size_mb": round(image_size_mb(podman, base), 1),
        "venv_layer_mb": round(venv_layer / 1e6, 1),
        "build_s": None if built is None else round(built, 1),
    }
    print(f"{args.runs} runs of run -> /health/ready ...", file=sys.stderr)
    times = [run_to_ready(podman, image, free_port()) for _ in range(args.runs)]
    result |= {
        "run_to_ready_median_s": round(statistics.median(times), 3),
        "run_to_ready_max_s": round(max(times), 3),
        "runs": args.runs,
    }
    if not args.no_build:
        podman("rmi", IMAGE, check=False)  # measured: its layers are of no further use
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"image          {result['image']}: {result['size_mb']} MB (target <= 200 MB)")
    print(f"  base         {result['base']}: {result['base_size_mb']} MB")
    print(f"  virtualenv   {result['venv_layer_mb']} MB (its layer)")
    if built is not None:
        print(f"build          {built:.1f} s (layers and pip's cache may be warm)")
    print(
        f"run -> ready   median {result['run_to_ready_median_s']} s, max {result['run_to_ready_max_s']} s "
        f"over {args.runs} runs (target <= 2 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
