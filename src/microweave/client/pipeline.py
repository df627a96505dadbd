"""The client pipeline: retry -> user middleware -> deadline -> metadata -> select -> transport.

Retries are honest: a call is sent again only when it never reached a handler (`NotDelivered`:
refused, draining, unreachable), on a node not tried yet. A call that may have run (the remote
answered with `Unavailable`, or the connection broke mid-call) is sent again only when its
endpoint is idempotent, declared with `@idempotent` on the handler (the registry carries it) or
`idempotent=True` on the call. A remote error never ejects a node.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING

from ..errors import ConnectionLost, MicroError, NotDelivered, Timeout, Unavailable
from ..metrics import CLIENT
from ..middleware import ClientMiddleware, chain
from ..middleware.builtin import ClientDeadline, PropagateMetadata
from .call import ClientCall

if TYPE_CHECKING:
    from ..transport import ClientTransport
    from . import Client

__all__ = ["ClientPipeline"]


class ClientPipeline:
    def __init__(self, client: Client, middleware: Sequence[ClientMiddleware]) -> None:
        self.client = client
        self._unary, self._stream = chain(
            [*middleware, ClientDeadline(), PropagateMetadata(client.name, client.node_id)],
            self._send_unary,
            self._send_stream,
        )

    # -- retry: the outermost stage ------------------------------------------------------------

    async def unary(self, call: ClientCall) -> bytes:
        while True:
            try:
                return await self._unary(call)
            except MicroError as exc:
                if not self._again(exc, call):
                    raise self._outgoing(exc, call) from None

    async def stream(self, call: ClientCall) -> AsyncGenerator[bytes, None]:
        """Retried only before the first reply, and only when the request is one message."""
        while True:
            replied = False
            try:
                async with contextlib.aclosing(self._stream(call)) as replies:  # type: ignore[type-var]
                    async for reply in replies:
                        replied = True
                        yield reply
                return
            except MicroError as exc:
                if replied or not isinstance(call.body, bytes) or not self._again(exc, call):
                    raise self._outgoing(exc, call) from None

    def _again(self, exc: MicroError, call: ClientCall) -> bool:
        """Whether to send the call again, to a node not tried yet."""
        if call.attempt >= self.client.retry.attempts:
            return False
        if call.deadline is not None and time.monotonic() >= call.deadline:
            return False
        if exc.remote or not isinstance(exc, NotDelivered):  # a node's answer was delivered
            may_have_run = isinstance(exc, ConnectionLost) or (exc.remote and isinstance(exc, Unavailable))
            if not may_have_run or not self.client.routing.is_idempotent(call):
                return False
        if not self.client.routing.has_untried_node(call):
            return False
        call.attempt += 1
        if self.client.metrics:
            CLIENT.retried(call.service, call.endpoint)  # micro_client_retries_total
        return True

    @staticmethod
    def _outgoing(exc: MicroError, call: ClientCall) -> MicroError:
        """The error as the caller sees it: the same deadline error on every transport, and
        which service was called (a handler that lets it out is answering for a dependency)."""
        if isinstance(exc, Timeout):
            remote = exc.remote
            exc = Timeout(f"deadline exceeded calling {call.service} {call.endpoint}", id=call.service)
            exc.remote = remote
        exc.callee = call.service
        return exc

    # -- the innermost stages: select a node, send -----------------------------------------------

    async def _route(self, call: ClientCall) -> tuple[ClientTransport, str]:
        client = self.client
        routed = client.routing.route(call)
        if routed is None:  # nothing fresh in the registry cache: ask the registry
            routed = client.routing.route(call, await client.cache.get_service(call.service))
            assert routed is not None
        return routed

    def _finished(self, call: ClientCall, exc: BaseException | None) -> None:
        """Tell the selector how the attempt went: a node that could not be reached or lost
        the connection is ejected for a while; a node that answered, even with an error, is not."""
        node = call.node
        if node is None:
            return
        failed = False
        if isinstance(exc, MicroError):
            call.tried = (*call.tried, node.id)  # a retry looks elsewhere
            failed = isinstance(exc, NotDelivered | ConnectionLost) and not exc.remote
        self.client.selector.finished(node, failed=failed)

    async def _send_unary(self, call: ClientCall) -> bytes:
        routed = self.client.routing.route(call) or await self._route(call)
        transport, address = routed
        try:
            reply = await transport.unary(
                address, call.path, call.body,  # type: ignore[arg-type]
                timeout=call.timeout, metadata=call.metadata, content_type=call.content_type,
                response_metadata=call.response_metadata,
            )  # fmt: skip
        except BaseException as exc:
            self._finished(call, exc)
            raise
        self._finished(call, None)
        return reply

    async def _send_stream(self, call: ClientCall) -> AsyncIterator[bytes]:
        transport, address = self.client.routing.route(call) or await self._route(call)
        replies = transport.stream(
            address, call.path, call.kind, call.body,
            timeout=call.timeout, metadata=call.metadata, content_type=call.content_type,
        )  # fmt: skip
        try:
            async with contextlib.aclosing(replies):  # stopping early cancels the call at once
                async for reply in replies:
                    yield reply
        except BaseException as exc:
            self._finished(call, exc)
            raise
        self._finished(call, None)
