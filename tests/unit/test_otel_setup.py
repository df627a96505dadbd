"""When tracing turns on, and how the SDK is set up from the standard OTEL_* variables.

Each case runs in a fresh interpreter: the OpenTelemetry API sets a global provider once per
process, and "nothing imported" can only be checked in a process that imported nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
{before}
from microweave.middleware.defaults import client_middleware, server_middleware
out = {{"otel_imported": False}}
try:
    out["server"] = [type(m).__name__ for m in server_middleware("svc", metrics=False)]
    out["client"] = [type(m).__name__ for m in client_middleware("svc", metrics=False)]
except Exception as exc:
    out["error"] = f"{{type(exc).__name__}}: {{exc}}"
out["otel_imported"] = any(name.startswith("opentelemetry") for name in sys.modules)
if "opentelemetry.trace" in sys.modules:
    from opentelemetry import trace
    provider = trace.get_tracer_provider()
    out["provider"] = type(provider).__name__
    out["app_provider_kept"] = provider is globals().get("app_provider", provider)
    trace.get_tracer("probe").start_span("probe-span").end()
print("PROBE " + json.dumps(out), flush=True)
"""


def probe(env: dict[str, str], *, before: str = "") -> tuple[dict[str, Any], str]:
    """Run PROBE with only `env`'s OTEL_* variables; (its findings, everything it printed)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = PROBE.format(before=textwrap.dedent(before))
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    [line] = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    found: dict[str, Any] = json.loads(line.removeprefix("PROBE "))
    return found, output


def test_nothing_configured_adds_no_middleware_and_imports_nothing() -> None:
    found, _ = probe({})
    assert found == {"otel_imported": False, "server": [], "client": []}


def test_an_exporter_in_the_environment_turns_tracing_on_named_after_the_service() -> None:
    found, output = probe({"OTEL_TRACES_EXPORTER": "console"})
    assert found["server"] == ["ServerTracing"] and found["client"] == ["ClientTracing"]
    assert found["provider"] == "TracerProvider"
    assert '"name": "probe-span"' in output  # printed by the console exporter, flushed at exit
    assert '"service.name": "svc"' in output


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"OTEL_SERVICE_NAME": "billing"}, "billing"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attributes,team=pay"}, "from-attributes"),
    ],
)
def test_the_standard_variables_name_the_service_over_microweave_s_default(
    env: dict[str, str], name: str
) -> None:
    _, output = probe({"OTEL_TRACES_EXPORTER": "console", **env})
    assert f'"service.name": "{name}"' in output, output


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_otlp_endpoint_alone_turns_tracing_on(variable: str) -> None:
    # nothing listens there: the export fails quietly at exit, the process is unaffected
    found, _ = probe({variable: "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"})
    assert found["server"] == ["ServerTracing"]


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_TRACES_SAMPLER": "always_on"},  # a sampler alone asks for nothing to be exported
    ],
)
def test_tracing_stays_off_when_the_environment_says_so(env: dict[str, str]) -> None:
    found, _ = probe(env)
    assert found == {"otel_imported": False, "server": [], "client": []}


def test_a_provider_the_application_set_is_used_as_it_is() -> None:
    before = """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        app_provider = TracerProvider()
        trace.set_tracer_provider(app_provider)
    """
    found, output = probe({"OTEL_TRACES_EXPORTER": "console"}, before=before)
    assert found["server"] == ["ServerTracing"] and found["app_provider_kept"] is True
    assert "probe-span" not in output  # the app's provider has no exporter: microweave added none


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER='zipkin' is not an exporter microweave sets up",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_an_exporter_or_protocol_it_cannot_set_up_is_a_configuration_error(
    env: dict[str, str], named: str
) -> None:
    found, _ = probe(env)
    assert found["error"].startswith("ConfigurationError"), found
    assert named in found["error"]


def test_without_the_otel_extra_a_log_line_says_what_to_install() -> None:
    before = """
        import importlib.abc, logging
        class NoSdk(importlib.abc.MetaPathFinder):  # as in an environment without the extra
            def find_spec(self, name, path=None, target=None):
                if name.startswith("opentelemetry"):
                    raise ImportError(f"No module named {name!r}")
                return None
        sys.meta_path.insert(0, NoSdk())
        logging.basicConfig(level=logging.INFO)
    """
    found, output = probe({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, before=before)
    assert found["server"] == [] and found["client"] == []
    assert 'pip install "microweave[otel]"' in output
    assert output.count("microweave[otel]") == 1  # once per process, not per Service or Client
