"""Reading a node's `/metrics` page over HTTP, bounded in time and size.

The address comes from the registry, so from whoever registered the node: a node that does
not answer, answers slowly, or sends an endless page costs at most `timeout` seconds and
`MAX_BODY` bytes, and becomes a reason shown next to the node, never a traceback.
"""

from __future__ import annotations

import asyncio

import aiohttp

__all__ = ["MAX_BODY", "ScrapeFailed", "fetch_metrics"]

#: the largest /metrics page read (a node with many endpoints and transports is far below it)
MAX_BODY = 16 * 1024 * 1024
_CHUNK = 64 * 1024


class ScrapeFailed(Exception):
    """The node's metrics could not be read; the message says why, for a human."""


async def fetch_metrics(
    session: aiohttp.ClientSession, admin_address: str, *, timeout: float, max_body: int = MAX_BODY
) -> str:
    """The text of `http://<admin_address>/metrics`, or ScrapeFailed saying why not."""
    url = f"http://{admin_address}/metrics"
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, allow_redirects=False) as reply:
                if reply.status != 200:
                    raise ScrapeFailed(f"HTTP {reply.status} from {url}")
                body = bytearray()
                async for chunk in reply.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > max_body:
                        raise ScrapeFailed(f"{url} sent more than {max_body:,} bytes")
                return body.decode("utf-8", "replace")
    except TimeoutError:
        raise ScrapeFailed(f"no answer from {url} within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        raise ScrapeFailed(f"cannot connect to {url}: {exc.os_error.strerror or exc.os_error}") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise ScrapeFailed(f"reading {url} failed: {type(exc).__name__} {exc}".rstrip()) from None
