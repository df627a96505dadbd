"""The two exchanges: go-micro's `micro`, and a durable one of ours behind it.

go-micro declares `micro` as a topic exchange that is not durable, and any other declaration
of it is refused (PRECONDITION_FAILED), so we declare it exactly so. But a non-durable exchange
is gone after a broker restart, and with it every binding to it, the durable queue groups'
included: until each group's consumer came back and bound again, an event published after the
restart would reach no queue. So our queues are bound to `microweave:<exchange>`, a durable
topic exchange whose bindings survive a restart, itself bound to `micro` with `#`. That one
exchange-to-exchange binding is lost at a restart too, but every microweave channel declares it
again before it is used (aio-pika restores a channel's exchanges and bindings before the
channel is ready), so a microweave publisher reaches every group queue as soon as it is back,
whether the group's consumers are running or not. (go-micro publishers do once any microweave
process has reconnected.) (test_broker_restart_mid_stream_loses_no_confirmed_publish)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiormq.exceptions
from aio_pika import ExchangeType

from ...errors import BrokerError
from .. import broker_error

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustChannel

__all__ = ["declare_exchanges", "durable_exchange_name"]


def durable_exchange_name(exchange: str) -> str:
    """Where our queues are bound (and where RabbitMQ dead-letters to)."""
    return f"microweave:{exchange}"


async def declare_exchanges(channel: AbstractRobustChannel, exchange: str, public: str) -> None:
    """Declare `exchange` as go-micro does, our durable exchange, and the binding between them,
    on `channel` (which declares them all again whenever aio-pika restores it)."""
    name = exchange
    try:
        micro = await channel.declare_exchange(exchange, ExchangeType.TOPIC, durable=False, auto_delete=False)
        name = durable_exchange_name(exchange)
        durable = await channel.declare_exchange(name, ExchangeType.TOPIC, durable=True, auto_delete=False)
        await durable.bind(micro, routing_key="#")
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        how = "topic, not durable" if name == exchange else "topic, durable"
        raise broker_error(
            public,
            f"declare exchange {name!r}",
            BrokerError(
                f"it exists with other settings ({exc.args[0] if exc.args else exc}); microweave declares "
                f"it {how}, not auto-delete (as go-micro declares `micro`): delete it, or name another "
                "exchange with ?exchange="
            ),
        ) from None
