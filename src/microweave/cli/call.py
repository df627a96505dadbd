"""`microweave call SERVICE ENDPOINT JSON`: one call from the shell, the reply as JSON on stdout.

The registry record says how to call the endpoint: its `stream` metadata picks unary or
server-streaming, and a `path` (grpcio servicers) means protobuf on the wire, converted to and
from JSON with types read over gRPC reflection.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from ..client import DEFAULT_TIMEOUT, Client
from ..codec import PROTO
from ..registry import Endpoint
from ..selector import by_version
from ..server import Kind
from ..service import run_async
from .lookup import find_endpoint, find_service
from .options import RegistryOption, TimeoutOption, VersionOption, open_registry, registry_url
from .output import CliError, reporting_errors
from .reflect import proto_json

__all__ = ["call", "parse_metadata", "parse_request"]

_KINDS = {k.value: k for k in Kind}
_KINDS["true"] = Kind.SERVER_STREAM  # go-micro marks streams `stream=true`


def parse_request(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f'not valid JSON ({exc}); quote it for the shell, e.g. \'{{"name": "x"}}\'',
            param_hint="'REQUEST'",
        ) from None


def parse_metadata(pairs: list[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="'--metadata'")
        metadata[key.strip().lower()] = value
    return metadata


def _kind(endpoint: Endpoint | None, stream: bool) -> Kind:
    """The registry's word when it knows the endpoint; `--stream` only for endpoints it does not."""
    if endpoint is not None:
        kind = _KINDS.get(endpoint.metadata.get("stream", ""), Kind.UNARY)
    else:
        kind = Kind.SERVER_STREAM if stream else Kind.UNARY
    if kind.request_streaming:
        raise CliError(
            f"{endpoint.name if endpoint else 'this endpoint'} takes a stream of requests ({kind.value}); "
            "the CLI calls unary and server-streaming endpoints",
            hint="call it from Python: client.stream(service, endpoint, async_iterator_of_requests)",
            code=2,
        )
    return kind


def _emit(reply: Any) -> None:
    # print, not rich: the output must be exactly the JSON, whatever the terminal width
    sys.stdout.write(json.dumps(reply, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def _call(
    url: str | None,
    service: str,
    endpoint: str,
    body: Any,
    *,
    timeout: float | None,
    metadata: dict[str, str],
    stream: bool,
    versions: list[str],
) -> None:
    async with Client(registry=open_registry(url), timeout=timeout) as client:
        records = await find_service(client.registry, service, versions)
        registered = find_endpoint(records, endpoint)
        kind = _kind(registered, stream)
        path = registered.metadata.get("path") if registered is not None else None
        # without --version every version's nodes share the calls, as in go-micro
        filters = [by_version(*versions)] if versions else []
        options: dict[str, Any] = {"timeout": timeout, "metadata": metadata, "filters": filters}
        if path is None:
            if kind is Kind.UNARY:
                _emit(await client.call(service, endpoint, body, **options))
            else:
                async for reply in client.stream(service, endpoint, body, kind=kind, **options):
                    _emit(reply)
            return
        # learning the types is a lookup, not the call: it keeps a deadline when the call has none
        codec = await proto_json(records, path, timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
        data = codec.encode(body)
        if kind is Kind.UNARY:
            _emit(codec.decode(await client.call_raw(service, path, data, content_type=PROTO, **options)))
        else:
            async for raw in client.stream_raw(service, path, kind, data, content_type=PROTO, **options):
                _emit(codec.decode(raw))


def call(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="Service name, e.g. greeter.")],
    endpoint: Annotated[
        str,
        typer.Argument(metavar="ENDPOINT", help="Handler.Method, e.g. Greeter.SayHello (or a gRPC path)."),
    ],
    request: Annotated[str, typer.Argument(metavar="REQUEST", help="The request as JSON.")] = "{}",
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", metavar="KEY=VALUE", help="Call metadata; repeat for more."),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Call as server-streaming, one JSON line per reply. Only needed for endpoints "
            "the registry does not list; listed ones are called as they are marked.",
        ),
    ] = False,
    version: VersionOption = None,
    registry: RegistryOption = None,
) -> None:
    """Call an endpoint with a JSON request and print the JSON reply.

    On an error, prints its code, status, detail and id to stderr and exits 1.
    """
    body = parse_request(request)  # bad input fails here, before anything is looked up
    md = parse_metadata(metadata or [])
    url = registry_url(ctx, registry)
    with reporting_errors(service=service):
        run_async(
            _call(
                url, service, endpoint, body,
                timeout=timeout, metadata=md, stream=stream, versions=version or [],
            )
        )  # fmt: skip
