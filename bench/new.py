"""From `microweave new` to a passing first test.

    python bench/new.py                  # both variants, 3 runs each
    python bench/new.py --runs 5 --json

Per variant (typed handler, `--proto`), in a fresh temporary directory each run:
- new: `microweave new bench-svc [--proto]` (the console script of this virtualenv), to exit;
  `--proto` includes generating the protobuf code with grpcio-tools.
- first test: `python -m pytest -q tests/test_service.py::test_say_hello` in the generated
  project, with this virtualenv (no install: the project's pytest config puts src on the path).
- total: the two, back to back, as a user types them.
Median and max over `--runs`. Python's start-up and imports dominate both; single runs on a
shared machine are noisy: compare medians, run again to confirm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
FIRST_TEST = "tests/test_service.py::test_say_hello"


def _timed(args: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICRO_", "PYTEST_"))}
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        said = result.stdout + result.stderr
        raise SystemExit(f"{' '.join(args)} failed (exit {result.returncode}):\n{said}")
    return elapsed


def one_run(proto: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="microweave-bench-new-") as tmp:
        parent = Path(tmp)
        new = _timed([str(BIN / "microweave"), "new", "bench-svc", *(["--proto"] if proto else [])], parent)
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", FIRST_TEST]
        test = _timed(pytest, parent / "bench-svc")
        return new, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    report = {}
    for variant, proto in (("typed", False), ("proto", True)):
        runs = [one_run(proto) for _ in range(args.runs)]
        columns = {"new": [r[0] for r in runs], "first test": [r[1] for r in runs]}
        columns["total"] = [a + b for a, b in runs]
        report[variant] = {
            name: {"median_s": round(statistics.median(v), 2), "max_s": round(max(v), 2)}
            for name, v in columns.items()
        }
    if args.json:
        print(json.dumps({"runs": args.runs, "variants": report}))
        return
    print(f"microweave new -> passing first test ({args.runs} runs each; median / max, seconds)")
    print(f"{'variant':8} {'new':>13} {'first test':>13} {'total':>13}")
    for variant, columns in report.items():
        cells = [f"{c['median_s']:.2f} / {c['max_s']:.2f}" for c in columns.values()]
        print(f"{variant:8} " + " ".join(f"{cell:>13}" for cell in cells))


if __name__ == "__main__":
    main()
