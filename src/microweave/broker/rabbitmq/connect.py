"""The connection: a bounded number of attempts at first, aio-pika's reconnection for ever after.

aio-pika's `connect_robust` fails at once when the first attempt fails (its `fail_fast`) and
drops the connection object it made, so we build the robust connection ourselves, try a few
times within `retry_time`, close each failed attempt, and raise a `BrokerError` naming the URL
without credentials and what to check. Once connected, the robust connection reconnects every
`reconnect_interval` seconds for as long as it lives and restores channels, exchanges, queues,
bindings and consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import aiormq.exceptions
from aio_pika import RobustConnection
from yarl import URL

from ...errors import BrokerError
from .. import backoff, broker_error

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from .options import Options

__all__ = ["PublicConnection", "explain", "is_transient", "open_connection"]

log = logging.getLogger("microweave.broker.rabbitmq")


class PublicConnection(RobustConnection):
    """aio-pika's robust connection, named in aio-pika's own log lines by the URL without
    user or password (aio-pika masks only the password)."""

    public = ""

    def __str__(self) -> str:
        return self.public or "amqp://"


def is_transient(exc: BaseException) -> bool:
    """Whether trying again may help: the broker is down, restarting or slow, not refusing us."""
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError):
        return False
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed | aiormq.exceptions.ProtocolSyntaxError):
        return False  # an unknown virtual host, or not an AMQP 0-9-1 server
    return isinstance(exc, OSError | TimeoutError | aiormq.exceptions.AMQPError | RuntimeError)


def explain(exc: BaseException, *, timeout: float | None = None) -> str:
    """What went wrong, and what to check, in words (never the URL's credentials)."""
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError):
        return "login refused: check the user and password in the broker URL"
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed | aiormq.exceptions.InvalidFrameError):
        return (
            "the broker closed the connection while opening it: does the virtual host exist, "
            "and may this user use it?"
        )
    if isinstance(exc, TimeoutError):
        within = f" within {timeout:g} s" if timeout else ""
        return f"no answer{within}: is RabbitMQ running and reachable there?"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, aiormq.exceptions.AMQPConnectionError) and exc.args[:1] == (111,)
    ):
        return "connection refused: is RabbitMQ running and listening there?"
    if isinstance(exc, aiormq.exceptions.ConnectionClosed | aiormq.exceptions.ChannelInvalidStateError):
        return "the connection to RabbitMQ was lost and is not back: is RabbitMQ running there?"
    text = str(exc) or type(exc).__name__
    return f"{text} (is RabbitMQ running and reachable there?)"


async def open_connection(url: str, public: str, options: Options, *, name: str) -> RobustConnection:
    """A connected robust connection, or `BrokerError` after `options.retry_time` seconds of
    failed attempts (at once when the broker refused the login or the virtual host)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.retry_time
    target = URL(url)
    if options.heartbeat:
        target = target.update_query(heartbeat=options.heartbeat)
    attempt = 0
    while True:
        attempt += 1
        connection = PublicConnection(
            target,
            reconnect_interval=options.reconnect_interval,
            client_properties={"connection_name": name or "microweave"},
        )
        connection.public = public
        timeout = max(0.05, min(options.connect_timeout, deadline - loop.time()))
        try:
            await connection.connect(timeout=timeout)
        except asyncio.CancelledError:
            await close_quietly(connection)
            raise
        except Exception as exc:
            await close_quietly(connection)
            pause = backoff(attempt, base=0.1, cap=1.0)
            if not is_transient(exc) or loop.time() + pause >= deadline:
                tries = f" ({attempt} attempts in {options.retry_time:g} s)" if attempt > 1 else ""
                why = BrokerError(explain(exc, timeout=timeout))
                raise broker_error(public, f"connect{tries}", why) from None
            log.debug("broker %s: connect attempt %d failed: %s", public, attempt, explain(exc))
            await asyncio.sleep(pause)
        else:
            return connection


async def close_quietly(connection: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()
